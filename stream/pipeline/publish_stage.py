"""The publish stage: a stored group's scored items and dead letters onto their topics, confirmed by the broker.

Whole record batches per partition through the producer (:func:`finsent.stream.publish.send_batches`),
then one wait for every batch's ack: ``Topic.send`` or ``producer.send`` per item cost more than
encoding the items. While the broker fails, the topics are re-declared (a memory-only broker that
restarted lost them) and the send is retried with the store's backoff; it gives up only when the
worker stops, leaving the group unacked (redelivered; the store keeps each item once).

The Kafka side is two callables handed in by the Faust adapter, so this is tested without a broker.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from finsent.stream.pipeline.retry import RETRY_FIRST_S, WorkerStopping, next_delay
from finsent.stream.pipeline.scoring import DeadLetter
from finsent.stream.publish import Record, key_hash

log = logging.getLogger(__name__)

#: (topic name, records) -> the futures of the record batches sent (each settles on the broker's ack)
Send = Callable[[str, Sequence[Record]], Awaitable[list[Any]]]


class PublishStage:
    """Sends scored items to ``scored_topic`` and dead letters to ``dlq_topic``; retries until confirmed."""

    def __init__(
        self,
        send: Send,
        scored_topic: str,
        dlq_topic: str,
        redeclare: Callable[[], Awaitable[None]],
        stopping: threading.Event,
        draining: threading.Event,
    ) -> None:
        self._send = send
        self.scored_topic = scored_topic
        self.dlq_topic = dlq_topic
        self._redeclare = redeclare
        self._stopping = stopping
        self._draining = draining

    async def publish(self, payloads: list[Record], dead: list[DeadLetter]) -> None:
        """Send both and wait for the broker's acks, retrying until it answers (or the worker stops)."""
        delay = RETRY_FIRST_S
        while True:
            try:
                futs = await self._send(self.scored_topic, payloads)
                futs += await self._send(self.dlq_topic, [(d.key, d.body, key_hash(d.key)) for d in dead])
                if futs:
                    # every outcome is collected, so no failed future is left "never retrieved" in the log
                    results = await asyncio.gather(*futs, return_exceptions=True)
                    failed = [r for r in results if isinstance(r, BaseException)]
                    if failed:
                        raise failed[0]
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "publishing %d scored / %d dead letters failed (%s: %s); re-declaring the topics, retrying in "
                    "%.2fs",
                    len(payloads),
                    len(dead),
                    type(exc).__name__,
                    " ".join(str(exc).split())[:200],
                    delay,
                )
                if self._stopping.is_set() or self._draining.is_set():
                    raise WorkerStopping("stopped while Kafka was failing; batch left unacked") from None
                await self._redeclare()
                await asyncio.sleep(delay)
                delay = next_delay(delay)
