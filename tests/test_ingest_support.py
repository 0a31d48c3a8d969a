"""Shared helpers of the ingest tests (no tests here): read a topic back from the real broker."""

from __future__ import annotations

import json
import time

from kafka import KafkaConsumer, TopicPartition


def consume_all(bootstrap: str, topic: str, expect: int, timeout_s: float = 20.0) -> list[dict]:
    """Every record of ``topic`` (all partitions, from the start, no consumer group), as dicts.

    Reads until ``expect`` records arrived and then ~1 s more, so that extra (duplicate)
    records would be seen too.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        deadline = time.monotonic() + timeout_s
        parts = None
        while not parts and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                time.sleep(0.2)
        assert parts, f"topic {topic} does not exist"
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[dict] = []
        settle: float | None = None
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    obj = json.loads(r.value)
                    assert r.key.decode() == obj["id"]
                    out.append(obj)
            if len(out) >= expect:
                settle = settle or time.monotonic() + 1.0
                if time.monotonic() > settle:
                    break
        return out
    finally:
        consumer.close()
