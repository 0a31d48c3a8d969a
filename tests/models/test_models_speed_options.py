"""Speed options of the runtime Classifier: the text cache, session options, and their settings.

All on the tiny random model exported through the real export path; nothing here times anything
(speed is in bench/RESULTS.md), these check that the options do what they say and change no answer.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from finsent.core.errors import ConfigError
from finsent.core.settings import load_settings
from finsent.models.labels import SENTIMENT_LABELS
from finsent.models.runtime import Classifier, Prediction, TextCache, session_options
from finsent.models.testing import make_tiny_model
from finsent.models.textprep import prepare_all
from tests.models.test_models_runtime import TEXTS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Classifier]:
    """The tiny model's directory and an uncached classifier on it (the reference answers)."""
    model_dir = make_tiny_model(tmp_path_factory.mktemp("speed-options"))
    return model_dir, Classifier.load(model_dir, variant="fp32", threads=1)


def _cached(tiny_dir: Path, size: int) -> tuple[Classifier, list[int]]:
    """A cached classifier and a list that records how many texts each model run scored."""
    clf = Classifier.load(tiny_dir, variant="fp32", threads=1, text_cache_size=size)
    runs: list[int] = []
    score = clf._score

    def counting(prepared: list[str]) -> list[Prediction]:
        runs.append(len(prepared))
        return score(prepared)

    clf._score = counting  # type: ignore[method-assign]
    return clf, runs


def _close(a: Prediction, b: Prediction) -> bool:
    return (
        a.sentiment == b.sentiment
        and a.topic == b.topic
        and all(abs(a.sentiment_probs[k] - b.sentiment_probs[k]) < 1e-4 for k in SENTIMENT_LABELS)
    )


def test_repeated_texts_are_answered_from_the_cache_with_the_same_result(tiny: tuple[Path, Classifier]) -> None:
    tiny_dir, plain = tiny
    clf, runs = _cached(tiny_dir, 16)
    first = clf.predict(TEXTS)
    assert runs == [len(TEXTS)]
    again = clf.predict(["  Shares of Acme jump 12%\tafter earnings beat estimates\n", "oil falls", "new text here"])
    assert runs == [len(TEXTS), 1]  # only the unseen text reached the model
    assert (clf.text_cache.hits, clf.text_cache.misses) == (2, len(TEXTS) + 1)
    assert again[0] is first[0] and again[1] is first[1]
    reference = plain.predict(TEXTS)
    assert all(_close(a, b) for a, b in zip(first, reference, strict=True))
    assert _close(again[2], plain.predict(["new text here"])[0])


def test_repeats_within_one_call_are_scored_once_and_keep_their_order(tiny: tuple[Path, Classifier]) -> None:
    tiny_dir, plain = tiny
    clf, runs = _cached(tiny_dir, 16)
    texts = ["oil falls", "$XYZ cut its dividend", "oil  falls", "oil falls"]
    got = clf.predict(texts)
    assert runs == [2]
    assert [p.sentiment_probs for p in got] == [got[0].sentiment_probs, got[1].sentiment_probs] + [
        got[0].sentiment_probs
    ] * 2
    assert _close(got[1], plain.predict(["$XYZ cut its dividend"])[0])


def test_case_and_inner_characters_are_part_of_the_key(tiny: tuple[Path, Classifier]) -> None:
    tiny_dir = tiny[0]
    clf, runs = _cached(tiny_dir, 16)
    clf.predict(["oil falls"])
    clf.predict(["Oil falls", "oilfalls", "oil falls!"])
    assert runs == [1, 3]


def test_the_least_recently_used_text_is_evicted(tiny: tuple[Path, Classifier]) -> None:
    tiny_dir = tiny[0]
    clf, runs = _cached(tiny_dir, 2)
    for text in ("oil falls", "gold rises", "oil falls", "bonds slip"):  # "gold rises" is the oldest at the end
        clf.predict([text])
    assert len(clf.text_cache) == 2
    clf.predict(["oil falls"])
    assert runs == [1, 1, 1]
    clf.predict(["gold rises"])
    assert runs == [1, 1, 1, 1]


def test_cache_off_stores_nothing(tiny: tuple[Path, Classifier]) -> None:
    tiny_dir = tiny[0]
    clf, runs = _cached(tiny_dir, 0)
    clf.predict(TEXTS)
    clf.predict(TEXTS)
    assert runs == [len(TEXTS), len(TEXTS)]
    assert len(clf.text_cache) == 0 and clf.text_cache.hits == 0


def test_a_text_cut_at_max_chars_is_flagged_even_when_its_prefix_is_cached(tiny: tuple[Path, Classifier]) -> None:
    tiny_dir = tiny[0]
    clf = Classifier.load(tiny_dir, variant="fp32", threads=1, max_chars=200, text_cache_size=8)
    prefix = ("word " * 40)[:200]
    short = clf.predict([prefix])[0]
    cut = clf.predict([prefix + "x" * 50])[0]
    assert clf.text_cache.hits == 1
    assert cut.truncated is True
    assert clf.predict([prefix])[0].truncated is short.truncated


def test_text_cache_rejects_a_negative_size() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        TextCache(-1)


def test_session_options_turn_spinning_off_unless_asked() -> None:
    off = session_options(2)
    on = session_options(2, spinning=True)
    assert off.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert on.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert (off.intra_op_num_threads, off.inter_op_num_threads) == (2, 1)


