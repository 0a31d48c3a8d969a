"""The embedded broker, topic admin and client factories against a real Tansu broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finsent.core.settings import load_settings
from finsent.stream.broker import BrokerError, EmbeddedBroker, free_port
from finsent.stream.kafka import ensure_topics, make_consumer, make_producer

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_ensure_topics_creates_once_with_partitions(kafka_bootstrap: str, unique_name: str) -> None:
    s = load_settings(
        brokers=kafka_bootstrap,
        partitions=3,
        topic_raw=f"raw-{unique_name}",
        topic_scored=f"scored-{unique_name}",
        topic_dlq=f"dlq-{unique_name}",
        topic_alerts=f"alerts-{unique_name}",
    )
    created = ensure_topics(s.kafka)
    assert sorted(created) == sorted(
        [
            s.kafka.topic_raw,
            s.kafka.topic_scored,
            s.kafka.topic_dlq,
            s.kafka.topic_alerts,
            s.kafka.topic_alert_counts,
            s.kafka.topic_entity_counts,
        ]
    )
    assert ensure_topics(s.kafka) == []  # idempotent
    from finsent.stream.kafka import admin_client

    admin = admin_client(s.kafka)
    try:
        desc = {d["name"]: d for d in admin.describe_topics([s.kafka.topic_raw])}
        assert len(desc[s.kafka.topic_raw]["partitions"]) == 3
    finally:
        admin.close()


def test_producer_consumer_round_trip(kafka_bootstrap: str, unique_name: str) -> None:
    s = load_settings(brokers=kafka_bootstrap, topic_raw=f"rt-{unique_name}", session_timeout_ms=6000, partitions=2)
    ensure_topics(s.kafka, [s.kafka.topic_raw])
    producer = make_producer(s.kafka)
    sent = {f"v{i}".encode() for i in range(25)}
    for v in sent:
        producer.send(s.kafka.topic_raw, key=v, value=v)
    producer.flush()
    producer.close()
    consumer = make_consumer(s.kafka, s.kafka.topic_raw, group_id=f"g-{unique_name}", consumer_timeout_ms=15_000)
    got = set()
    try:
        for msg in consumer:
            got.add(msg.value)
            if len(got) == len(sent):
                break
    finally:
        consumer.close()
    assert got == sent


def test_port_in_use_is_a_clear_error() -> None:
    with EmbeddedBroker() as first, pytest.raises(BrokerError, match="already in use"):
        EmbeddedBroker(first.host, first.port).start()


def test_finsent_broker_command_stops_cleanly_on_sigterm() -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "finsent.cli", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert f"127.0.0.1:{port}" in line
        s = load_settings(brokers=f"127.0.0.1:{port}")
        assert ensure_topics(s.kafka) == []  # the command already created the finsent topics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    # the broker child is gone with it: the port is free again
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            EmbeddedBroker(port=port).start().stop()
            break
        except BrokerError:
            time.sleep(0.2)
    else:
        pytest.fail("port still in use after `finsent broker` exited")


def test_a_broker_leaves_no_temp_log_behind() -> None:
    broker = EmbeddedBroker().start()
    log = broker.log_path
    assert log is not None and log.is_file()
    broker.stop()
    assert not log.exists()
