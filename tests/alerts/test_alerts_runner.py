"""AlertRunner over a real store (chdb and clickhouse-server): stored counts -> detector -> alerts table."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from finsent.alerts.detector import make_detector
from finsent.alerts.runner import AlertRunner, floor_time
from finsent.core.events import RawItem, ScoredItem, utcnow
from finsent.core.settings import load_settings
from finsent.stream.store import open_store

pytestmark = pytest.mark.integration


def _item(i: int, topic: str, negative: bool, at) -> ScoredItem:
    raw = RawItem(
        id=f"{topic}-{i}",
        source="test",
        source_type="news",
        text=f"{topic} headline {i}",
        title=f"{topic} headline {i}",
        ingested_at=at,
    )
    sent = "negative" if negative else "neutral"
    return ScoredItem(
        raw,
        sent,
        {"negative": 0.9 if negative else 0.05, "neutral": 0.1, "positive": 0.0},
        topic,
        0.9,
        "test-model",
        at,
    )


def _history(now, minutes: int, spike_last: int) -> list[ScoredItem]:
    """banking: 20 items/min at 10 % negative, 60 % over the last ``spike_last`` minutes; crypto: 50 % always."""
    rng = np.random.default_rng(7)
    items, i = [], 0
    start = floor_time(now, 60) - timedelta(minutes=minutes)
    for m in range(minutes):
        t = start + timedelta(minutes=m, seconds=1)
        for topic, p in (("banking", 0.6 if m >= minutes - spike_last else 0.1), ("crypto", 0.5)):
            for _ in range(20):
                items.append(_item(i, topic, bool(rng.random() < p), t + timedelta(seconds=float(rng.random() * 58))))
                i += 1
    return items


@pytest.mark.parametrize("engine", ["chdb", "clickhouse"])
def test_runner_raises_the_spike_once_from_stored_counts(engine, request):
    url = request.getfixturevalue("chdb_db_url" if engine == "chdb" else "clickhouse_db_url")
    store = open_store(url)
    try:
        store.ensure_schema()
        now = utcnow()
        items = _history(now, minutes=150, spike_last=6)
        store.insert_scored(items)
        store.insert_scored(items[:500])  # a redelivery: counts are distinct items, nothing changes
        runner = AlertRunner(store, make_detector(load_settings().alerts), 60, lookback=timedelta(hours=3))
        alerts = runner.poll(now + timedelta(seconds=60))
        assert [a.topic for a in alerts] and {a.topic for a in alerts} == {"banking"}
        first = alerts[0]
        assert first.severity == "warning" and first.detector == "ewma_z"
        assert first.window_end >= floor_time(now, 60) - timedelta(minutes=6)
        assert first.negative_share > 0.3 and 0.05 < first.baseline_share < 0.15
        stored = store.alerts(since=timedelta(hours=4))
        assert {a.id for a in alerts} <= {r["id"] for r in stored}
        assert runner.poll(now + timedelta(seconds=61)) == []  # nothing new: no window closed since
        # a fresh runner replaying the same history raises the same alerts (stable ids): the store keeps one row
        again = AlertRunner(store, make_detector(load_settings().alerts), 60, lookback=timedelta(hours=3))
        assert [a.id for a in again.poll(now + timedelta(seconds=60))] == [a.id for a in alerts]
        assert len(store.alerts(since=timedelta(hours=4))) == len(stored)
    finally:
        store.close()


def test_runner_rejects_a_window_mismatch():
    with pytest.raises(ValueError, match="window_s"):
        AlertRunner(store=None, detector=make_detector(load_settings().alerts), window_s=30)  # type: ignore[arg-type]


def test_watch_once_prints_and_stores_the_spike(clickhouse_db_url, capsys):
    from finsent.cli import main

    store = open_store(clickhouse_db_url)
    try:
        store.ensure_schema()
        store.insert_scored(_history(utcnow(), minutes=150, spike_last=6))
    finally:
        store.close()
    assert main(["--store", clickhouse_db_url, "alerts", "watch", "--once"]) == 0
    out = capsys.readouterr().out
    assert "WARNING  banking:" in out and "crypto" not in out
    store = open_store(clickhouse_db_url)
    try:
        assert {r["topic"] for r in store.alerts(since=timedelta(hours=4))} == {"banking"}
    finally:
        store.close()


class _FlakyStore:
    """A fake for the pure retry logic: counts from a list, insert_alerts fails once."""

    def __init__(self, rows):
        self.rows, self.inserted, self.fail = rows, [], True

    def topic_counts(self, since, bucket_s=60, until=None):
        return [r for r in self.rows if r.bucket + timedelta(seconds=bucket_s) <= until]

    def insert_alerts(self, alerts):
        from finsent.core.errors import StoreUnavailable

        if self.fail:
            self.fail = False
            raise StoreUnavailable("server down")
        self.inserted += list(alerts)
        return len(alerts)


def test_alerts_refused_by_the_store_are_retried_not_lost():
    from finsent.core.store import TopicCounts

    now = floor_time(utcnow(), 60)
    rows = [TopicCounts(now - timedelta(minutes=m), "banking", 20, 12 if m <= 5 else 2, 0, 0) for m in range(1, 150)]
    store = _FlakyStore(rows)
    runner = AlertRunner(store, make_detector(load_settings().alerts), 60, lookback=timedelta(hours=3))  # type: ignore[arg-type]
    alerts = runner.poll(now + timedelta(seconds=10))
    assert alerts and store.inserted == [] and runner.unstored == alerts
    runner.poll(now + timedelta(seconds=70))  # the next poll retries the refused alerts first
    assert [a.id for a in store.inserted][: len(alerts)] == [a.id for a in alerts] and runner.unstored == []
