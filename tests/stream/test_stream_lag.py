"""Issue 22, item 11: ``finsent_consumer_lag_messages`` tells the true backlog while the worker does not fetch.

The real worker (tiny model, chdb) on the real Tansu broker: once it has stored a first burst, fetching is
paused (what backpressure does: Faust stops asking for the partitions) and N messages are produced in
bursts. The consumer's highwater freezes at what the last fetch saw (the old gauge said 200 for 2,000 here); the
gauge must still show the backlog, within 5% of N, within two lag intervals -- and go back to 0 once the worker
caught up.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from finsent.stream.lag import LAG_INTERVAL_S
from finsent.stream.service import WorkerThread
from finsent.stream.store import open_store
from finsent.stream.worker import WorkerStats
from tests.stream_helpers import make_items, produce_items, stream_settings, wait_for

pytestmark = pytest.mark.integration

N = 2000
TAIL = 10


def _single_record_tail(s, n: int) -> None:  # noqa: ANN001 - Settings
    """End the backlog with one-record batches, round-robin over the partitions. Why: Tansu answers
    ListOffsets(latest) with the base offset of a partition's last record batch + 1 (measured: after a
    100-record batch at offsets 11..110 it says 12), so a big last batch would hide itself from any
    end-offset lag on Tansu; with one-record batches last its answer is exact. Real Kafka is exact anyway."""
    from finsent.stream.kafka import make_producer

    producer = make_producer(s.kafka, client_id="lag-tail")
    try:
        for i, item in enumerate(make_items(n, "tail")):
            producer.send(
                s.kafka.topic_raw, key=item.id.encode(), value=item.to_json(), partition=i % s.kafka.partitions
            )
            producer.flush(timeout=30)
    finally:
        producer.close()


def _lag(reg: CollectorRegistry, topic: str) -> float:
    return sum(
        s.value
        for m in reg.collect()
        if m.name == "finsent_consumer_lag_messages"
        for s in m.samples
        if s.labels.get("kafka_topic") == topic
    )


def test_lag_gauge_counts_a_backlog_the_worker_does_not_fetch(
    kafka_bootstrap: str, chdb_db_url: str, unique_name: str, tmp_path: Path
) -> None:
    from finsent.models.testing import make_tiny_model

    tiny = make_tiny_model(tmp_path / "tiny")
    s = stream_settings(
        kafka_bootstrap,
        chdb_db_url,
        unique_name,
        partitions=2,
        model_dir=str(tiny),
        registry="",
        batch_max=32,
        batch_within_s=0.05,
    )
    metrics = CollectorRegistry()
    store = open_store(chdb_db_url)
    store.ensure_schema()
    stats = WorkerStats()
    try:
        with WorkerThread(s, store=store, registry=metrics, stats=stats) as w:
            scorer = w.scorer
            produce_items(s, make_items(40, "first"))
            wait_for(lambda: stats.snapshot()["stored"] >= 40, 90, "the first 40 stored")
            consumer = scorer.consumer
            tps = {tp for tp in consumer.assignment() if tp.topic == s.kafka.topic_raw}
            assert len(tps) == 2
            loop = w._loop
            assert loop is not None
            loop.call_soon_threadsafe(consumer.pause_partitions, tps)  # the worker stops fetching
            time.sleep(0.5)
            assert (N - TAIL) % 10 == 0
            for k in range(10):  # the backlog grows in bursts, after the fetcher's last look
                produce_items(s, make_items((N - TAIL) // 10, f"backlog{k}"))
                time.sleep(0.2)
            _single_record_tail(s, TAIL)
            refreshes = scorer.lag.refreshes
            wait_for(lambda: scorer.lag.refreshes >= refreshes + 2, 4 * LAG_INTERVAL_S, "two lag refreshes")
            lag = _lag(metrics, s.kafka.topic_raw)
            stale = sum(
                max((consumer.highwater(tp) or 0) - scorer.stored_offsets.get((tp.topic, tp.partition), -1) - 1, 0)
                for tp in tps
            )
            assert stats.snapshot()["stored"] == 40  # nothing of the backlog was taken
            assert abs(lag - N) <= 0.05 * N, f"lag gauge {lag} for a backlog of {N} (stale highwater said {stale})"
            loop.call_soon_threadsafe(consumer.resume_partitions, tps)
            wait_for(lambda: stats.snapshot()["stored"] >= 40 + N, 120, "the backlog stored")
            refreshes = scorer.lag.refreshes
            wait_for(lambda: scorer.lag.refreshes >= refreshes + 1, 4 * LAG_INTERVAL_S, "a lag refresh")
            scorer.refresh_lag()
            assert _lag(metrics, s.kafka.topic_raw) == 0
    finally:
        store.close()
    print(f"lag gauge {lag:.0f} for a backlog of {N}; the stale-highwater formula said {stale}")
