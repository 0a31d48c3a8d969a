"""The store against real engines: Debian's clickhouse-server 18.16 and chdb (modern ClickHouse).

Every test runs on both, through the same public methods the worker, CLI and alerting use.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from finsent.core.events import Alert, RawItem, ScoredItem, utcnow
from finsent.core.store import TopicCounts
from finsent.stream.store import StoreError, open_store

pytestmark = pytest.mark.integration

HOSTILE = "it's \"quoted\" \\back\\slash\\ \n\t\0 ünï ✓ 😀 %(x)s %s {p:String} '); DROP TABLE items; --"
PROBS = {
    "negative": {"negative": 0.8, "neutral": 0.15, "positive": 0.05},
    "neutral": {"negative": 0.1, "neutral": 0.8, "positive": 0.1},
    "positive": {"negative": 0.05, "neutral": 0.15, "positive": 0.8},
}


def make_item(
    i: int | str,
    sentiment: str = "negative",
    topic: str = "macro",
    ingested_at: datetime | None = None,
    model_version: str = "m1",
    scored_at: datetime | None = None,
    **raw: object,
) -> ScoredItem:
    item = RawItem(
        id=f"item-{i}",
        source=str(raw.pop("source", "test-feed")),
        source_type="news",
        text=str(raw.pop("text", f"text {i}")),
        ingested_at=ingested_at or utcnow(),
        **raw,  # type: ignore[arg-type]
    )
    return ScoredItem(
        item=item,
        sentiment=sentiment,
        sentiment_probs=PROBS[sentiment],
        topic=topic,
        topic_prob=0.9,
        model_version=model_version,
        scored_at=scored_at or utcnow(),
    )


@pytest.fixture(params=["clickhouse", "chdb"])
def store_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_db_url")


@pytest.fixture
def store(store_url: str) -> Iterator:
    s = open_store(store_url)
    s.ensure_schema()
    yield s
    s.close()


def test_schema_is_created_idempotently(store) -> None:
    store.ensure_schema()  # second (and third) call is a no-op
    store.ensure_schema()
    db = {"db": store.database}
    tables = dict(store.query("SELECT name, engine FROM system.tables WHERE database = {db:String}", db))
    assert tables["items"] == "ReplacingMergeTree"
    assert tables["alerts"] == "ReplacingMergeTree"
    assert tables["topic_minute"] == "AggregatingMergeTree"
    assert tables["topic_minute_mv"] == "MaterializedView"
    cols = {(t, c) for t, c in store.query("SELECT table, name FROM system.columns WHERE database = {db:String}", db)}
    assert ("items", "model_version") in cols and ("items", "version") in cols and ("items", "ingested_ms") in cols
    assert store.count() == {"rows": 0, "unique_ids": 0}


def test_same_batch_twice_never_shows_twice(store) -> None:
    t0 = utcnow() - timedelta(seconds=5)
    batch = [
        make_item(
            i,
            sentiment=("negative", "neutral", "positive")[i % 3],
            topic=("macro", "earnings")[i % 2],
            ingested_at=t0 + timedelta(milliseconds=i),
        )
        for i in range(30)
    ]
    assert store.insert_scored(batch) == 30
    first = (
        store.count(),
        store.topic_counts(timedelta(minutes=5)),
        store.top_negative(limit=100),
        store.topic_minute_counts(timedelta(minutes=5)),
    )
    assert store.insert_scored(batch) == 30  # redelivery after a crash before the offset commit
    assert store.insert_scored(batch[:7]) == 7
    second = (
        store.count(),
        store.topic_counts(timedelta(minutes=5)),
        store.top_negative(limit=100),
        store.topic_minute_counts(timedelta(minutes=5)),
    )
    assert second == first
    assert store.count(physical=True) == {"rows": 30, "unique_ids": 30, "physical_rows": 67}
    assert sum(tc.total for tc in second[1]) == 30
    assert sum(tc.negative for tc in second[1]) == 10
    assert len(second[2]) == 10
    assert sum(tc.total for tc in second[3]) == 30


def test_rescore_by_newer_model_replaces_the_row(store) -> None:
    ingested = utcnow() - timedelta(seconds=30)
    old = make_item(
        "r",
        sentiment="negative",
        topic="macro",
        ingested_at=ingested,
        model_version="m1",
        scored_at=ingested + timedelta(seconds=1),
    )
    new = make_item(
        "r",
        sentiment="positive",
        topic="earnings",
        ingested_at=ingested,
        model_version="m2",
        scored_at=ingested + timedelta(seconds=20),
    )
    store.insert_scored([old])
    assert [r["id"] for r in store.top_negative()] == ["item-r"]
    store.insert_scored([new])
    store.insert_scored([old])  # a late redelivery of the old version must not win
    assert store.count() == {"rows": 1, "unique_ids": 1}
    assert store.top_negative() == []
    counts = store.topic_counts(timedelta(minutes=5))
    assert [(c.topic, c.total, c.positive, c.negative) for c in counts] == [("earnings", 1, 1, 0)]
    rows = store.query(
        f"SELECT model_version, sentiment FROM {store.database}.items FINAL WHERE id = {{id:String}}", {"id": "item-r"}
    )
    assert rows == [("m2", "positive")]


def test_same_id_reingested_later_the_same_day_is_one_item(store) -> None:
    day = datetime.fromtimestamp((int(utcnow().timestamp()) // 86400 - 1) * 86400, tz=UTC)  # yesterday 00:00
    store.insert_scored([make_item("d", ingested_at=day + timedelta(seconds=1), scored_at=day + timedelta(seconds=2))])
    store.insert_scored(
        [
            make_item(
                "d", ingested_at=day + timedelta(seconds=50), sentiment="neutral", scored_at=day + timedelta(seconds=60)
            )
        ]
    )
    assert store.count(physical=True) == {"rows": 1, "unique_ids": 1, "physical_rows": 2}
    [tc] = store.topic_counts(timedelta(days=2), bucket_s=86400)
    assert (tc.total, tc.neutral, tc.negative) == (1, 1, 0)


def test_topic_minute_merges_model_versions_as_a_set_union(store) -> None:
    t = datetime.fromtimestamp((int(utcnow().timestamp()) // 60 - 2) * 60, tz=UTC) + timedelta(seconds=3)
    a1 = make_item("a", "negative", ingested_at=t, model_version="m1", scored_at=t + timedelta(seconds=1))
    b2 = make_item("b", "negative", ingested_at=t, model_version="m2", scored_at=t + timedelta(seconds=1))
    a2 = make_item("a", "negative", ingested_at=t, model_version="m2", scored_at=t + timedelta(seconds=9))
    store.insert_scored([a1, b2])
    store.insert_scored([a2, a1])  # re-score of a by m2 (same label), redelivery of a by m1
    assert store.topic_minute_counts(timedelta(hours=1)) == [TopicCounts(t.replace(second=0), "macro", 2, 2, 0, 0)]
    versions = store.query(f"SELECT DISTINCT model_version FROM {store.database}.topic_minute ORDER BY model_version")
    assert versions == [("m1",), ("m2",)]


def test_alerts_are_idempotent_by_id(store) -> None:
    now = utcnow().replace(microsecond=0)
    a = Alert(
        topic="macro",
        fired_at=now,
        window_start=now - timedelta(minutes=1),
        window_end=now,
        negative=7,
        total=10,
        negative_share=0.7,
        baseline_share=0.2,
        score=5.5,
        detector="ewma",
    )
    b = Alert(
        topic="earnings",
        fired_at=now - timedelta(seconds=10),
        window_start=now - timedelta(minutes=2),
        window_end=now - timedelta(minutes=1),
        negative=3,
        total=4,
        negative_share=0.75,
        baseline_share=0.1,
        score=3.0,
        detector="cusum",
        severity="critical",
    )
    assert store.insert_alerts([a, b]) == 2
    assert store.insert_alerts([a, b, a]) == 3
    got = store.alerts(timedelta(hours=1))
    assert [g["id"] for g in got] == [a.id, b.id]  # newest first, once each
    assert got[0] == {
        "id": a.id,
        "topic": "macro",
        "fired_at": now,
        "window_start": a.window_start,
        "window_end": now,
        "negative": 7,
        "total": 10,
        "negative_share": 0.7,
        "baseline_share": 0.2,
        "score": 5.5,
        "detector": "ewma",
        "severity": "warning",
        "model_version": "",
        # issue 26: every alert says its kind; entity fields are None on topic alerts; `at` is the window's end
        "kind": "topic",
        "entity_id": None,
        "entity_name": None,
        "evidence": None,
        "at": now,
        "sentiment": "negative",
    }
    assert got[1]["severity"] == "critical"
    assert store.alerts(timedelta(seconds=5)) == got[:1]


def test_every_column_round_trips(store) -> None:
    ingested = datetime(2026, 3, 4, 5, 6, 7, 891_234, tzinfo=UTC)
    published = datetime(2026, 3, 4, 1, 2, 3, 456_000, tzinfo=UTC)
    scored = datetime(2026, 3, 4, 5, 6, 9, 5_000, tzinfo=UTC)
    item = make_item(
        "full",
        "neutral",
        "earnings",
        ingested,
        model_version="m-7",
        scored_at=scored,
        title="T",
        url="https://u",
        author="A",
        published_at=published,
        tickers=("AAPL", "MSFT"),
        truncated=True,
        source="rss:x",
    )
    store.insert_scored([item])
    [row] = store.query(
        f"SELECT id, source, source_type, title, text, url, author, tickers, truncated, published_at, ingested_at, "
        f"ingested_ms, sentiment, p_negative, p_neutral, p_positive, topic, topic_prob, model_version, scored_at, "
        f"scored_ms, version FROM {store.database}.items FINAL"
    )
    assert row[:9] == ("item-full", "rss:x", "news", "T", "text full", "https://u", "A", ["AAPL", "MSFT"], 1)
    assert row[9:12] == (published.replace(microsecond=0), ingested.replace(microsecond=0), 891)
    assert row[12] == "neutral" and [round(p, 4) for p in row[13:16]] == [0.1, 0.8, 0.1]
    assert row[16] == "earnings" and round(row[17], 4) == 0.9 and row[18] == "m-7"
    assert row[19:] == (scored.replace(microsecond=0), 5, int(scored.timestamp()) * 1000 + 5)
    empty = make_item("none", ingested_at=ingested)  # nullable columns stay NULL
    store.insert_scored([empty])
    got = store.query(
        f"SELECT title, url, author, published_at, tickers FROM {store.database}.items FINAL WHERE id = {{id:String}}",
        {"id": "item-none"},
    )
    assert got == [(None, None, None, None, [])]


def test_hostile_strings_round_trip(store) -> None:
    item = make_item(
        HOSTILE,
        text=HOSTILE,
        title=HOSTILE,
        url="https://x/?q=' OR 1=1",
        author=HOSTILE,
        tickers=("AAPL", HOSTILE),
        topic=HOSTILE,
        source=HOSTILE,
    )
    store.insert_scored([item])
    [row] = store.top_negative(topic=HOSTILE)
    assert row["id"] == f"item-{HOSTILE}"
    assert row["text"] == HOSTILE and row["title"] == HOSTILE and row["source"] == HOSTILE
    assert row["tickers"] == ["AAPL", HOSTILE]
    assert row["topic"] == HOSTILE
    # bound parameters of several types, and a literal % in the SQL next to parameters
    got = store.query(
        "SELECT {s:String} AS s, {a:Array(String)} AS a, {n:Nullable(String)} AS n, {i:Int64} AS i, "
        "'100%' AS pct, length({s:String}) AS len",
        {"s": HOSTILE, "a": [HOSTILE, "", "x"], "n": None, "i": -(2**62)},
    )
    assert got == [(HOSTILE, [HOSTILE, "", "x"], None, -(2**62), "100%", len(HOSTILE.encode("utf-8")))]
    found = store.query(
        f"SELECT id, author FROM {store.database}.items FINAL WHERE id = {{id:String}} AND has(tickers, {{t:String}})",
        {"id": f"item-{HOSTILE}", "t": HOSTILE},
    )
    assert found == [(f"item-{HOSTILE}", HOSTILE)]
    assert store.top_negative(topic=HOSTILE[:-1]) == []


def test_malformed_values_do_not_poison_the_batch(store) -> None:
    """Valid JSON can carry lone surrogates and absurd years; the batch must still be stored."""
    odd = make_item(
        "odd",
        text="broken \ud800 surrogate",
        title="\udfff",
        tickers=("\ud83d",),
        ingested_at=datetime(1900, 1, 1, tzinfo=UTC),
        published_at=datetime(2300, 1, 1, tzinfo=UTC),
    )
    fine = make_item("fine")
    assert store.insert_scored([odd, fine]) == 2
    assert store.count() == {"rows": 2, "unique_ids": 2}
    got = store.query(
        f"SELECT text, title, tickers, ingested_at, published_at FROM {store.database}.items FINAL "
        "WHERE id = {id:String}",
        {"id": "item-odd"},
    )
    assert got == [
        (
            "broken \ufffd surrogate",
            "\ufffd",
            ["\ufffd"],
            datetime(1970, 1, 1, tzinfo=UTC),
            datetime.fromtimestamp(2**32 - 1, tz=UTC),
        )
    ]


def test_topic_counts_buckets_since_and_until(store) -> None:
    base = datetime.fromtimestamp((int(utcnow().timestamp()) // 600) * 600 - 1200, tz=UTC)  # aligned
    items = [
        make_item(1, "negative", "macro", base + timedelta(seconds=5)),
        make_item(2, "positive", "macro", base + timedelta(seconds=59, milliseconds=999)),
        make_item(3, "negative", "macro", base + timedelta(seconds=60)),
        make_item(4, "neutral", "earnings", base + timedelta(seconds=61)),
        make_item(5, "negative", "macro", base + timedelta(seconds=300)),
        make_item(6, "negative", "macro", base - timedelta(hours=3)),  # outside since
    ]
    store.insert_scored(items)
    counts = store.topic_counts(timedelta(hours=1), bucket_s=60, until=base + timedelta(seconds=120))
    assert counts == [
        TopicCounts(base, "macro", 2, 1, 0, 1),
        TopicCounts(base + timedelta(seconds=60), "earnings", 1, 0, 1, 0),
        TopicCounts(base + timedelta(seconds=60), "macro", 1, 1, 0, 0),
    ]
    wide = store.topic_counts(timedelta(hours=1), bucket_s=600)
    assert wide == [TopicCounts(base, "earnings", 1, 0, 1, 0), TopicCounts(base, "macro", 4, 3, 0, 1)]
    assert store.count(timedelta(hours=1)) == {"rows": 5, "unique_ids": 5}
    assert store.count() == {"rows": 6, "unique_ids": 6}
    with pytest.raises(ValueError):
        store.topic_counts(timedelta(hours=1), bucket_s=0)


def test_top_negative_newest_first_with_milliseconds(store) -> None:
    t0 = utcnow().replace(microsecond=0) - timedelta(seconds=10)
    items = [
        make_item(i, "negative", "macro" if i % 2 else "earnings", t0 + timedelta(milliseconds=i * 7)) for i in range(6)
    ]
    items.append(make_item("pos", "positive", "macro", t0 + timedelta(seconds=1)))
    store.insert_scored(items)
    rows = store.top_negative(limit=3)
    assert [r["id"] for r in rows] == ["item-5", "item-4", "item-3"]
    assert rows[0]["ingested_at"] == t0 + timedelta(milliseconds=35)
    assert rows[0]["model_version"] == "m1" and rows[0]["p_negative"] == pytest.approx(0.8)
    assert [r["id"] for r in store.top_negative(topic="macro")] == ["item-5", "item-3", "item-1"]
    assert store.top_negative(since=timedelta(seconds=1)) == []


def test_retention_ttl_applied_only_where_supported(store_url: str) -> None:
    s = open_store(store_url, retention_days=3)
    try:
        s.ensure_schema()
        engines = dict(
            s.query("SELECT name, engine_full FROM system.tables WHERE database = {db:String}", {"db": s.database})
        )
        if s.capabilities.ttl:
            assert "TTL event_time + toIntervalDay(3)" in engines["items"]  # retention on event time (#26)
            assert "TTL fired_at + toIntervalDay(3)" in engines["alerts"]
        else:
            assert s.capabilities.version < (19, 6)
            assert all("TTL" not in e for e in engines.values())
    finally:
        s.close()
    s = open_store(store_url, retention_days=0)  # turning retention off removes the TTL again
    try:
        s.ensure_schema()
        engines = dict(
            s.query("SELECT name, engine_full FROM system.tables WHERE database = {db:String}", {"db": s.database})
        )
        assert all("TTL" not in e for e in engines.values())
    finally:
        s.close()


def test_one_store_shared_by_threads(store) -> None:
    """The worker's store thread and the in-stream alert agent may share one store object."""
    from concurrent.futures import ThreadPoolExecutor

    t0 = utcnow() - timedelta(seconds=30)

    def work(n: int) -> dict[str, int]:
        store.insert_scored([make_item(f"{n}-{i}", ingested_at=t0 + timedelta(milliseconds=i)) for i in range(50)])
        store.top_negative(limit=5)
        return store.count()

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(work, range(8)))
    assert store.count() == {"rows": 400, "unique_ids": 400}


def test_bad_sql_is_a_store_error_not_unavailable(store) -> None:
    from finsent.stream.store import StoreUnavailable

    with pytest.raises(StoreError) as info:
        store.query("SELECT no_such_column FROM system.one")
    assert not isinstance(info.value, StoreUnavailable)
    assert store.query("SELECT 1") == [(1,)]  # still usable afterwards
