"""What an operator reads: the Kafka lost/back lines and each state of the worker's /readyz."""

from __future__ import annotations

import logging
import time

import pytest
from prometheus_client import CollectorRegistry

from finsent.core.settings import load_settings
from finsent.stream.kafka import KafkaHealth
from finsent.stream.worker import ClassifierHolder, Scorer


def test_kafka_lost_once_and_back_once_after_the_complaints_stop(caplog: pytest.LogCaptureFixture) -> None:
    health = KafkaHealth("k1:9092", quiet_s=0.2)
    with caplog.at_level(logging.WARNING, logger="finsent.stream.kafka"):
        for _ in range(50):  # a dead broker: dozens of client errors
            health.error()
        health.tick()  # still complaining: not back
        time.sleep(0.25)
        health.tick()
        health.tick()
    lines = [r.getMessage() for r in caplog.records]
    assert sum("lost contact with Kafka at k1:9092" in m for m in lines) == 1
    assert sum("Kafka at k1:9092 answers again" in m for m in lines) == 1
    assert health.lost_since is None


def test_readyz_names_what_is_missing() -> None:
    scorer = Scorer(load_settings(), ClassifierHolder(None), lambda: None, registry=CollectorRegistry())
    try:
        assert scorer.readiness() == (False, "no model loaded")
        scorer.holder.swap(object())
        assert scorer.readiness() == (False, "not yet joined the consumer group")
        scorer.joined = True
        assert scorer.readiness() == (True, "ready")
        scorer.store_error = "Connection refused"
        ok, why = scorer.readiness()
        assert not ok and why == "store unreachable: Connection refused"
        scorer.store_error = None
        assert scorer.readiness() == (True, "ready")
    finally:
        scorer.close()
