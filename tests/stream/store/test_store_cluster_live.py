"""Cluster mode for real: ZooKeeper + two clickhouse-server 18.16 shards, through the real store.

The schema is created ON CLUSTER by ``ensure_schema`` (twice: it must be idempotent), items go in
through the Distributed ``items`` table with redeliveries and re-scores mixed in, and then each
node is asked what it holds: every id lives on exactly one shard (the cityHash64(id) sharding
key), both shards hold some, and every store query sees each id once with its newest score.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import pytest

from finsent.core.events import Alert, ScoredItem, utcnow
from finsent.stream.store import open_store
from tests.fixtures.clickhouse_cluster import Cluster
from tests.stream_helpers import make_items

pytestmark = pytest.mark.integration

N = 1000


@pytest.fixture
def cluster_db(clickhouse_cluster: Cluster) -> Iterator[str]:
    db = "c_" + uuid.uuid4().hex[:10]
    yield db
    store = open_store(clickhouse_cluster.url("default"))
    try:
        store.query(f"DROP DATABASE IF EXISTS {db} ON CLUSTER {clickhouse_cluster.name}")  # type: ignore[attr-defined]
    finally:
        store.close()


def _scored(sentiment: str, prefix: str = "c") -> list[ScoredItem]:
    return [
        ScoredItem(
            item=it,
            sentiment=sentiment,
            sentiment_probs={sentiment: 1.0},
            topic=f"t{i % 3}",
            topic_prob=0.9,
            model_version="m1",
        )
        for i, it in enumerate(make_items(N, prefix))
    ]


def test_schema_on_cluster_and_each_id_stored_once_across_shards(clickhouse_cluster: Cluster, cluster_db: str) -> None:
    store = open_store(clickhouse_cluster.url(cluster_db), cluster=clickhouse_cluster.name)
    try:
        store.ensure_schema()
        store.ensure_schema()  # every start of every worker runs it
        first = _scored("neutral")
        store.insert_scored(first)
        store.insert_scored(first[:300])  # a redelivered batch
        later = utcnow() + timedelta(seconds=1)
        rescored = [
            replace(s, sentiment="negative", sentiment_probs={"negative": 1.0}, scored_at=later) for s in first[:100]
        ]
        store.insert_scored(rescored)  # a newer model's verdict on 100 of them
        now = utcnow()
        store.insert_alerts(
            [
                Alert(
                    id="a1",
                    topic="t0",
                    fired_at=now,
                    window_start=now - timedelta(minutes=1),
                    window_end=now,
                    negative=5,
                    total=10,
                    negative_share=0.5,
                    baseline_share=0.1,
                    score=6.0,
                    detector="ewma_z",
                    severity="warning",
                )
            ]
        )

        counts = store.count(physical=True)
        assert counts == {"rows": N, "unique_ids": N, "physical_rows": N + 300 + 100}
        per_topic = store.topic_counts(timedelta(hours=1))
        assert sum(c.total for c in per_topic) == N
        assert sum(c.negative for c in per_topic) == 100
        assert sum(c.total for c in store.topic_minute_counts(timedelta(hours=1))) == N
        assert {d["id"] for d in store.top_negative(limit=N)} == {s.id for s in first[:100]}
        assert [a["id"] for a in store.alerts()] == ["a1"]
    finally:
        store.close()

    ids_per_node = []
    for node in clickhouse_cluster.nodes:
        local = open_store(node.url(cluster_db))
        try:
            engines = dict(local.query(f"SELECT name, engine FROM system.tables WHERE database = '{cluster_db}'"))
            ids = {r[0] for r in local.query(f"SELECT id FROM {cluster_db}.items_local FINAL")}
        finally:
            local.close()
        assert engines["items_local"] == "ReplicatedReplacingMergeTree"
        assert engines["topic_minute_local"] == "ReplicatedAggregatingMergeTree"
        assert engines["items"] == "Distributed"
        ids_per_node.append(ids)
    a, b = ids_per_node
    assert a and b, "both shards must hold some items"
    assert not a & b, "an id stored on both shards"
    assert len(a) + len(b) == N