def test_spinning_changes_no_answer(tiny: tuple[Path, Classifier]) -> None:
    tiny_dir, plain = tiny
    spinning = Classifier.load(tiny_dir, variant="fp32", threads=2, spinning=True)
    assert all(_close(a, b) for a, b in zip(spinning.predict(TEXTS), plain.predict(TEXTS), strict=True))


def test_settings_reach_the_worker_classifier(tiny: tuple[Path, Classifier], monkeypatch: pytest.MonkeyPatch) -> None:
    tiny_dir = tiny[0]
    from finsent.stream.worker import load_classifier

    monkeypatch.setenv("FINSENT_MODEL_CACHE_SIZE", "123")
    monkeypatch.setenv("FINSENT_MODEL_DIR", str(tiny_dir))
    monkeypatch.setenv("FINSENT_REGISTRY", "")  # no registry: FINSENT_MODEL_DIR is what the worker loads
    settings = load_settings(model_variant="fp32")
    assert (settings.model.model_cache_size, settings.model.model_spinning) == (123, False)
    clf = load_classifier(settings)
    assert clf.text_cache.capacity == 123


def test_a_negative_cache_size_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINSENT_MODEL_CACHE_SIZE", "-1")
    with pytest.raises(ConfigError, match="FINSENT_MODEL_CACHE_SIZE"):
        load_settings()


def test_bench_summary_compares_int8_batch_32_with_eager_and_the_ceiling() -> None:
    from finsent.bench.model import summarise

    def row(runtime: str, sps: float, **extra: object) -> dict[str, object]:
        return {"runtime": runtime, "batch_size": 32, "sorted": True, "sentences_per_s": sps, **extra}

    results = [row("ort-int8", 999.0, spinning=True), row("ort-int8", 340.0), row("pytorch-eager", 100.0),
               {**row("ort-int8", 50.0), "sorted": False}]  # fmt: skip
    got = summarise(results)
    assert (got["int8_b32"], got["int8_vs_eager_b32"]) == (340.0, 3.4)  # the spinning and unsorted rows are not it
    assert got["int8_ceiling_fraction"] == [0.4, 0.57]  # 340 of 850 and of 600 sentences/s


def test_bench_summary_compares_with_a_second_model_in_the_same_run() -> None:
    """--compare-model-dir (issue 24: three-head vs two-head int8): the other model's row is not this model's."""
    from finsent.bench.model import summarise

    def row(sps: float, **extra: object) -> dict[str, object]:
        return {"runtime": "ort-int8", "batch_size": 32, "sorted": True, "sentences_per_s": sps, **extra}

    got = summarise(
        [
            row(400.0, compare="two-head", cpu_ms_per_sentence=2.7),
            row(360.0, cpu_ms_per_sentence=3.0),
            row(99.0, compare="two-head") | {"batch_size": 1},
        ]
    )
    assert (got["int8_b32"], got["compare_int8_b32"], got["int8_b32_vs_compare"]) == (360.0, 400.0, 0.9)
    assert got["int8_b32_cpu_vs_compare"] == 0.9  # sentences per CPU-second: 2.7 ms against 3.0 ms
    assert "compare_int8_b32" not in summarise([row(360.0)])


def test_bench_counts_repeated_seed_texts_with_the_runtime_key(tiny: tuple[Path, Classifier]) -> None:
    from finsent.bench.model import seed_cache_hit_rate, seed_texts

    clf = tiny[1]
    keys = [clf.cache_key(t) for t in prepare_all(seed_texts(), clf.preprocess)]
    assert seed_cache_hit_rate(clf) == pytest.approx(1 - len(set(keys)) / len(keys))
    assert seed_cache_hit_rate(clf) < 0.05  # the seed files hold a few repeats at most
    assert seed_cache_hit_rate(clf, size=1) <= seed_cache_hit_rate(clf)


def test_predict_at_once_keeps_the_input_order_across_concurrent_calls() -> None:
    import threading
    import time

    from finsent.models.runtime import predict_at_once

    class _Echo:
        def __init__(self) -> None:
            self.threads: set[int] = set()

        def predict(self, texts: list[str]) -> list[str]:
            self.threads.add(threading.get_ident())
            time.sleep(0.05 if texts[0] == "a0" else 0.0)  # the first batch ends last
            return list(texts)

    clf = _Echo()
    batches = [[f"{c}{i}" for i in range(3)] for c in "abcd"]
    out = predict_at_once(clf, batches, calls=2)  # type: ignore[arg-type]
    assert out == [t for b in batches for t in b]
    assert len(clf.threads) == 2
    assert predict_at_once(clf, batches, calls=1) == out  # type: ignore[arg-type]


def test_bench_paired_ratio_times_both_models_back_to_back() -> None:
    """--pairs: each pair runs both models once, alternating which goes first; the ratio is this model's rate
    over the other's (a model twice as slow: 0.5x), by wall time and by process CPU."""
    import time

    from finsent.bench.model import paired_ratio

    calls: list[str] = []

    def spin(seconds: float) -> None:
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    def slow(texts: object) -> None:
        calls.append("slow")
        spin(0.02)

    def fast(texts: object) -> None:
        calls.append("fast")
        spin(0.01)

    got = paired_ratio(slow, fast, ["t"] * 40, pairs=4)
    assert calls[2:] == ["slow", "fast", "fast", "slow", "slow", "fast", "fast", "slow"]  # after one warm-up each
    assert got["pairs"] == 4 and got["n_texts"] == 40
    assert got["wall"]["median"] == pytest.approx(0.5, abs=0.15)
    assert got["cpu"]["median"] == pytest.approx(0.5, abs=0.15)
    assert got["wall"]["q1"] <= got["wall"]["median"] <= got["wall"]["q3"]
