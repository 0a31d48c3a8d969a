"""The runtime Classifier on a tiny random model exported through the real export path."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from finsent.core.errors import ModelError
from finsent.models.labels import SENTIMENT_LABELS, TOPIC_LABELS
from finsent.models.runtime import Classifier, Prediction
from finsent.models.testing import TINY_MAX_LENGTH, make_tiny_model

TEXTS = [
    "Shares of Acme jump 12% after earnings beat estimates",
    "oil falls",
    "The central bank raised interest rates by 50 basis points while bond yields rose to a record high",
    "$XYZ cut its dividend",
    "ceo",
    "Gold prices rise as the dollar weakens against the euro after weak growth data",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def clf(tiny_dir: Path) -> Classifier:
    return Classifier.load(tiny_dir, variant="fp32", threads=1)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("cache"))
    return dst


def test_predictions_have_valid_labels_and_probabilities(clf: Classifier) -> None:
    preds = clf.predict(TEXTS)
    assert len(preds) == len(TEXTS)
    for p in preds:
        assert isinstance(p, Prediction)
        assert p.sentiment in SENTIMENT_LABELS
        assert p.topic in TOPIC_LABELS
        assert set(p.sentiment_probs) == set(SENTIMENT_LABELS)
        assert sum(p.sentiment_probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert p.sentiment == max(p.sentiment_probs, key=p.sentiment_probs.get)
        assert 1 / len(TOPIC_LABELS) <= p.topic_prob <= 1.0
        assert p.truncated is False


def test_version_and_provider(clf: Classifier, tiny_dir: Path) -> None:
    info = json.loads((tiny_dir / "labels.json").read_text())
    assert clf.version == info["model_version"]
    assert clf.version.startswith("tiny-random-") and not clf.version.endswith("auto")
    assert clf.provider == "CPUExecutionProvider"


def test_batching_sorting_and_padding_do_not_change_results(clf: Classifier) -> None:
    """Each text scored alone (no padding) must match the same text inside a padded, sorted batch."""
    together = clf.predict(TEXTS)
    alone = [clf.predict([t])[0] for t in TEXTS]
    for a, b in zip(together, alone, strict=True):
        assert a.sentiment == b.sentiment and a.topic == b.topic
        for lab in SENTIMENT_LABELS:
            assert a.sentiment_probs[lab] == pytest.approx(b.sentiment_probs[lab], abs=1e-4)
        assert a.topic_prob == pytest.approx(b.topic_prob, abs=1e-4)
    # order is the caller's order, whatever the internal length sorting did
    reversed_preds = clf.predict(TEXTS[::-1])
    assert [p.topic_prob for p in reversed_preds] == pytest.approx([p.topic_prob for p in together][::-1], abs=1e-5)


def test_small_internal_batches_match_one_big_batch(tiny_dir: Path) -> None:
    big = Classifier.load(tiny_dir, variant="fp32", batch_size=64).predict(TEXTS * 5)
    small = Classifier.load(tiny_dir, variant="fp32", batch_size=3).predict(TEXTS * 5)
    assert [p.topic for p in big] == [p.topic for p in small]
    assert np.allclose([p.topic_prob for p in big], [p.topic_prob for p in small], atol=1e-4)


def test_outputs_depend_on_the_input(clf: Classifier) -> None:
    probs = {round(p.topic_prob, 4) for p in clf.predict(TEXTS)}
    assert len(probs) > 1


def test_long_text_is_truncated_and_flagged(clf: Classifier) -> None:
    long_text = " ".join(["shares rise"] * (TINY_MAX_LENGTH * 2))
    p_long, p_short = clf.predict([long_text, "shares rise"])
    assert p_long.truncated is True
    assert p_short.truncated is False
    # text over max_chars is cut before tokenising and flagged too
    cut = Classifier.load(clf.model_dir, variant="fp32", max_chars=10)
    assert [p.truncated for p in cut.predict(["oil falls after the report", "oil"])] == [True, False]


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_empty_or_whitespace_text_raises_naming_the_index(clf: Classifier, bad: str) -> None:
    with pytest.raises(ValueError, match=r"texts\[1\] is empty or whitespace-only"):
        clf.predict(["oil falls", bad])


def test_non_string_and_bare_string_raise_type_error(clf: Classifier) -> None:
    with pytest.raises(TypeError, match=r"texts\[0\] is int"):
        clf.predict([3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not a single string"):
        clf.predict("oil falls")


def test_empty_list_gives_empty_result(clf: Classifier) -> None:
    assert clf.predict([]) == []


def test_emoji_only_and_non_english_text_are_scored(clf: Classifier) -> None:
    preds = clf.predict(["🚀🚀🚀", "Die Aktie fällt nach schwachen Zahlen", "株価が急落した", "📉"])
    assert len(preds) == 4
    assert all(p.sentiment in SENTIMENT_LABELS and p.topic in TOPIC_LABELS for p in preds)
    assert not any(p.truncated for p in preds)


def test_concurrent_calls_from_threads_match_sequential(clf: Classifier) -> None:
    batches = [TEXTS[i:] + TEXTS[:i] for i in range(len(TEXTS))] * 4
    expected = [[(p.sentiment, round(p.topic_prob, 4)) for p in clf.predict(b)] for b in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda b: [(p.sentiment, round(p.topic_prob, 4)) for p in clf.predict(b)], batches))
    assert got == expected


@pytest.mark.parametrize("missing", ["model.onnx", "tokenizer.json", "labels.json"])
def test_missing_file_names_the_file(tiny_dir: Path, tmp_path: Path, missing: str) -> None:
    d = _copy(tiny_dir, tmp_path / "m")
    (d / missing).unlink()
    with pytest.raises(ModelError, match=f"missing {missing}"):
        Classifier.load(d)


def test_missing_directory_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist.*finsent train"):
        Classifier.load(tmp_path / "nope")


def test_labels_not_matching_heads_is_a_value_error(tiny_dir: Path, tmp_path: Path) -> None:
    d = _copy(tiny_dir, tmp_path / "m")
    info = json.loads((d / "labels.json").read_text())
    info["topic"] = info["topic"][:-1]
    (d / "labels.json").write_text(json.dumps(info))
    with pytest.raises(ModelError, match="19 topic labels but the model's topic head outputs 20"):
        Classifier.load(d, variant="fp32")


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        ('{"model_version": "x", "sentiment": [], "topic": ["a"]}', "'sentiment' must be a non-empty list"),
        ('{"model_version": "x", "sentiment": ["a", "a"], "topic": ["b"]}', "duplicate"),
        ('{"sentiment": ["a"], "topic": ["b"]}', "model_version"),
        ('{"format": 9, "model_version": "x", "sentiment": ["a"], "topic": ["b"]}', "format 9"),
    ],
)
def test_malformed_labels_json(tiny_dir: Path, tmp_path: Path, content: str, match: str) -> None:
    d = _copy(tiny_dir, tmp_path / "m")
    (d / "labels.json").write_text(content)
    with pytest.raises(ModelError, match=match):
        Classifier.load(d)


def test_unknown_variant_is_rejected(tiny_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown model variant 'int4'"):
        Classifier.load(tiny_dir, variant="int4")


def test_variants_are_derived_once_cached_and_agree(tiny_dir: Path, tmp_path: Path) -> None:
    d = _copy(tiny_dir, tmp_path / "m")
    cache = tmp_path / "cache"
    fp32 = Classifier.load(d, variant="fp32", cache_dir=cache)
    int8 = Classifier.load(d, variant="int8", cache_dir=cache)
    auto = Classifier.load(d, cache_dir=cache)  # CPU here: auto means int8
    fp16 = Classifier.load(d, variant="fp16", cache_dir=cache)
    assert sorted(p.name for p in d.iterdir()) == sorted(p.name for p in tiny_dir.iterdir())  # model dir untouched
    (root,) = (cache / "models").iterdir()  # one directory per stored graph's digest
    assert (fp32.variant, int8.variant, auto.variant, fp16.variant) == ("fp32", "int8", "int8", "fp16")
    cached = sorted(p.name.split(".")[1] for p in root.glob("model.*.onnx"))
    from finsent.models.variants import INT8_RECIPE

    # the int8 recipe is in the name: a new recipe never runs a stale file
    assert cached == ["fp16", "fp32", f"int8r{INT8_RECIPE}"]
    mtimes = {p: p.stat().st_mtime_ns for p in root.iterdir()}
    Classifier.load(d, variant="int8", cache_dir=cache)
    assert {p: p.stat().st_mtime_ns for p in root.iterdir()} == mtimes  # not derived again
    import onnx

    int8_graph = onnx.load(str(next(root.glob("model.int8r*.onnx"))))
    ops = {n.op_type for n in int8_graph.graph.node}
    # recipe 4: per-row activation scales (QuantizeLinear along the rows), never one dynamic scale per batch
    assert {"QuantizeLinear", "MatMulInteger"} <= ops and "DynamicQuantizeLinear" not in ops, ops
    nodes = int8_graph.graph.node
    weights = {i.name for i in int8_graph.graph.initializer}
    plain = {n.name for n in nodes if n.op_type == "MatMul" and n.input[1] in weights}  # weight MatMuls left fp32
    assert plain == set(), plain
    integer = {n.name for n in nodes if n.op_type == "MatMulInteger"}
    assert "/encoder/encoder/layer.0/output/dense/MatMul/rowq" in integer, integer
    assert len(integer) == 12, integer  # 2 layers x (query, key, value, attention output, intermediate, output)
    fp16_graph = onnx.load(str(next(root.glob("model.fp16.*.onnx"))))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16_graph.graph.initializer)
    ref = fp32.predict(TEXTS)
    for other, tol in ((fp16, 0.02), (int8, 0.3)):  # the tiny model's weights are random and scaled up
        got = other.predict(TEXTS)
        diffs = [
            abs(a.sentiment_probs[lab] - b.sentiment_probs[lab])
            for a, b in zip(ref, got, strict=True)
            for lab in SENTIMENT_LABELS
        ]
        assert max(diffs) < tol, other.variant


def test_changed_model_file_gets_new_variants(tiny_dir: Path, tmp_path: Path) -> None:
    """Variants are keyed by the stored graph's digest: a re-exported model never runs a stale variant."""
    import onnx

    d = _copy(tiny_dir, tmp_path / "m")
    cache = tmp_path / "cache"
    Classifier.load(d, variant="fp32", cache_dir=cache)
    before = {p.name for p in cache.glob("models/*/*.onnx")}
    model = onnx.load(str(d / "model.onnx"))
    model.doc_string = "re-exported"
    onnx.save_model(model, str(d / "model.onnx"))
    Classifier.load(d, variant="fp32", cache_dir=cache)
    after = {p.name for p in cache.glob("models/*/*.onnx")}
    assert len(after - before) == 1


