"""Helpers for the stream tests: settings with fresh topic/group names, producing, reading topics."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from finsent.core.events import RawItem, utcnow
from finsent.core.settings import Settings, load_settings
from finsent.core.wait import WaitTimeout, wait_until
from finsent.stream.kafka import ensure_topics, make_consumer, make_producer

TEXTS = (
    "shares of acme jump after record quarterly earnings",
    "oil prices fall as demand weakens",
    "bank cuts rates target, analysts see more cuts",
    "tech stock drops 10 percent after ceo leaves",
    "gold price rises to a new high",
)


def stream_settings(bootstrap: str, store: str, suffix: str, **kw: Any) -> Settings:
    """Settings on fresh topics and a fresh consumer group (Tansu quirk: never reuse a group)."""
    values: dict[str, Any] = {
        "brokers": bootstrap,
        "store": store,
        "topic_raw": f"raw-{suffix}",
        "topic_scored": f"scored-{suffix}",
        "topic_dlq": f"dlq-{suffix}",
        "topic_alerts": f"alerts-{suffix}",
        "consumer_group": f"g-{suffix}",
        "partitions": 2,
        "session_timeout_ms": 6000,
        "batch_max": 16,
        "batch_within_s": 0.1,
        "metrics_port": 0,
        "max_message_bytes": 4096,
    }
    values.update(kw)
    s = load_settings(**values)
    ensure_topics(s.kafka)
    return s


def worker_env(s: Settings, model_dir: Path | str, *, clean: bool = False, **extra: str) -> dict[str, str]:
    """The environment of a ``finsent worker`` subprocess (or a ``finsent`` command beside it) on the broker,
    store, topics and consumer group of ``s``, scoring with ``model_dir``.

    One copy for every test that starts a worker process, so a new setting the worker must share with the test
    (a topic, the group) is added once. The session timeout is short, so a killed worker's partitions move on
    quickly. The checkout comes first on ``PYTHONPATH``, so the subprocess imports the code under test.
    ``clean`` drops this process's own ``FINSENT_*`` variables first (a developer's settings never leak in);
    ``extra`` (``FINSENT_METRICS_PORT="9464"``, ...) is applied last.
    """
    base = {k: v for k, v in os.environ.items() if not (clean and k.startswith("FINSENT_"))}
    root = str(Path(__file__).resolve().parents[1])
    return {
        **base,
        "PYTHONPATH": os.pathsep.join(p for p in (root, base.get("PYTHONPATH", "")) if p),
        "FINSENT_BROKERS": s.kafka.brokers,
        "FINSENT_STORE": s.storage.store,
        "FINSENT_TOPIC_RAW": s.kafka.topic_raw,
        "FINSENT_TOPIC_SCORED": s.kafka.topic_scored,
        "FINSENT_TOPIC_DLQ": s.kafka.topic_dlq,
        "FINSENT_TOPIC_ALERTS": s.kafka.topic_alerts,
        "FINSENT_CONSUMER_GROUP": s.kafka.consumer_group,
        "FINSENT_PARTITIONS": str(s.kafka.partitions),
        "FINSENT_SESSION_TIMEOUT_MS": "6000",
        "FINSENT_MODEL_DIR": str(model_dir),
        **extra,
    }


def make_items(n: int, prefix: str = "it") -> list[RawItem]:
    now = utcnow()
    return [
        RawItem(
            id=f"{prefix}-{i}", source="test", source_type="news", text=f"{TEXTS[i % len(TEXTS)]} #{i}", ingested_at=now
        )
        for i in range(n)
    ]


def produce(settings: Settings, values: Iterable[bytes | None], keys: Iterable[bytes | None] | None = None) -> int:
    producer = make_producer(settings.kafka, client_id="test-producer")
    n = 0
    try:
        vals = list(values)
        ks = list(keys) if keys is not None else [None] * len(vals)
        for k, v in zip(ks, vals, strict=True):
            producer.send(settings.kafka.topic_raw, key=k, value=v)
            n += 1
        producer.flush(timeout=30)
    finally:
        producer.close()
    return n


def produce_items(settings: Settings, items: Iterable[RawItem]) -> int:
    items = list(items)
    return produce(settings, [it.to_json() for it in items], [it.id.encode() for it in items])


def read_topic(settings: Settings, topic: str, expect: int, timeout_s: float = 30.0) -> list[Any]:
    """Read ``topic`` from the start without a group until ``expect`` records (or a quiet timeout)."""
    consumer = make_consumer(settings.kafka, topic, group_id=None, consumer_timeout_ms=int(timeout_s * 1000))
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expect and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500)
            for records in batch.values():
                out.extend(records)
        # a little longer: extra records (duplicates) would show up here
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            for records in consumer.poll(timeout_ms=200).values():
                out.extend(records)
    finally:
        consumer.close()
    return out


def wait_for(cond: Callable[[], object], timeout_s: float, what: str) -> None:
    """:func:`finsent.core.wait.wait_until`, with a timeout as an AssertionError: a failed check in the test's
    report, and three tests catch it to add what they saw (the worker's log, the mentions counted)."""
    try:
        wait_until(cond, timeout_s, 0.2, what=what)
    except WaitTimeout as exc:
        raise AssertionError(str(exc)) from None


def reasons(records: Iterable[Any]) -> list[str]:
    return sorted(json.loads(r.value)["reason"] for r in records)


class Feeder(threading.Thread):
    """Produces items ``<prefix>-N`` to the raw topic in small bursts until stopped (traffic during a test)."""

    def __init__(self, settings: Settings, prefix: str = "feed") -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.prefix = prefix
        self.produced: list[str] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        producer = make_producer(self.settings.kafka, client_id=f"{self.prefix}-feeder")
        try:
            i = 0
            while not self.stopping.is_set():
                ids = []
                for _ in range(6):
                    item = RawItem(
                        id=f"{self.prefix}-{i}",
                        source="test",
                        source_type="news",
                        text=f"{TEXTS[i % len(TEXTS)]} #{i}",
                        ingested_at=utcnow(),
                    )
                    producer.send(self.settings.kafka.topic_raw, key=item.id.encode(), value=item.to_json())
                    ids.append(item.id)
                    i += 1
                producer.flush(timeout=30)
                self.produced.extend(ids)
                time.sleep(0.05)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            producer.close()

    def finish(self, timeout_s: float = 30.0) -> list[str]:
        """Stop producing; the ids produced (and acknowledged), or the producer's error."""
        self.stopping.set()
        self.join(timeout_s)
        if self.error is not None:
            raise AssertionError(f"the feeder failed: {self.error!r}")
        return list(self.produced)
