"""Issue 22, item 9: an item that arrives on several days is ONE row, on both engines.

Before the fix ``items`` was ordered by ``(toStartOfDay(ingested_at), id)`` in monthly partitions, so FINAL
collapsed an id only within one day: one id sent on three days gave 3 rows. Checked on Debian's
clickhouse-server 18.16 and on chdb (ClickHouse 26): the count, the queries that read ``items FINAL``, TTL
retention (where the server has TTL), and the WARNING + rebuild statements for a database of the old layout.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from finsent.core.events import utcnow
from finsent.stream.store import open_store, schema
from tests.stream.store.test_store_engines import make_item

pytestmark = pytest.mark.integration


@pytest.fixture(params=["clickhouse", "chdb"])
def store_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_db_url")


@pytest.fixture
def store(store_url: str) -> Iterator:
    s = open_store(store_url)
    s.ensure_schema()
    yield s
    s.close()


def _days_apart() -> list[datetime]:
    """Three arrivals of one item: 70 and 35 days ago and now -- three days, three calendar months."""
    now = utcnow().replace(microsecond=0)
    return [now - timedelta(days=70, hours=3), now - timedelta(days=35, hours=1), now - timedelta(seconds=5)]


def test_one_id_on_three_days_and_months_is_one_row(store) -> None:
    arrivals = _days_apart()
    assert len({(t.year, t.month) for t in arrivals}) == 3 and len({t.date() for t in arrivals}) == 3
    for k, at in enumerate(arrivals):  # a replay re-run, a retry across midnight, another push replica
        store.insert_scored(
            [
                make_item(
                    "x",
                    sentiment=("negative", "neutral", "positive")[k],
                    topic="macro",
                    ingested_at=at,
                    scored_at=at + timedelta(seconds=1),
                )
            ]
        )
    store.insert_scored([make_item("y", ingested_at=arrivals[-1])])
    assert store.count(physical=True) == {"rows": 2, "unique_ids": 2, "physical_rows": 4}
    assert store.count(since=timedelta(days=40)) == {"rows": 2, "unique_ids": 2}
    assert store.count(since=timedelta(days=100)) == {"rows": 2, "unique_ids": 2}
    # the newest arrival's row is the one every query sees
    rows = store.query(f"SELECT id, sentiment FROM {store.database}.items FINAL ORDER BY id")
    assert rows == [("item-x", "positive"), ("item-y", "negative")]
    counts = store.topic_counts(timedelta(days=100), bucket_s=86400)
    assert sum(c.total for c in counts) == 2 and sum(c.negative for c in counts) == 1
    assert [r["id"] for r in store.top_negative(since=timedelta(days=100), limit=10)] == ["item-y"]


def test_items_layout_is_one_partition_sorted_by_id(store) -> None:
    [(engine_full,)] = store.query(
        "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = 'items'", {"db": store.database}
    )
    assert "ORDER BY id" in engine_full and "PARTITION BY" not in engine_full, engine_full
    assert schema.layout_warnings(store.database, {"items": engine_full}) == []


def test_ttl_retention_still_works_without_time_partitions(chdb_db_url: str) -> None:
    """chdb is ClickHouse 26 (TTL since 19.6): an expired row goes in a merge; an id's newer arrival stays."""
    store = open_store(chdb_db_url, retention_days=30)
    store.ensure_schema()
    try:
        [(engine_full,)] = store.query(
            "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = 'items'",
            {"db": store.database},
        )
        assert f"TTL {schema.ttl_expression(schema.ITEMS, 30)}" in engine_full
        old, now = utcnow() - timedelta(days=100), utcnow() - timedelta(seconds=5)
        store.insert_scored(
            [make_item("gone", ingested_at=old, scored_at=old), make_item("back", ingested_at=old, scored_at=old)]
        )
        store.insert_scored(
            [
                make_item("back", ingested_at=now, sentiment="neutral", scored_at=now),
                make_item("fresh", ingested_at=now, scored_at=now),
            ]
        )
        store.query(f"OPTIMIZE TABLE {store.database}.items FINAL")
        assert store.count(physical=True) == {"rows": 2, "unique_ids": 2, "physical_rows": 2}
        rows = store.query(f"SELECT id, sentiment FROM {store.database}.items ORDER BY id")
        assert rows == [("item-back", "neutral"), ("item-fresh", "negative")]
    finally:
        store.close()


def test_a_database_of_the_old_layout_is_warned_about_and_the_statements_rebuild_it(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(store_url)
    try:
        caps, db = store.capabilities, store.database
        spec = schema.TABLE_SPECS[schema.ITEMS]
        old = replace(  # as finsent created it before issues 22 and 26: day-prefixed key, no event_time
            spec,
            order_by="(toStartOfDay(ingested_at), id)",
            partition_by="toYYYYMM(ingested_at)",
            default_columns=tuple(c for c in spec.default_columns if c[0] != "event_time"),
        )
        assert "event_time" not in {n for n, _ in old.all_columns}
        store.query(f"CREATE DATABASE IF NOT EXISTS {db}")
        for stmt in schema.table_statements(old, db, caps):
            store.query(stmt)
        caplog.set_level(logging.WARNING)
        store.ensure_schema()
        [(engine_full,)] = store.query(
            "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = 'items'", {"db": db}
        )
        [warning] = schema.layout_warnings(db, {"items": engine_full})
        # once, on every engine (18.16 has no TTL: the check used to ride on the TTL alignment and never ran there)
        warned = [r.getMessage() for r in caplog.records if "layout from before issue 22" in r.getMessage()]
        assert warned == [f"store: {warning}"], warned
        for k, at in enumerate(_days_apart()):
            store.insert_scored([make_item("x", ingested_at=at, scored_at=at + timedelta(seconds=k))])
        assert store.count()["rows"] == 3  # the defect, on the old layout
        statements = re.search(r"run: (.*); then start a worker", warning).group(1).split("; ")
        assert len(statements) == 4
        for stmt in statements:
            store.query(stmt)
        store.ensure_schema()  # re-creates the view on the new table
        store.query(f"DROP TABLE {db}.items_old")
        assert store.count() == {"rows": 1, "unique_ids": 1}
        t = datetime.now(UTC) - timedelta(seconds=2)
        store.insert_scored([make_item("z", ingested_at=t, scored_at=t)])
        # the view feeds again: z counted next to x's newest arrival (counted before the rebuild)
        assert sum(c.total for c in store.topic_minute_counts(timedelta(minutes=5))) == 2
    finally:
        store.close()


def test_cluster_ddl_collapses_an_id_across_days_on_its_shard(clickhouse_cluster) -> None:
    """ZooKeeper + two 18.16 shards: the Distributed ``items`` over ``items_local`` (ORDER BY id, one partition)."""
    import uuid

    db = "d_" + uuid.uuid4().hex[:10]
    store = open_store(clickhouse_cluster.url(db), cluster=clickhouse_cluster.name)
    try:
        store.ensure_schema()
        [(engine_full,)] = store.query(
            "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = 'items_local'", {"db": db}
        )
        assert "ORDER BY id" in engine_full and "PARTITION BY" not in engine_full
        for k, at in enumerate(_days_apart()):
            store.insert_scored(
                [make_item(f"c{i}", ingested_at=at, scored_at=at + timedelta(seconds=k)) for i in range(20)]
            )
        assert store.count(physical=True) == {"rows": 20, "unique_ids": 20, "physical_rows": 60}
    finally:
        store.query(f"DROP DATABASE IF EXISTS {db} ON CLUSTER {clickhouse_cluster.name}")
        store.close()
