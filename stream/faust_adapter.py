"""The Faust edge of the scoring worker: every contact with Faust (and, through it, aiokafka) is here.

The pipeline (:mod:`finsent.stream.pipeline`) knows messages, guards and callables; this module turns
a Faust app into those: it builds the app with the worker's settings, runs the scoring agent
(``take_events`` batches handed to :meth:`Scorer.handle`), the position timer and the rebalance
signals, gives the publish stage a ``send`` over the app's producer, and restarts a partition whose
log the broker lost. Replacing Faust means replacing this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust
from faust.types import TP

from finsent.core.settings import Settings
from finsent.stream import faust_tuning
from finsent.stream.kafka import faust_credentials
from finsent.stream.publish import Record, send_batches

if TYPE_CHECKING:
    from finsent.stream.worker import Scorer

#: How often the lag gauge is refreshed and partitions are checked for a log that ends below the
#: worker's position (a reset takes two checks in a row, so about twice this after the broker is back).
POSITION_CHECK_S = 3.0


def make_app(settings: Settings, app_id: str, datadir: Path, loop: asyncio.AbstractEventLoop | None,
             commit_interval_s: float) -> faust.App:
    """The Faust app, configured for the scoring worker (why each setting: the comments)."""
    session_s = settings.session_timeout_ms / 1000
    app = faust.App(
        app_id,
        broker=[f"kafka://{b}" for b in settings.broker_list],
        broker_credentials=faust_credentials(settings),
        loop=loop,
        value_serializer="raw",
        key_serializer="raw",
        autodiscover=False,
        datadir=str(datadir),
        store="memory://",
        web_enabled=False,
        web_host="127.0.0.1",
        monitor=faust_tuning.LeanMonitor(),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session_s,
        broker_heartbeat_interval=max(session_s / 5, 0.5),
        broker_commit_interval=commit_interval_s,
        broker_max_poll_records=max(settings.batch_max * 4, 500),
        # Faust's wait_empty would wait forever for offsets the AckGuard keeps unacked (a batch whose
        # store failed): at stop, commit what is acked and leave the rest for redelivery.
        stream_wait_empty=False,
        stream_buffer_maxsize=max(settings.batch_max * 8, 1024),
        producer_acks=-1,
        producer_linger=0.005,
        # a stored group is sent in one burst: a few large record batches per partition instead of one per 16 KB
        producer_max_batch_size=512 * 1024,
        producer_max_request_size=max(settings.max_message_bytes + 64 * 1024, 1_048_576),
        consumer_max_fetch_size=max(settings.max_message_bytes + 64 * 1024, 4 * 1_048_576),
    )
    faust_tuning.install(app)
    return app


class FaustEdge:
    """The scorer's view of Kafka through one Faust app: send, highwater, partition restart."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    @property
    def consumer(self) -> Any:
        return self.app.consumer

    async def send(self, topic: str, records: Sequence[Record]) -> list[Any]:
        """Whole record batches per partition through the app's aiokafka producer; one future per batch."""
        producer = await self.app.maybe_start_producer()
        aio = producer._ensure_producer()  # faust-streaming's aiokafka producer
        return await send_batches(aio, topic, records)


def highwater(consumer: Any, key: tuple[str, int]) -> int | None:
    """The consumer's last seen highwater of ``key`` (None: not assigned, or the broker did not say)."""
    try:
        hw = consumer.highwater(TP(*key))
    except Exception:  # not assigned any more, or the broker did not say
        return None
    return None if hw is None else int(hw)


async def restart_partition(consumer: Any, key: tuple[str, int]) -> None:
    """Seek ``key`` to offset 0 and clear Faust's bookkeeping of it (read/committed offsets, acks, gaps).

    Faust ignores acks below the committed offset it remembers and drops records below its
    read offset, so both must go; the fields are faust-streaming 0.15's (``transport/consumer.py``).
    """
    tp = TP(*key)
    for name in ("_committed_offset", "_read_offset"):
        table = getattr(consumer, name, None)
        if table is not None:
            table[tp] = None
    for name in ("_acked", "_acked_index", "_gap"):
        table = getattr(consumer, name, None)
        if table is not None:
            table.pop(tp, None)
    await consumer.seek(tp, 0)


def run_scorer(app: faust.App, scorer: Scorer, settings: Settings) -> None:
    """Add the scoring agent, the position timer and the rebalance signals to ``app``."""
    raw_topic = app.topic(settings.topic_raw, key_type=bytes, value_type=bytes, allow_empty=True)
    # declared so that Faust creates them with the app's partitions and replication
    app.topic(settings.topic_scored, key_type=bytes, value_type=bytes)
    app.topic(settings.topic_dlq, key_type=bytes, value_type=bytes)

    @app.on_partitions_assigned.connect
    async def _joined(sender: Any, assigned: Any, **kwargs: Any) -> None:
        scorer.health.joined = True

    @app.on_partitions_revoked.connect
    async def _revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        scorer.forget_partitions([(tp.topic, tp.partition) for tp in revoked])

    @app.timer(interval=POSITION_CHECK_S)
    async def refresh_lag() -> None:
        if scorer.health.joined:
            await scorer.lag.refresh(scorer.consumer, scorer.positions.stored)
        scorer.refresh_lag()
        if scorer.health.joined:
            await scorer.check_positions()

    @app.agent(raw_topic, name="finsent.score", concurrency=1)
    async def score(stream: faust.StreamT) -> None:
        scorer.consumer = app.consumer
        try:
            async for events in stream.take_events(settings.batch_max, within=settings.batch_within_s):
                await scorer.handle(events)
        finally:
            await scorer.drain()
