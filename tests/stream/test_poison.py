"""No message can stop the worker: fuzzed and adversarial input, in the decoder and through a real worker.

The rule under test: whatever one message contains, it becomes a scored item or a dead letter
with a known reason and the original key; the rest of its batch flows on; whatever is stored is
also publishable (valid UTF-8 all the way). The corpus is generated (hypothesis: the JSON
structure, field types, numbers, dates, Unicode including lone surrogates) and fixed (the
messages that stopped the worker before: a 5,000-digit integer, ``"\\ud800"`` in text and id,
``"truncated": "no"``).
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finsent.core.events import DEAD_LETTER_REASONS, SCHEMA_VERSION, decode_raw, is_valid_unicode
from finsent.stream.worker import RawMessage, decode_batch, score_items
from tests.stream_helpers import make_items, produce, produce_items, read_topic, stream_settings, wait_for

#: messages that crashed the agent or looped the publisher before
FIXED: list[bytes] = [
    b'{"id": "big", "source": "t", "source_type": "news", "text": "x", "published_at": ' + b"9" * 5000 + b"}",
    b'{"id": "' + b"1" * 5000 + b'", "source": "t", "source_type": "news", "text": "x"}',
    b'{"id": "sur-text", "source": "t", "source_type": "news", "text": "bad \\ud800 text"}',
    b'{"id": "sur-\\ud800-id", "source": "t", "source_type": "news", "text": "fine"}',
    b'{"id": "trunc", "source": "t", "source_type": "news", "text": "x", "truncated": "no"}',
    b'{"id": "deep", "source": "t", "source_type": "news", "text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"id": "ts", "source": "t", "source_type": "news", "text": "x", "ingested_at": 1e300}',
    b'{"id": "date", "source": "t", "source_type": "news", "text": "x", "published_at": "2024-02-30T00:00:00Z"}',
    b'{"id": "nan", "source": "t", "source_type": "news", "text": "x", "ingested_at": NaN}',
    b'{"id": "tick", "source": "t", "source_type": "news", "text": "x", "tickers": ["\\udfff"]}',
    b'{"id": "v", "source": "t", "source_type": "news", "text": "x", "v": 1.5}',
    b"\x00\x01\x02",
    b"\xef\xbb\xbf{}",
]

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True),
    st.text(alphabet=st.characters(codec=None, categories=None), max_size=40),
    st.sampled_from(["2024-01-02T03:04:05Z", "2024-02-30", "yesterday", "1e308", "", "\ud800", "9" * 400]),
)
_json = st.recursive(
    _scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=300), _scalars),
        "source": st.one_of(st.text(max_size=20), _scalars),
        "source_type": st.sampled_from(["news", "social", "other", 3, None]),
        "text": st.one_of(st.text(), _json),
        "title": _scalars,
        "url": _scalars,
        "author": _scalars,
        "published_at": _scalars,
        "ingested_at": _scalars,
        "tickers": st.one_of(st.lists(st.text(max_size=6), max_size=3), _json),
        "truncated": _scalars,
        "v": st.one_of(st.just(SCHEMA_VERSION), _scalars),
    },
)


def _encode(obj: Any, mode: int) -> bytes:
    text = json.dumps(obj, ensure_ascii=bool(mode % 2), allow_nan=True)
    return text.encode("utf-8", "surrogatepass" if mode > 1 else "backslashreplace")


_messages = st.one_of(
    st.tuples(_fields, st.integers(0, 3)).map(lambda t: _encode(*t)),
    st.tuples(_json, st.integers(0, 3)).map(lambda t: _encode(*t)),
    st.binary(max_size=200),
)


def _check(messages: list[bytes]) -> None:
    raw = [RawMessage(v, "finsent.raw", 0, i, 1_700_000_000.0, b"key-%d" % i) for i, v in enumerate(messages)]
    items, dead = decode_batch(raw, 1_000_000, 20_000)
    assert len(items) + len(dead) == len(messages)
    for d in dead:
        body = json.loads(d.body)
        assert d.reason in DEAD_LETTER_REASONS and body["reason"] == d.reason and d.key.startswith(b"key-")
    for it in items:
        wire = it.to_json()  # whatever decoded must also be publishable...
        assert is_valid_unicode(it.id) and is_valid_unicode(it.text)
        again = decode_raw(wire)  # ...and decode to the same item
        assert (again.id, again.text, again.truncated) == (it.id, it.text, it.truncated)


def test_fixed_poison_corpus_is_dead_lettered_or_cleaned() -> None:
    _check(FIXED)
    raw = [RawMessage(v, "finsent.raw", 0, i, None, b"k%d" % i) for i, v in enumerate(FIXED)]
    items, dead = decode_batch(raw, 1_000_000, 20_000)
    by_id = {it.id: it for it in items}
    assert by_id["sur-text"].text == "bad \ufffd text"  # cleaned, so it can be stored AND published
    assert "sur-\ud800-id" not in by_id and "trunc" not in by_id and "big" not in by_id
    assert {d.reason for d in dead} >= {"not_json", "bad_id", "bad_type"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_messages, min_size=1, max_size=8))
def test_any_message_decodes_or_dead_letters_with_a_reason(messages: list[bytes]) -> None:
    _check(messages)


class _Exploding:
    """A classifier that fails on one text (as a tokenizer once did on a lone surrogate)."""

    version = "explode-1"

    def predict(self, texts: list[str]) -> list[Any]:
        if any("boom" in t for t in texts):
            raise TypeError("tokenizer refused the text")
        from finsent.models.runtime import Prediction

        return [
            Prediction("neutral", {"negative": 0.1, "neutral": 0.8, "positive": 0.1}, "Macro", 0.9, False)
            for _ in texts
        ]


def test_a_model_failure_dead_letters_only_its_item_with_the_key() -> None:
    from dataclasses import replace

    items = make_items(5, "ok")
    bad = replace(make_items(1, "x")[0], text="boom goes the model")
    scored, dead = score_items(_Exploding(), [*items, bad])
    assert sorted(s.id for s in scored) == sorted(i.id for i in items)
    assert [d.reason for d in dead] == ["model_error"] and dead[0].key == bad.id.encode()
    assert "TypeError" in json.loads(dead[0].body)["detail"]


@pytest.mark.integration
@pytest.mark.faults
def test_poison_interleaved_with_good_items_through_a_real_worker(
    kafka_bootstrap: str, chdb_db_url: str, unique_name: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from finsent.models.runtime import Classifier
    from finsent.models.testing import make_tiny_model
    from finsent.stream.service import WorkerThread
    from finsent.stream.store import open_store

    classifier = Classifier.load(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))
    with warnings.catch_warnings():  # hypothesis as a generator: a fresh corpus each run
        warnings.simplefilter("ignore")
        generated = [_messages.example() for _ in range(60)]
    poison = FIXED + generated
    s = stream_settings(kafka_bootstrap, chdb_db_url, unique_name)
    good = make_items(40, "good")
    produce_items(s, good[:20])
    produce(s, poison, [b"poison-%d" % i for i in range(len(poison))])
    produce_items(s, good[20:])
    # how many of the poison messages are in fact valid items (the generator makes some): the decoder decides
    raw = [RawMessage(v, "t", 0, i, None) for i, v in enumerate(poison)]
    valid, invalid = decode_batch(raw, s.kafka.max_message_bytes, s.model.max_text_chars)
    store = open_store(chdb_db_url)
    try:
        with WorkerThread(s, classifier=classifier, store=store) as w:
            wait_for(
                lambda: (
                    w.scorer.stats.snapshot()["stored"] >= 40 + len(valid)
                    and sum(w.scorer.stats.snapshot()["dead_lettered"].values()) >= len(invalid)
                ),
                90,
                "every good item stored and every poison message dead-lettered",
            )
            assert w.alive()
        counts = store.count()
        assert counts["rows"] == counts["unique_ids"] == len({it.id for it in good} | {it.id for it in valid})
    finally:
        store.close()
    dlq = read_topic(s, s.kafka.topic_dlq, len(invalid))
    assert len(dlq) == len(invalid) and all(r.key.startswith(b"poison-") for r in dlq)
    assert all(json.loads(r.value)["reason"] in DEAD_LETTER_REASONS for r in dlq)
    scored = read_topic(s, s.kafka.topic_scored, 40 + len(valid))
    assert len(scored) == len({r.key for r in scored}) == counts["rows"]  # published once each
