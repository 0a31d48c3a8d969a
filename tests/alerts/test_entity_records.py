"""The entity counts record format (finsent.alerts.entity_agent, version 2): round trips, the records a topic may
still hold from version 1, and anything else dead-lettered with a reason -- never an exception that stops the agent.

Version 2 sends one record per owning partition per batch (positional item and mention rows, the watermark in the
partition's last record) instead of one per entity: ``bench entities --plumbing`` measured the per-record cost
as most of the entity stage's.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finsent.alerts.entity_agent import (
    ITEMS_PER_RECORD,
    RECORD_VERSION,
    BadRecord,
    EntityAlerts,
    attach,
    decode_batch,
    entity_records,
    watermark_keys,
)
from finsent.core.events import DEAD_LETTER_REASONS, EntityMention, RawItem, ScoredItem, format_time, utcnow
from finsent.core.settings import load_settings

UTC = timezone.utc  # noqa: UP017
PROBS = {"negative": 0.1, "neutral": 0.8, "positive": 0.1}


def _item(
    i: int, at: datetime, names: list[tuple[str | None, str, str]], text: str = "", raw: int | None = 0
) -> ScoredItem:
    ents = tuple(EntityMention(n, 0, 3, s, PROBS, eid, n, 40 + k) for k, (eid, n, s) in enumerate(names))
    item = RawItem(
        id=f"it{i}",
        source=f"src{i % 3}",
        source_type="news",
        text=text or f"story {i} about {' and '.join(n for _, n, _ in names) or 'nobody'}",
        title=None if i % 4 == 0 else f"Headline {i}",
        url=None if i % 5 == 0 else f"https://news.example/{i}",
        ingested_at=at + timedelta(seconds=5),
        published_at=None if i % 6 == 0 else at,
    )
    return ScoredItem(item, "neutral", PROBS, "general", 0.9, f"model-{i % 2}", utcnow(), ents, raw_partition=raw)


def _expected(items: list[ScoredItem]) -> set[tuple[Any, ...]]:
    """What the owner must see: one mention per (item, entity key), every field as version 1 carried it."""
    out = set()
    for s in items:
        keys = set()
        for e in s.entities:
            key = e.entity_id or "~" + e.name
            if not e.name.strip() or key in keys:
                continue
            keys.add(key)
            it = s.item
            out.add(
                (
                    it.id,
                    it.published_at or it.ingested_at,
                    key,
                    e.entity_id,
                    e.name,
                    e.sentiment,
                    e.relevance,
                    it.source,
                    (it.title or "")[:300],
                    it.url,
                    s.model_version,
                    it.text[:1000],
                )
            )
    return out


def _seen(records: list[tuple[bytes, bytes]], partitions: int) -> tuple[set[tuple[Any, ...]], dict[int, Any]]:
    """Every decoded mention (checked to sit in its owner's partition), and each partition's last watermark."""
    owner = EntityAlerts(load_settings(), sinks=[], partitions=partitions)
    keys = watermark_keys(partitions)
    got: set[tuple[Any, ...]] = set()
    wms: dict[int, Any] = {}
    for key, value in records:
        via = keys.index(key)
        pending, wm = decode_batch(value)
        for p in pending:
            m = p.mention
            assert owner.partition_of(m.key) == via, "a mention sent to a partition that does not own its entity"
            got.add(
                (
                    m.item_id,
                    m.at,
                    m.key,
                    m.entity_id,
                    m.name,
                    m.sentiment,
                    m.relevance,
                    m.source,
                    m.title,
                    m.url,
                    m.model_version,
                    p.text,
                )
            )
        if wm is not None:
            wms[via] = wm
    return got, wms


def test_a_batch_round_trips_one_record_per_owning_partition_with_the_watermark_after_its_mentions() -> None:
    t = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    names = [("JPM", "JPMorgan", "negative"), (None, "genesis", "neutral"), ("AAPL", "Apple", "positive")]
    items = [_item(i, t + timedelta(minutes=i), [names[i % 3], names[(i + 1) % 3]], raw=i % 2) for i in range(30)]
    seen: dict[Any, datetime] = {}
    records, n, bad, newest = entity_records([s.to_json() for s in items], [i % 3 for i in range(30)], 4, seen)
    assert bad == 0 and n == 60
    assert len(records) == 4  # every partition gets one record: the watermark goes to every owner
    got, wms = _seen(records, 4)
    assert got == _expected(items)
    # the sender's newest event time per (scored, raw) origin, in every partition's record
    assert set(wms) == {0, 1, 2, 3} and all(w == wms[0] for w in wms.values())
    assert wms[0] == {f"{p}/{r}": v for (p, r), v in newest.items()} and seen == newest
    # without ``seen``: only the owning partitions, no watermark
    records, _, _, _ = entity_records([s.to_json() for s in items], None, 4)
    got, wms = _seen(records, 4)
    assert got == _expected(items) and wms == {}


def test_a_big_batch_splits_into_records_far_below_a_megabyte_and_only_the_last_carries_the_watermark() -> None:
    t = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    text = "é" * 5000  # 1,000 characters kept, two bytes each
    items = [_item(i, t, [("JPM", "JPMorgan", "negative")], text=text) for i in range(3 * ITEMS_PER_RECORD + 7)]
    records, n, _, _ = entity_records([s.to_json() for s in items], [0] * len(items), 1, {})
    assert n == len(items) and len(records) == 4
    assert max(len(v) for _, v in records) < 400_000
    decoded = [decode_batch(v) for _, v in records]
    assert [wm is not None for _, wm in decoded] == [False, False, False, True]
    assert sorted(p.mention.item_id for ps, _ in decoded for p in ps) == sorted(s.id for s in items)
    assert all(len(p.text) == 1000 for ps, _ in decoded for p in ps)


def test_version_1_records_still_decode_after_an_upgrade() -> None:
    row = ["i1", "2026-03-02T09:00:00.000Z", "negative", 80, "Reuters", "JPMorgan falls", "https://x/1", "text"]
    v1 = {"key": "JPM", "id": "JPM", "name": "JPMorgan", "m": [row, [*row[:1], "2026-03-02T09:01:00Z", *row[2:], "m7"]]}
    pending, wm = decode_batch(json.dumps(v1).encode())
    assert wm is None and [(p.mention.key, p.mention.model_version) for p in pending] == [("JPM", ""), ("JPM", "m7")]
    assert pending[0].mention.at == datetime(2026, 3, 2, 9, 0, tzinfo=UTC) and pending[0].text == "text"
    pending, wm = decode_batch(b'{"wm": {"0/1": "2026-03-02T09:00:00Z", "1": "2026-03-02T08:00:00Z"}}')
    assert pending == [] and wm == {
        "0/1": datetime(2026, 3, 2, 9, tzinfo=UTC),
        "1": datetime(2026, 3, 2, 8, tzinfo=UTC),
    }


GOOD_ITEM = ["i1", "2026-03-02T09:00:00Z", "s", "t", None, "x", "m"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "empty_message"),
        (b"not json", "not_json"),
        (b"\xff\xfe", "not_json"),
        (b"[1, 2]", "not_object"),
        (b'{"v": 3, "i": [], "m": []}', "unsupported_version"),
        (b'{"v": "2", "i": [], "m": []}', "unsupported_version"),
        (b'{"v": 2, "m": []}', "missing_field"),
        (b"{}", "missing_field"),
        (json.dumps({"v": 2, "i": [GOOD_ITEM], "m": [[1, "K", None, "k", "negative", 1]]}).encode(), "bad_type"),
        (json.dumps({"v": 2, "i": [GOOD_ITEM], "m": [[True, "K", None, "k", "negative", 1]]}).encode(), "bad_type"),
        (json.dumps({"v": 2, "i": [GOOD_ITEM], "m": [[0, "", None, "k", "negative", 1]]}).encode(), "bad_type"),
        (json.dumps({"v": 2, "i": [GOOD_ITEM], "m": [[0, "K", None, "k", "angry", 1]]}).encode(), "bad_type"),
        (json.dumps({"v": 2, "i": [GOOD_ITEM[:3]], "m": []}).encode(), "bad_type"),
        (json.dumps({"v": 2, "i": [["i", "yesterday", "s", "t", None, "x", "m"]], "m": []}).encode(), "bad_time"),
        (json.dumps({"v": 2, "i": [], "m": [], "wm": {"0": "soon"}}).encode(), "bad_time"),
        (json.dumps({"v": 2, "i": [], "m": [], "wm": [1]}).encode(), "bad_type"),
        (b'{"key": "", "name": "x", "m": []}', "bad_type"),
        (
            b'{"key": "K", "name": "x", "m": [["i", "2024-01-01T00:00:00Z", "angry", 1, "s", "t", null, ""]]}',
            "bad_type",
        ),
        (b'{"key": "K", "name": "x", "m": [["too", "short"]]}', "bad_type"),
    ],
)
def test_a_bad_record_is_a_bad_record_with_its_dead_letter_reason(value: bytes, reason: str) -> None:
    with pytest.raises(BadRecord) as info:
        decode_batch(value)
    assert info.value.reason == reason and reason in DEAD_LETTER_REASONS and info.value.detail


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=8) | st.dictionaries(st.sampled_from(["v", "i", "m", "wm", "key", "name"]), kids)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=200),
        _json.map(lambda o: json.dumps(o).encode()),
        st.fixed_dictionaries(
            {"v": st.sampled_from([2, 2, 1]), "i": st.lists(st.lists(_json, max_size=8), max_size=3), "m": _json}
        ).map(lambda o: json.dumps(o).encode()),
    )
)
def test_no_value_on_the_entity_counts_topic_raises_anything_but_a_bad_record(value: bytes) -> None:
    try:
        pending, wm = decode_batch(value)
    except BadRecord as exc:
        assert exc.reason in DEAD_LETTER_REASONS
        return
    assert isinstance(pending, list) and (wm is None or isinstance(wm, dict))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.lists(
                st.tuples(
                    st.sampled_from([None, "JPM", "AAPL", "X1"]),
                    st.text(min_size=0, max_size=6),
                    st.sampled_from(["negative", "neutral", "positive"]),
                ),
                max_size=4,
            ),
            st.text(min_size=1, max_size=40).filter(str.strip),
            st.integers(0, 3),
        ),
        max_size=25,
    ),
    st.integers(1, 5),
)
def test_any_batch_round_trips_every_mention_to_its_owner(batch: list[Any], partitions: int) -> None:
    t = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    items = [_item(i, t + timedelta(seconds=i), names, text, raw) for i, (names, text, raw) in enumerate(batch)]
    records, n, bad, _ = entity_records([s.to_json() for s in items], [0] * len(items), partitions, {})
    got, _ = _seen(records, partitions)
    assert bad == 0 and got == _expected(items) and n == len(got)


def test_the_lean_scored_reader_judges_a_bad_scored_value_as_the_full_decoder_does() -> None:
    t = utcnow().replace(microsecond=0) - timedelta(hours=1)
    good = _item(1, t, [("JPM", "JPMorgan", "negative")]).to_json()
    obj = json.loads(good)
    future = {**obj, "published_at": format_time(utcnow() + timedelta(days=1))}
    blank_id = {**obj, "id": "  "}
    bad_ent = {**obj, "entities": [{"name": "X"}]}
    odd_sentiment = {**obj, "entities": [{**obj["entities"][0], "sentiment": "angry"}]}
    values = [json.dumps(o).encode() for o in (future, blank_id, bad_ent, odd_sentiment)]
    records, n, bad, _ = entity_records([good, *values], [0] * 5, 1)
    assert (n, bad) == (1, 4)
    # an older scorer's value (no raw partition, a numeric time) reads through the full decoder, as before
    old = {k: v for k, v in obj.items() if k != "raw_partition"}
    old["published_at"] = t.timestamp()
    records, n, bad, newest = entity_records([json.dumps(old).encode()], [1], 1)
    assert (n, bad) == (1, 0) and newest == {1: t}


# --- the real worker: a garbage record on the entity counts topic is dead-lettered with its reason ----------------
@pytest.mark.integration
def test_the_detect_agent_dead_letters_bad_records_and_reads_old_ones(
    kafka_bootstrap, chdb_db_url, unique_name
) -> None:
    from finsent.bench.plumbing import ConstantClassifier
    from finsent.stream.kafka import make_producer
    from finsent.stream.service import WorkerThread
    from finsent.stream.store import open_store
    from tests.stream_helpers import read_topic, stream_settings, wait_for

    s = stream_settings(kafka_bootstrap, chdb_db_url, unique_name, entity_lateness_s=7200)
    store = open_store(chdb_db_url)
    store.ensure_schema()
    at = format_time(utcnow() - timedelta(minutes=5))
    v1 = {"key": "JPM", "id": "JPM", "name": "JPMorgan", "m": [["i1", at, "negative", 80, "s", "t", None, "x"]]}
    v2 = {
        "v": RECORD_VERSION,
        "i": [["i2", at, "s", "t", None, "x", "m"]],
        "m": [[0, "JPM", "JPM", "JPMorgan", "negative", 80]],
    }
    try:
        with WorkerThread(s, classifier=ConstantClassifier(), store=store, extensions=[attach]) as w:
            state = w.context.extensions.get("entity_alerts")
            wait_for(lambda: w.scorer.joined, 60, "the group join")
            producer = make_producer(s.kafka, client_id="test-entity-records")
            try:
                for value in (b"garbage", json.dumps(v1).encode(), b'{"v": 9}', json.dumps(v2).encode()):
                    producer.send(s.kafka.topic_entity_counts, key=b"JPM", value=value)
                producer.flush()
            finally:
                producer.close()
            wait_for(lambda: state.mentions >= 2 and state.bad_values >= 2, 60, "both good records counted")
            time.sleep(0.5)
            assert (state.mentions, state.bad_values) == (2, 2)
    finally:
        store.close()
    dead = read_topic(s, s.kafka.topic_dlq, 2)
    bodies = sorted((json.loads(r.value)["reason"], json.loads(r.value)["payload"]) for r in dead)
    assert bodies == [("not_json", "garbage"), ("unsupported_version", '{"v": 9}')]
    assert all(json.loads(r.value)["topic"] == s.kafka.topic_entity_counts for r in dead)