def test_export_matches_pytorch_and_records_it(tiny_dir: Path) -> None:
    info = json.loads((tiny_dir / "labels.json").read_text())
    assert info["max_abs_diff_vs_torch"]["fp32_graph"] < 1e-4
    assert info["max_abs_diff_vs_torch"]["fp16_storage_graph"] < 2e-2
    assert info["weights"] == "fp16-storage"


def test_cuda_request_without_usable_gpu_falls_back_to_int8_on_cpu(tiny_dir: Path) -> None:
    clf = Classifier.load(tiny_dir, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    if clf.provider == "CUDAExecutionProvider":  # a machine with onnxruntime-gpu and a GPU
        assert clf.variant == "fp16"
    else:
        assert (clf.provider, clf.variant) == ("CPUExecutionProvider", "int8")
    assert len(clf.predict(TEXTS)) == len(TEXTS)


def test_fp16_storage_round_trips_exactly(tiny_dir: Path, tmp_path: Path) -> None:
    """expand_weights restores float32 initializers with the stored values: same outputs, no casts left."""
    import onnx
    import onnxruntime as ort

    from finsent.models.variants import expand_weights, is_compact

    stored = onnx.load(str(tiny_dir / "model.onnx"))
    assert is_compact(tiny_dir / "model.onnx")
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in stored.graph.initializer)
    expanded = expand_weights(tiny_dir / "model.onnx")
    assert not any(i.data_type == onnx.TensorProto.FLOAT16 for i in expanded.graph.initializer)
    assert not any(n.name.startswith("unpack_") for n in expanded.graph.node)
    onnx.save_model(expanded, str(tmp_path / "expanded.onnx"))
    feed = {"input_ids": np.array([[2, 10, 20, 30, 3]], dtype=np.int64), "attention_mask": np.ones((1, 5), np.int64)}
    a = ort.InferenceSession(str(tiny_dir / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)
    b = ort.InferenceSession(str(tmp_path / "expanded.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)
    for x, y in zip(a, b, strict=True):
        assert np.allclose(x, y, atol=1e-6)
