"""The in-stream detector inside the real worker (Tansu broker, chdb store), and its pure parts."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from prometheus_client import REGISTRY

from finsent.alerts.agent import WindowCloser, attach, window_counts
from finsent.core.events import RawItem, ScoredItem, decode_alert, utcnow
from finsent.stream.kafka import make_producer
from finsent.stream.store import open_store

UTC = timezone.utc  # noqa: UP017


def scored(i: int, topic: str, negative: bool, at: datetime) -> ScoredItem:
    item = RawItem(id=f"{topic}-{i}", source="test", source_type="news", text=f"item {i}", ingested_at=at)
    probs = (
        {"negative": 0.9, "neutral": 0.05, "positive": 0.05}
        if negative
        else {"negative": 0.05, "neutral": 0.9, "positive": 0.05}
    )
    return ScoredItem(item, "negative" if negative else "neutral", probs, topic, 0.9, "test-model", at)


def test_window_counts_bucket_by_ingested_at_and_skip_garbage():
    t = datetime(2026, 1, 5, 9, 0, 30, tzinfo=UTC)
    values = [
        scored(0, "a", True, t).to_json(),
        scored(1, "a", False, t).to_json(),
        scored(2, "a", True, t + timedelta(seconds=40)).to_json(),
        scored(3, "b", False, t).to_json(),
        b"not json",
        None,
    ]
    counts, bad = window_counts(values, 60)
    start = int(datetime(2026, 1, 5, 9, 0, tzinfo=UTC).timestamp())
    assert counts == {("a", start): [1, 2], ("a", start + 60): [1, 1], ("b", start): [0, 1]}
    assert bad == 2


def test_window_closer_releases_every_window_in_order_and_drops_late_counts():
    t0 = datetime(2026, 1, 5, 9, 0, 10, tzinfo=UTC)
    closer = WindowCloser(60, grace_s=2, now=t0)  # 9:00 is partial: the first window is 9:01-9:02
    s = int(datetime(2026, 1, 5, 9, 1, tzinfo=UTC).timestamp())
    closer.add("a", s - 60, 1, 5)  # the partial window: late
    closer.add("a", s, 1, 5)
    closer.add("a", s, 2, 5)  # partial counts from another worker's batch add up
    closer.add("b", s + 120, 0, 3)
    assert closer.close(datetime(2026, 1, 5, 9, 2, 1, tzinfo=UTC)) == []  # grace not over
    out = closer.close(datetime(2026, 1, 5, 9, 4, 5, tzinfo=UTC))
    assert [(e.strftime("%H:%M"), c) for e, c in out] == [
        ("09:02", {"a": (3, 10)}),
        ("09:03", {}),
        ("09:04", {"b": (0, 3)}),
    ]
    closer.add("a", s, 1, 1)
    assert closer.late == 6


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from finsent.models.runtime import Classifier
    from finsent.models.testing import make_tiny_model

    return Classifier.load(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def _gauge(name: str, topic: str) -> float | None:
    for metric in REGISTRY.collect():
        for s in metric.samples:
            if s.name == name and s.labels.get("topic") == topic:
                return s.value
    return None


@pytest.mark.integration
def test_worker_detects_a_spike_in_stream_and_publishes_stores_and_exports_it(
    kafka_bootstrap, chdb_db_url, unique_name, tiny_classifier
):
    from finsent.stream.service import WorkerThread
    from tests.stream_helpers import read_topic, stream_settings, wait_for

    topic_a, topic_b = f"bank{unique_name[:4]}", f"crypto{unique_name[:4]}"
    s = stream_settings(
        kafka_bootstrap, chdb_db_url, unique_name, alert_window_s=1, alert_short_s=3, alert_baseline_halflife_s=20
    )
    store = open_store(chdb_db_url)
    store.ensure_schema()
    producer = make_producer(s.kafka, client_id="test-scored")
    stop = threading.Event()
    share = {topic_a: 0.1, topic_b: 0.5}

    def produce() -> None:  # 100 items/s per topic, stamped now, stored then published as the scorer does
        i = 0
        while not stop.is_set():
            now = utcnow()
            batch = []
            for topic, p in list(share.items()):
                for k in range(10):
                    batch.append(scored(i, topic, k < round(10 * p), now))
                    i += 1
            store.insert_scored(batch)  # the alert's headlines and model version are read from the store
            for it in batch:
                producer.send(s.kafka.topic_scored, key=it.item.id.encode(), value=it.to_json())
            producer.flush()
            time.sleep(0.1)

    feeder = threading.Thread(target=produce, daemon=True)
    try:
        with WorkerThread(s, classifier=tiny_classifier, store=store, extensions=[attach]) as w:
            feeder.start()
            det = w.context.extensions.get("alerts").detector
            wait_for(
                lambda: topic_a in det.states() and det.states()[topic_a].baseline_share is not None,
                90,
                "the detector to see traffic and build a baseline",
            )
            time.sleep(3)
            assert w.context.extensions.get("alerts").alerts == [], "steady traffic must not alarm"
            share[topic_a] = 0.6
            t_spike = time.monotonic()
            wait_for(
                lambda: any(a.topic == topic_a for a in w.context.extensions.get("alerts").alerts), 30, "a spike alert"
            )
            print(f"\nin-stream detection: {time.monotonic() - t_spike:.1f} s after the spike (1 s windows)")
            alert = next(a for a in w.context.extensions.get("alerts").alerts if a.topic == topic_a)
            # the alerting window may straddle the onset (10% -> 60%): at least twice the baseline
            assert alert.negative_share > 0.2 and 0.05 < alert.baseline_share < 0.2
            wait_for(lambda: _gauge("finsent_negative_spike_active", topic_a) in (1.0, 2.0), 10, "the active gauge")
            assert _gauge("finsent_negative_spike_score", topic_a) >= 5.0
            assert _gauge("finsent_negative_spike_active", topic_b) == 0.0
            assert not any(a.topic == topic_b for a in w.context.extensions.get("alerts").alerts)
            wait_for(lambda: any(r["topic"] == topic_a for r in store.alerts()), 20, "the alert in the store")
            # the kept alert gains its evidence (headlines, model version) in the agent's thread just before it is
            # stored: read it again now, not as first seen (CI once compared the evidence-less first sighting)
            alert = next(a for a in w.context.extensions.get("alerts").alerts if a.topic == topic_a)
        rows = [r for r in store.alerts() if r["topic"] == topic_a]
        assert rows[0]["detector"] == "ewma_z" and rows[0]["id"] == alert.id
        # issue 25: the stored alert names the negative items of its window and the model that scored them
        assert rows[0]["model_version"] == alert.model_version == "test-model"
        heads = rows[0]["evidence"]["headlines"]
        assert heads and all(h["id"].startswith(topic_a + "-") and h["p_negative"] == 0.9 for h in heads)
    finally:
        stop.set()
        producer.close()
        store.close()  # chdb holds one data path per process: a failure here must not fail the later tests
    published = [decode_alert(r.value) for r in read_topic(s, s.kafka.topic_alerts, 1)]
    assert alert.id in {a.id for a in published}
    assert all(a.model_version == "test-model" and a.evidence["headlines"] for a in published)  # on the topic too
    assert all(a.topic == topic_a for a in published)


class _CountsStore:
    """A fake store for the pure priming logic: only ``topic_counts``."""

    def __init__(self, rows):
        self.rows = rows
        self.calls = []

    def topic_counts(self, since, bucket_s=60, until=None):
        self.calls.append((since, bucket_s, until))
        return [r for r in self.rows if r.bucket + timedelta(seconds=bucket_s) <= until]


def test_prime_warms_baselines_from_stored_counts_so_a_restart_is_not_blind():
    from finsent.alerts.agent import InStreamAlerts
    from finsent.core.settings import load_settings
    from finsent.core.store import TopicCounts

    now = utcnow()
    first = (int(now.timestamp()) // 60 + 1) * 60  # the closer's first live window starts here
    rows = [TopicCounts(datetime.fromtimestamp(first - 60 * (m + 1), UTC), "banking", 20, 2, 18, 0) for m in range(120)]
    store = _CountsStore(rows)
    state = InStreamAlerts(load_settings(), store_getter=lambda: store, sinks=[])
    state.closer.next_start = first
    assert state.prime() == 120
    st = state.detector.states()["banking"]
    assert st.baseline_share is not None and abs(st.baseline_share - 0.1) < 0.01
    # the first live windows can alarm at once: 60 % at 20 items/min
    t = datetime.fromtimestamp(first, UTC)
    for m in range(4):
        state.closer.add("banking", first + 60 * m, 12, 20)
    closed, alerts = state.tick(t + timedelta(minutes=4, seconds=5))
    assert closed == 4 and [a.topic for a in alerts] == ["banking"]


@pytest.mark.integration
def test_two_workers_split_topics_and_alert_each_spike_exactly_once(
    kafka_bootstrap, chdb_db_url, unique_name, tiny_classifier
):
    """Counts are re-keyed by topic, so each topic has one owner: two workers never both alarm on it."""
    from kafka.partitioner.default import murmur2

    from finsent.stream.service import WorkerThread
    from tests.stream_helpers import stream_settings, wait_for

    def partition(name: str) -> int:
        return (murmur2(name.encode()) & 0x7FFFFFFF) % 2

    names = [f"t{i}{unique_name[:4]}" for i in range(40)]
    topics = [next(n for n in names if partition(n) == 0), next(n for n in names if partition(n) == 1)]
    s = stream_settings(
        kafka_bootstrap, chdb_db_url, unique_name, alert_window_s=1, alert_short_s=3, alert_baseline_halflife_s=20
    )
    store = open_store(chdb_db_url)
    store.ensure_schema()
    producer = make_producer(s.kafka, client_id="test-scored")
    stop = threading.Event()
    share = dict.fromkeys(topics, 0.1)

    def produce() -> None:
        i = 0
        while not stop.is_set():
            now = utcnow()
            for topic, p in list(share.items()):
                for k in range(10):
                    producer.send(
                        s.kafka.topic_scored,
                        key=f"{i}".encode(),
                        value=scored(i, topic, k < round(10 * p), now).to_json(),
                    )
                    i += 1
            producer.flush()
            time.sleep(0.1)

    feeder = threading.Thread(target=produce, daemon=True)
    workers: list[WorkerThread] = []
    try:
        for _ in range(2):
            workers.append(WorkerThread(s, classifier=tiny_classifier, store=store, extensions=[attach]).start())
        feeder.start()

        def owners(topic: str) -> list[int]:
            return [
                i
                for i, w in enumerate(workers)
                if (st := w.context.extensions.get("alerts").detector.states().get(topic)) is not None
                and st.baseline_share is not None
                and st.volume > 0
            ]

        wait_for(
            lambda: all(len(owners(t)) == 1 for t in topics) and owners(topics[0]) != owners(topics[1]),
            120,
            "each topic owned by exactly one worker, the two by different workers",
        )
        time.sleep(3)
        for t in topics:
            share[t] = 0.6

        def raised(topic: str) -> list[int]:
            return [
                i
                for i, w in enumerate(workers)
                if any(a.topic == topic for a in w.context.extensions.get("alerts").alerts)
            ]

        wait_for(lambda: all(raised(t) for t in topics), 30, "both spikes alerted")
        time.sleep(3)  # a duplicate from the other worker would show up by now
        assert [raised(t) for t in topics] == [owners(t) for t in topics]
        assert sorted(i for t in topics for i in raised(t)) == [0, 1]
    finally:
        stop.set()
        for w in workers:
            w.stop()
        producer.close()
        store.close()


class _FlakyTopic:
    """Faust-like ``as_future_message``/``publish_message``: the broker settles the message's future; the first
    attempt of chosen keys fails (a failed future, or an exception from publishing)."""

    def __init__(self, fail_once: set[bytes], raise_once: set[bytes]) -> None:
        self.fail_once, self.raise_once = set(fail_once), set(raise_once)
        self.confirmed: list[bytes] = []
        self.attempts: list[bytes] = []

    def as_future_message(self, key: bytes, value: bytes) -> Any:
        import asyncio

        fut = asyncio.get_running_loop().create_future()
        fut.key = key  # type: ignore[attr-defined]
        return fut

    async def publish_message(self, message: Any) -> Any:
        key = message.key
        self.attempts.append(key)
        if key in self.raise_once:
            self.raise_once.discard(key)
            raise ConnectionError("producer not connected")
        if key in self.fail_once:  # what Faust's _on_published does with a failed send
            self.fail_once.discard(key)
            message.set_exception(RuntimeError("UnknownError"))
        else:
            self.confirmed.append(key)
            message.set_result(None)
        return message


def test_send_confirmed_resends_until_the_broker_confirms_every_record() -> None:
    import asyncio

    from finsent.alerts.agent import send_confirmed

    topic = _FlakyTopic(fail_once={b"b"}, raise_once={b"c"})
    records = [(k, b"v") for k in (b"a", b"b", b"c", b"d")]
    asyncio.run(send_confirmed(topic, records, "partial counts", first_delay_s=0.01))
    assert sorted(topic.confirmed) == [b"a", b"b", b"c", b"d"]  # each once: only the failed ones were resent
    assert topic.attempts == [b"a", b"b", b"c", b"d", b"b", b"c"]


def test_send_confirmed_cancelled_by_a_stop_leaves_the_broker_free_to_settle_the_message() -> None:
    """A stop cancels the agent while it waits for the broker; the producer's callback settles the
    FutureMessage later. Cancelling it with the agent made Faust's ``set_result`` raise InvalidStateError
    inside the event loop (the scale-out test's stop, in CI)."""
    import asyncio

    from finsent.alerts.agent import send_confirmed

    class _SlowTopic(_FlakyTopic):
        async def publish_message(self, message: Any) -> Any:
            self.attempts.append(message.key)
            self.pending = message  # the broker answers later
            return message

    async def main() -> list[dict]:
        loop_errors: list[dict] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
        topic = _SlowTopic(set(), set())
        task = asyncio.create_task(send_confirmed(topic, [(b"a", b"v")], "alerts"))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not topic.pending.cancelled()
        topic.pending.set_exception(RuntimeError("broker gone"))  # what Faust's _on_published does later
        del topic.pending
        import gc

        gc.collect()
        await asyncio.sleep(0)
        return loop_errors

    assert asyncio.run(main()) == []
