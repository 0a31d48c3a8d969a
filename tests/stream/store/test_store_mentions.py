"""Mentions (one row per (item, entity)) and event time, on both engines: clickhouse-server 18.16 and chdb.

Exactly-once holds for mentions as for items: a redelivered batch, the same item on another day, and a rescore
(which rewrites the item's mentions and tombstones the entities it no longer finds) all leave one current row per
(item, entity key).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from finsent.core.events import EntityMention, RawItem, ScoredItem, utcnow
from finsent.stream.store import open_store, schema
from finsent.stream.store.schema.rows import entity_key

pytestmark = pytest.mark.integration

NEG = {"negative": 0.9, "neutral": 0.05, "positive": 0.05}
POS = {"negative": 0.05, "neutral": 0.05, "positive": 0.9}
NEU = {"negative": 0.1, "neutral": 0.8, "positive": 0.1}
PROBS = {"negative": NEG, "positive": POS, "neutral": NEU}


def ent(name: str, sentiment: str = "negative", entity_id: str | None = None, relevance: int = 80) -> EntityMention:
    return EntityMention(
        text=name,
        start=0,
        end=len(name),
        sentiment=sentiment,
        sentiment_probs=PROBS[sentiment],
        entity_id=entity_id,
        name=name.casefold() if entity_id is None else name,
        relevance=relevance,
    )


def scored(
    i: int | str,
    entities: tuple[EntityMention, ...],
    *,
    sentiment: str = "negative",
    topic: str = "macro",
    ingested_at: datetime | None = None,
    published_at: datetime | None = None,
    scored_at: datetime | None = None,
    source: str = "feed",
    model_version: str = "m1",
    title: str | None = None,
) -> ScoredItem:
    item = RawItem(
        id=f"it-{i}",
        source=source,
        source_type="news",
        text=f"text {i}",
        title=title or f"title {i}",
        url=f"https://x/{i}",
        ingested_at=ingested_at or utcnow(),
        published_at=published_at,
    )
    return ScoredItem(
        item=item,
        sentiment=sentiment,
        sentiment_probs=PROBS[sentiment],
        topic=topic,
        topic_prob=0.9,
        model_version=model_version,
        scored_at=scored_at or utcnow(),
        entities=entities,
    )


@pytest.fixture(params=["clickhouse", "chdb"])
def store(request: pytest.FixtureRequest) -> Iterator:
    s = open_store(request.getfixturevalue(f"{request.param}_db_url"))
    s.ensure_schema()
    yield s
    s.close()


def _mentions(store, key: str | None = None) -> list[tuple]:
    rows = store.query(
        f"SELECT item_id, entity_key, sentiment, version FROM (SELECT * FROM {store.database}.mentions "
        "FINAL) WHERE deleted = 0 ORDER BY item_id, entity_key"
    )
    return [r for r in rows if key is None or r[1] == key]


def test_entity_key() -> None:
    assert entity_key("AAPL", "Apple") == "AAPL"
    assert entity_key(None, "FTX Trading Ltd.") == "name:ftx trading"
    assert entity_key(None, "celsius") == "name:celsius"


def test_mentions_table_on_both_engines(store) -> None:
    db = {"db": store.database}
    tables = dict(store.query("SELECT name, engine FROM system.tables WHERE database = {db:String}", db))
    assert tables["mentions"] == "ReplacingMergeTree"
    cols = {
        c
        for t, c in store.query("SELECT table, name FROM system.columns WHERE database = {db:String}", db)
        if t == "items"
    }
    assert "event_time" in cols


def test_mentions_idempotent_across_days_and_redelivery(store) -> None:
    now = utcnow()
    apple, ftx = ent("Apple", entity_id="AAPL"), ent("FTX")
    first = scored(1, (apple, ftx), ingested_at=now - timedelta(days=40), scored_at=now - timedelta(days=40))
    store.insert_scored([first])
    store.insert_scored([first])  # redelivery of the same batch
    # the same item on another day and month (a replay re-run): one row per (item, entity) still
    again = scored(1, (apple, ftx), ingested_at=now, scored_at=now)
    store.insert_scored([again, again])
    rows = _mentions(store)
    assert [(r[0], r[1]) for r in rows] == [("it-1", "AAPL"), ("it-1", "name:ftx")]
    assert store.count()["rows"] == 1
    # the physical rows exist (it is FINAL that collapses them), so the test would see a broken key
    physical = store.query(f"SELECT count() FROM {store.database}.mentions")[0][0]
    assert physical >= 4


def test_rescore_rewrites_mentions(store) -> None:
    t0 = utcnow() - timedelta(hours=2)
    store.insert_scored([scored(1, (ent("Apple", "negative", "AAPL"), ent("FTX"))), scored(2, (ent("Celsius"),))])
    # a newer model: Apple turns positive, FTX is no longer found, Genesis is new
    new = scored(
        1,
        (ent("Apple", "positive", "AAPL"), ent("Genesis")),
        scored_at=utcnow() + timedelta(seconds=1),
        ingested_at=t0,
        model_version="m2",
    )
    store.insert_scored([new], replace_mentions=True)
    rows = _mentions(store)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("it-1", "AAPL", "positive"),
        ("it-1", "name:genesis", "negative"),
        ("it-2", "name:celsius", "negative"),
    ]
    assert store.top_entities(timedelta(days=1), limit=10)[0]["buzz"] == 1
    assert {e["entity_key"] for e in store.top_entities(timedelta(days=1))} == {"AAPL", "name:genesis", "name:celsius"}
    # without replace_mentions (the worker) the dropped entity would stay: the flag is what removes it
    store.insert_scored([scored(3, (ent("FTX"),))])
    store.insert_scored([scored(3, (), scored_at=utcnow() + timedelta(seconds=2))])
    assert _mentions(store, "name:ftx") == [("it-3", "name:ftx", "negative", _mentions(store, "name:ftx")[0][3])]


def test_event_time_is_published_else_ingested(store) -> None:
    now = utcnow().replace(microsecond=0)
    published = now - timedelta(days=300)
    store.insert_scored([scored(1, (ent("FTX"),), published_at=published), scored(2, (ent("FTX"),))])
    rows = dict(store.query(f"SELECT id, event_time FROM {store.database}.items FINAL"))
    assert rows["it-1"].astimezone(UTC) == published
    assert abs((rows["it-2"].astimezone(UTC) - now).total_seconds()) <= 2
    # series and listings are on event time: the back-dated item is in its own month, not in the last hour
    assert [i["id"] for i in store.list_items(timedelta(hours=1))] == ["it-2"]
    assert [i["id"] for i in store.list_items(published - timedelta(hours=1), published + timedelta(hours=1))] == [
        "it-1"
    ]
    series = store.entity_series("name:ftx", timedelta(days=400), bucket_s=86400)
    assert [s["buzz"] for s in series] == [1, 1]
    assert series[0]["bucket"] == published.replace(hour=0, minute=0, second=0)
    assert sum(tc.total for tc in store.topic_counts(timedelta(hours=1), bucket_s=3600)) == 1


def test_entity_queries(store) -> None:
    now = utcnow().replace(microsecond=0, second=0, minute=0) - timedelta(hours=3)
    items = [
        scored(
            1,
            (ent("FTX", "negative", relevance=100), ent("Apple", "positive", "AAPL", 50)),
            published_at=now,
            source="a",
            topic="crypto",
            sentiment="negative",
        ),
        scored(
            2,
            (ent("FTX", "negative", relevance=60),),
            published_at=now + timedelta(minutes=10),
            source="b",
            topic="crypto",
        ),
        scored(
            3,
            (ent("FTX", "positive", relevance=100),),
            published_at=now + timedelta(hours=1),
            source="a",
            topic="markets",
            sentiment="positive",
        ),
        scored(
            4,
            (ent("Apple", "neutral", "AAPL", 100),),
            published_at=now,
            source="a",
            topic="markets",
            sentiment="neutral",
        ),
    ]
    store.insert_scored(items)
    series = store.entity_series("name:ftx", timedelta(days=1), bucket_s=3600)
    assert [(s["bucket"], s["buzz"], s["negative"], s["positive"], s["sources"]) for s in series] == [
        (now, 2, 2, 0, 2),
        (now + timedelta(hours=1), 1, 0, 1, 1),
    ]
    assert series[0]["net_sentiment"] == -1.0 and series[1]["net_sentiment"] == 1.0
    top = store.top_entities(timedelta(days=1))
    assert [(t["entity_key"], t["buzz"]) for t in top] == [("name:ftx", 3), ("AAPL", 2)]
    assert top[1]["entity_id"] == "AAPL" and top[0]["entity_id"] is None
    # net: (50 * +1 + 100 * 0) / 150
    assert top[1]["net_sentiment"] == round(50 / 150, 4)
    assert [t["entity_key"] for t in store.top_entities(timedelta(days=1), limit=1)] == ["name:ftx"]
    assert [(t["entity_key"], t["buzz"]) for t in store.top_entities(timedelta(days=1), sentiment="positive")] == [
        ("AAPL", 1),
        ("name:ftx", 1),
    ]
    stories = store.entity_stories("name:ftx", timedelta(days=1), limit=2)
    assert [(s["item_id"], s["title"], s["url"]) for s in stories] == [
        ("it-3", "title 3", "https://x/3"),
        ("it-1", "title 1", "https://x/1"),
    ]
    assert store.entity_exists("name:ftx") and not store.entity_exists("name:nobody")
    listing = store.list_items(timedelta(days=1), entity_key="name:ftx")
    assert [i["id"] for i in listing] == ["it-3", "it-2", "it-1"]
    assert [
        i["id"]
        for i in store.list_items(
            timedelta(days=1), entity_key="name:ftx", topic="crypto", sentiment="negative", limit=1
        )
    ] == ["it-2"]
    assert [i["id"] for i in store.list_items(timedelta(days=1), entity_key="AAPL")] == ["it-1", "it-4"]
    assert store.list_items(timedelta(days=1), sentiment="positive")[0]["id"] == "it-3"
    hist_items, hist_mentions = store.mention_history(now - timedelta(hours=1), now + timedelta(hours=2))
    assert [i["id"] for i in hist_items] == ["it-1", "it-4", "it-2", "it-3"]
    assert len(hist_mentions) == 5


def test_entity_alerts_round_trip(store) -> None:
    from finsent.core.events import Alert

    t = datetime(2023, 1, 19, 22, tzinfo=UTC)
    ent_alert = Alert(
        topic="",
        fired_at=t,
        window_start=t - timedelta(hours=6),
        window_end=t,
        negative=9,
        total=12,
        negative_share=0.75,
        baseline_share=0.1,
        score=7.5,
        detector="entity_surge",
        kind="entity",
        entity_id=None,
        entity_name="genesis",
        evidence={"sources": ["CoinDesk", "Decrypt"], "headlines": [{"title": "Genesis files"}]},
    )
    topic_alert = Alert(
        topic="macro",
        fired_at=t,
        window_start=t - timedelta(minutes=5),
        window_end=t,
        negative=5,
        total=6,
        negative_share=0.8,
        baseline_share=0.2,
        score=3.0,
        detector="ewma_z",
    )
    store.insert_alerts([ent_alert, topic_alert])
    rows = {a["kind"]: a for a in store.alerts()}
    e = rows["entity"]
    assert (e["entity_name"], e["entity_id"], e["topic"], e["at"], e["sentiment"]) == (
        "genesis",
        None,
        None,
        t,
        "negative",
    )
    assert e["evidence"]["sources"] == ["CoinDesk", "Decrypt"]
    assert rows["topic"]["topic"] == "macro" and rows["topic"]["entity_name"] is None
    assert [a["kind"] for a in store.alerts(kind="entity")] == ["entity"]
    assert [a["kind"] for a in store.alerts(kind="topic")] == ["topic"]
    with pytest.raises(ValueError):
        store.alerts(kind="nope")


def test_old_tables_get_new_columns(store) -> None:
    """A database created before issue 26 (items without event_time, alerts without kind) is migrated at start."""
    db = store.database
    store.query(f"ALTER TABLE {db}.items DROP COLUMN event_time")
    store.query(f"ALTER TABLE {db}.alerts DROP COLUMN evidence")
    old = scored(1, (), published_at=datetime(2022, 11, 9, tzinfo=UTC))
    store._insert(f"{db}.items", schema.ITEM_COLUMNS, [schema.scored_row(old)])
    store.ensure_schema()
    assert store.query(f"SELECT event_time FROM {db}.items FINAL")[0][0].astimezone(UTC) == datetime(
        2022, 11, 9, tzinfo=UTC
    )
    store.ensure_schema()  # idempotent: nothing left to add


class _Pred:
    def __init__(self, entities: tuple[EntityMention, ...]) -> None:
        self.sentiment, self.sentiment_probs, self.topic, self.topic_prob = "positive", POS, "markets", 0.8
        self.truncated, self.entities = False, entities


class _NamesClassifier:
    """A stand-in model for the rescore wiring: every capitalised word of the text is a positive entity."""

    version = "m2"

    def predict(self, texts: list[str], titles: list[str | None] | None = None) -> list[_Pred]:
        return [_Pred(tuple(ent(w, "positive") for w in t.split() if w[:1].isupper())) for t in texts]


@pytest.mark.parametrize("engine", ["clickhouse", "chdb"])
def test_finsent_rescore_rewrites_mentions(engine: str, request: pytest.FixtureRequest, tmp_path) -> None:
    from finsent.core.settings import load_settings
    from finsent.stream.rescore import rescore

    url = request.getfixturevalue(f"{engine}_db_url")
    store = open_store(url)
    try:
        store.ensure_schema()
        now = utcnow() - timedelta(minutes=5)
        old = [
            scored(1, (ent("FTX"), ent("Genesis")), ingested_at=now, scored_at=now),
            scored(2, (ent("Celsius"),), ingested_at=now, scored_at=now),
        ]
        old = [
            ScoredItem(
                item=RawItem(id=s.id, source="feed", source_type="news", text=text, ingested_at=now),
                sentiment="negative",
                sentiment_probs=NEG,
                topic="crypto",
                topic_prob=0.9,
                model_version="m1",
                scored_at=now,
                entities=s.entities,
            )
            for s, text in zip(old, ["Genesis files while Voyager waits", "nothing named here"], strict=True)
        ]
        store.insert_scored(old)
        settings = load_settings(store=url, cache_dir=str(tmp_path / "cache"))
        result = rescore(settings, timedelta(hours=1), classifier=_NamesClassifier(), progress=None)
        assert result["done"] == 2
        rows = _mentions(store)
        # FTX and Celsius are no longer found (tombstoned), Genesis is rewritten positive, Voyager is new
        assert [(r[0], r[1], r[2]) for r in rows] == [
            ("it-1", "name:genesis", "positive"),
            ("it-1", "name:voyager", "positive"),
        ]
        assert {e["entity_key"] for e in store.top_entities(timedelta(days=1))} == {"name:genesis", "name:voyager"}
    finally:
        store.close()


def test_cluster_ddl_and_migration_cover_mentions() -> None:
    caps = schema.Capabilities((18, 16))
    stmts = schema.create_statements("db", caps, 0, "c1")
    local = [s for s in stmts if "db.mentions_local ON CLUSTER c1" in s]
    dist = [s for s in stmts if "db.mentions ON CLUSTER c1" in s]
    assert len(local) == 1 and "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db/mentions'" in local[0]
    assert "ORDER BY (entity_key, item_id)" in local[0] and "PARTITION BY" not in local[0]
    assert len(dist) == 1 and "Distributed(c1, db, mentions_local, cityHash64(item_id))" in dist[0]
    # an items table from before issue 26, on a cluster: the column is added to the local and Distributed tables
    old = {name for name, _ in schema.TABLE_SPECS["items"].all_columns} - {"event_time"}
    got = schema.missing_column_statements("db", {"items_local": old, "items": old}, "c1")
    assert got == [
        f"ALTER TABLE db.{t} ON CLUSTER c1 ADD COLUMN event_time {schema.EVENT_TIME_DEFAULT}"
        for t in ("items_local", "items")
    ]
    assert schema.missing_column_statements("db", {}, None) == []  # nothing exists yet: CREATE makes it whole
