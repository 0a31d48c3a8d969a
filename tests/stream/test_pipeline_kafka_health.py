"""Kafka's health as the worker sees it: the answer to a metadata request of its own client, not log records."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest


@pytest.mark.integration
def test_kafka_answers_while_the_broker_lives_and_not_once_it_is_killed(tmp_path: Path, unique_name: str) -> None:
    from finsent.stream.broker import EmbeddedBroker, free_port
    from finsent.stream.faust_adapter import kafka_answers, make_app
    from tests.stream_helpers import stream_settings

    broker = EmbeddedBroker(port=free_port()).start()
    try:
        s = stream_settings(broker.bootstrap, f"chdb://{tmp_path / 'store'}", unique_name)

        async def run() -> tuple[bool | None, bool | None, bool | None]:
            app = make_app(s, f"{unique_name}-health", tmp_path, None, 1.0)
            before = await kafka_answers(app)  # the producer is not started: no evidence either way
            await app.producer.start()
            try:
                alive = await kafka_answers(app)
                assert broker.proc is not None
                broker.proc.kill()  # no goodbye, like a crashed node
                broker.proc.wait()
                dead = await kafka_answers(app, timeout_s=2.0)
            finally:
                await asyncio.wait_for(app.producer.stop(), 10)
            return before, alive, dead

        assert asyncio.run(run()) == (None, True, False)
    finally:
        broker.stop()
