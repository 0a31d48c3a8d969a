"""Consumer lag from fresh end offsets: ``finsent_consumer_lag_messages`` that does not under-report a backlog.

Why: the worker used to take a partition's log end from the consumer's *highwater*, which aiokafka
learns only from fetch responses. Under backpressure (the store is slow, the model is busy) the worker
stops taking records, the fetcher's buffer fills, fetching stops, and the highwater freezes while
producers keep appending: at 60 s of full-rate push the gauge said 117,326 for a true backlog of
457,774 (-74%, issue 22). The HPA, KEDA and the lag alert all read this gauge, so they saw a small
lag exactly when it was large.

How: every ``interval_s`` (5 s) :meth:`LagMeter.refresh` asks the broker for the end offsets of the
assigned partitions (a ListOffsets request through the consumer's public ``highwaters()``, which runs
aiokafka's ``end_offsets()`` in the consumer's own thread, off the event loop) and sets
``lag = end - next offset to store``. The next offset to store is one past the last stored offset the
worker knows, else the consumer's position (a partition assigned but not yet stored from). Between
refreshes the worker's per-batch update uses ``max(highwater, last fresh end)`` (:meth:`end_of`), so
it never goes back to the stale number. A refresh that fails (broker away) keeps the last values and
logs at DEBUG: the lag gauge is an operator's number, never used for decisions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Mapping
from typing import Any

log = logging.getLogger(__name__)

#: How often the broker is asked for end offsets (one small request per worker, whatever the partitions).
LAG_INTERVAL_S = 5.0
#: Longest a refresh may wait for the broker before it gives up until the next one.
LAG_TIMEOUT_S = 5.0


class LagMeter:
    """Sets ``gauge{kafka_topic, partition}`` from fresh log ends; the worker calls :meth:`refresh` from a timer."""

    def __init__(
        self, gauge: Any, topics: Collection[str], interval_s: float = LAG_INTERVAL_S, timeout_s: float = LAG_TIMEOUT_S
    ) -> None:
        self.gauge = gauge
        #: the topics measured (the raw topic; not Faust's internal ones the consumer is also assigned)
        self.topics = frozenset(topics)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        #: (topic, partition) -> the log end the broker reported at the last refresh
        self.ends: dict[tuple[str, int], int] = {}
        self._last = -1e9
        self.refreshes = 0

    def end_of(self, topic: str, partition: int) -> int:
        """The last fresh log end of a partition (0 when none yet): a floor for a stale highwater."""
        return self.ends.get((topic, partition), 0)

    def forget(self, key: tuple[str, int]) -> None:
        """A partition was revoked: its lag is another worker's to report."""
        self.ends.pop(key, None)

    async def refresh(self, consumer: Any, stored: Mapping[tuple[str, int], int], force: bool = False) -> bool:
        """Ask for the end offsets of ``consumer``'s assigned partitions and set the gauge; at most once per
        ``interval_s`` unless ``force``. ``stored``: the last stored offset per (topic, partition).
        Returns whether the gauge was refreshed."""
        now = time.monotonic()
        if consumer is None or (not force and now - self._last < self.interval_s):
            return False
        self._last = now
        try:
            tps = [tp for tp in consumer.assignment() if tp.topic in self.topics]
            if not tps:
                return False
            ends = await asyncio.wait_for(consumer.highwaters(*tps), self.timeout_s)
            lags: dict[tuple[str, int], int] = {}
            for tp, end in ends.items():
                if end is None:
                    continue
                key = (tp.topic, tp.partition)
                self.ends[key] = int(end)
                if key in stored:
                    next_to_store = stored[key] + 1
                else:  # nothing stored from it yet: from where the consumer reads
                    position = await asyncio.wait_for(consumer.position(tp), self.timeout_s)
                    if position is None:
                        continue
                    next_to_store = int(position)
                lags[key] = max(int(end) - next_to_store, 0)
        except Exception as exc:  # noqa: BLE001 - the broker is away or the consumer is stopping: try again later
            log.debug("consumer lag: end offsets not available (%s: %s)", type(exc).__name__, exc)
            return False
        for (topic, partition), lag in lags.items():
            self.gauge.labels(topic, str(partition)).set(lag)
        self.refreshes += 1
        return True


__all__ = ["LAG_INTERVAL_S", "LagMeter"]
