"""The default variant scores a text the same whatever else is in its batch (issue 24).

Redeliveries, rescores and backtests must reproduce: the same text gets the same labels and
probabilities (to 1e-4) alone, in batches of 32 and in shuffled batches, and at any padded length.
The int8 recipe that used one dynamic activation scale per batch tensor failed this (0.8% of sentiment
and 3-4% of topic labels changed on 2,000 tweets); per-row scales (``models.variants.quantize_rows``) pass.
Both the tiny test model and the shipped model are checked with the CPU default (``auto`` = int8).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from finsent.models.data import read_labelled_csv
from finsent.models.runtime import Classifier, Prediction
from finsent.models.testing import _WORDS, make_tiny_model

TOL = 1e-4
SEED_DIR = Path(__file__).resolve().parents[2] / "models" / "seed"


def _tiny_texts(n: int = 160) -> list[str]:
    """Texts of 1 to 50 words (so batches mix short and long texts and pad the short ones)."""
    rng = random.Random(5)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 50))) for _ in range(n)]


def _seed_texts(n: int = 200) -> list[str]:
    texts = read_labelled_csv(SEED_DIR / "sentiment.csv").texts + read_labelled_csv(SEED_DIR / "topic.csv").texts
    return random.Random(11).sample(texts, n)


def _in_batches(clf: Classifier, texts: list[str], order: list[int], size: int = 32) -> list[Prediction]:
    got: list[Prediction | None] = [None] * len(texts)
    for start in range(0, len(order), size):
        part = order[start : start + size]
        for i, p in zip(part, clf.predict([texts[i] for i in part]), strict=True):
            got[i] = p
    assert all(p is not None for p in got)
    return got  # type: ignore[return-value]


def _differences(ref: list[Prediction], got: list[Prediction], texts: list[str]) -> list[str]:
    bad = []
    for text, a, b in zip(texts, ref, got, strict=True):
        dp = max(abs(a.sentiment_probs[k] - b.sentiment_probs[k]) for k in a.sentiment_probs)
        if a.sentiment != b.sentiment or a.topic != b.topic or dp > TOL or abs(a.topic_prob - b.topic_prob) > TOL:
            bad.append(f"{text[:60]!r}: {a.sentiment}/{a.topic} -> {b.sentiment}/{b.topic}, |dp| {dp:.2e}")
    return bad


def _check_batch_independence(clf: Classifier, texts: list[str]) -> None:
    alone = [clf.predict([t])[0] for t in texts]
    orders = {"file order": list(range(len(texts)))}
    for seed in (1, 2):
        order = list(range(len(texts)))
        random.Random(seed).shuffle(order)
        orders[f"shuffled (seed {seed})"] = order
    for name, order in orders.items():
        bad = _differences(alone, _in_batches(clf, texts, order), texts)
        assert not bad, f"{len(bad)} of {len(texts)} texts scored differently in batches of 32, {name}: {bad[:5]}"
    whole = clf.predict(texts)  # one call: the runtime's own length-sorted cuts
    bad = _differences(alone, whole, texts)
    assert not bad, f"{len(bad)} texts scored differently in one call of {len(texts)}: {bad[:5]}"


def _check_padding_independence(clf: Classifier, texts: list[str]) -> None:
    """Run the graph itself on each text unpadded, padded by one column and padded to the model's
    ``max_length`` (what a long text in its batch does): the logits must agree."""
    session, tok = clf._session, clf._tokenizer  # the loaded variant's own session and tokenizer
    for text in texts:
        ids = tok.encode(text).ids
        pads = (0, 1, max(2, clf.info.max_length - len(ids)))
        outs = []
        for pad in pads:
            feed = {
                "input_ids": np.array([ids + [clf._pad_id] * pad], dtype=np.int64),
                "attention_mask": np.array([[1] * len(ids) + [0] * pad], dtype=np.int64),
            }
            outs.append(session.run(["sentiment_logits", "topic_logits"], feed))
        for pad, (s, t) in zip(pads[1:], outs[1:], strict=True):
            assert np.abs(s - outs[0][0]).max() < TOL, f"{text[:60]!r}: sentiment logits move with {pad} pads"
            assert np.abs(t - outs[0][1]).max() < TOL, f"{text[:60]!r}: topic logits move with {pad} pads"


@pytest.fixture(scope="module")
def tiny_default(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    d = make_tiny_model(tmp_path_factory.mktemp("tiny"))
    return Classifier.load(d, cache_dir=tmp_path_factory.mktemp("cache"), entities=False)


@pytest.fixture(scope="module")
def shipped_default() -> Classifier:
    return Classifier.load(entities=False)  # the shipped model, the CPU default variant


def test_tiny_default_variant_is_the_deterministic_int8(tiny_default: Classifier) -> None:
    assert tiny_default.variant == ("fp16" if tiny_default.provider == "CUDAExecutionProvider" else "int8")


def test_tiny_model_scores_do_not_depend_on_the_batch(tiny_default: Classifier) -> None:
    _check_batch_independence(tiny_default, _tiny_texts())


def test_tiny_model_scores_do_not_depend_on_padding(tiny_default: Classifier) -> None:
    _check_padding_independence(tiny_default, _tiny_texts(20))


def test_shipped_model_scores_do_not_depend_on_the_batch(shipped_default: Classifier) -> None:
    _check_batch_independence(shipped_default, _seed_texts())


def test_shipped_model_scores_do_not_depend_on_padding(shipped_default: Classifier) -> None:
    _check_padding_independence(shipped_default, _seed_texts(20))


def test_shipped_model_entities_do_not_depend_on_the_batch() -> None:
    """The entity head's spans and per-entity probabilities too (the shipped model has one: token_logits)."""
    clf = Classifier.load()
    texts = _seed_texts(96)
    alone = [clf.predict([t])[0] for t in texts]
    order = list(range(len(texts)))
    random.Random(3).shuffle(order)
    batched = _in_batches(clf, texts, order)
    assert any(m.entity_id is None for p in alone for m in p.entities), "no model-only span: is the head there?"
    for text, a, b in zip(texts, alone, batched, strict=True):
        assert [(m.start, m.end, m.sentiment, m.entity_id) for m in a.entities] == [
            (m.start, m.end, m.sentiment, m.entity_id) for m in b.entities
        ], text
        for x, y in zip(a.entities, b.entities, strict=True):
            assert max(abs(x.sentiment_probs[k] - y.sentiment_probs[k]) for k in x.sentiment_probs) < TOL, text
