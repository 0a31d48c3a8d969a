"""The store stage: scored batches into the store, in take order, a group per insert, retried until stored.

Anchor: quix-streams' ``BatchingSink`` (``sinks/base/batch.py``): rows accumulate while the sink
is busy and are written in one call; a failing write is retried, never dropped, and the source is
paused meanwhile (backpressure). Here:

* :meth:`StoreStage.put` queues a scored batch; at most :data:`MAX_WAITING_BATCHES` wait, then the
  caller waits (the model stops, then Faust stops taking: backpressure all the way to Kafka);
* one runner stores the waiting batches oldest first, as many as fit in :data:`STORE_GROUP_ROWS`
  rows per insert (each insert is a new part on ClickHouse/chdb, a fixed cost that dominates small
  inserts: a backlog goes in few large inserts, an idle worker stores each batch at once), and hands
  each stored group to ``after_store`` (publish + release), which may run while the next group is
  stored; groups are finished in order;
* :meth:`StoreStage.insert` retries with backoff while the store raises, reporting each failure to
  :class:`~finsent.stream.pipeline.health.Health` (a full disk reads "disk full", not "unreachable"),
  and gives up only when the worker stops (the batch then stays unacked and is redelivered).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from finsent.core.errors import StoreDiskFull, StoreUnavailable
from finsent.core.events import ScoredItem, utcnow
from finsent.stream.pipeline.health import Health
from finsent.stream.pipeline.offsets import AckGuard
from finsent.stream.pipeline.retry import RETRY_FIRST_S, WorkerStopping, next_delay
from finsent.stream.pipeline.scoring import DeadLetter
from finsent.stream.publish import Record

log = logging.getLogger(__name__)

#: Scored batches that may wait while the store is busy; the next insert takes all of them that fit
#: in STORE_GROUP_ROWS rows (bench/RESULTS.md "Plumbing").
MAX_WAITING_BATCHES = 8
STORE_GROUP_ROWS = 2048


@dataclass(slots=True)
class ScoredBatch:
    """One batch (or one model call's piece of it) taken from Kafka, scored, waiting to be stored and published."""

    guard: AckGuard
    scored: list[ScoredItem]
    dead: list[DeadLetter]
    #: (key, value, key hash) of each scored item's ``finsent.scored`` message, made in the model thread
    payloads: list[Record]


class Stage(Protocol):
    """A step between scoring and storing (e.g. entity mentions): runs on the store thread, once per group.

    It sees the group's scored items in take order, one group at a time, before the insert; it
    returns the items to store. It must be idempotent: a redelivered batch passes it again.
    """

    def __call__(self, scored: list[ScoredItem]) -> list[ScoredItem]: ...


#: Called with a stored group, its rows, the insert's seconds and when it was stored: publish and release.
AfterStore = Callable[[list[ScoredBatch], list[ScoredItem], float, datetime], Awaitable[None]]


class StoreStage:
    """Groups scored batches into inserts, retries the store, applies backpressure (see module doc)."""

    def __init__(
        self, store: Any, health: Health, retries: Any, draining: threading.Event, stages: Sequence[Stage] = ()
    ) -> None:
        #: a :class:`~finsent.stream.context.SharedStore` (``get()`` opens on first use)
        self.store = store
        self.health = health
        self._retries = retries
        self._draining = draining
        self.stages = list(stages)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finsent-store")
        #: scored batches waiting for the store, oldest first (at most MAX_WAITING_BATCHES)
        self.waiting: collections.deque[ScoredBatch] = collections.deque()
        self._space = asyncio.Event()
        #: the runner (store, then publish, each group) while it runs
        self.inflight: asyncio.Future[None] | None = None

    # -- blocking: the store thread --------------------------------------------------------
    def insert(self, scored: list[ScoredItem]) -> float:
        """Run the stages, then insert with retry until it succeeds or the worker stops; returns seconds spent."""
        t0 = time.perf_counter()
        for stage in self.stages:
            scored = stage(scored)
        delay = RETRY_FIRST_S
        while True:
            try:
                store = self.store.get()
                if scored:
                    store.insert_scored(scored)
                self.health.store_ok()
                return time.perf_counter() - t0
            except Exception as exc:
                self.health.store_failed(exc)
                self._retries.inc()
                if isinstance(exc, StoreDiskFull):
                    log.error(
                        "store disk full (%s); batch of %d kept unacknowledged, retrying in %.2fs",
                        exc,
                        len(scored),
                        delay,
                    )
                elif isinstance(exc, StoreUnavailable):
                    log.warning("store unavailable (%s); retrying this batch of %d in %.2fs", exc, len(scored), delay)
                else:
                    log.exception("store insert failed; retrying this batch of %d in %.2fs", len(scored), delay)
                if self._draining.wait(delay):  # set when stopping: give up, the batch stays unacked
                    raise WorkerStopping("stopped while the store was failing; batch left unacked") from exc
                delay = next_delay(delay)

    # -- the event loop ----------------------------------------------------------------------
    async def put(self, batch: ScoredBatch, after_store: AfterStore) -> None:
        """Queue ``batch`` (waiting while MAX_WAITING_BATCHES already wait); start the runner when it may.

        An idle runner starts only when the last piece of a split batch arrived (``guard.unscored``),
        so an idle worker still writes a split batch in one insert.
        """
        while len(self.waiting) >= MAX_WAITING_BATCHES:  # backpressure: the store is behind
            if self.inflight is None or self.inflight.done():  # pieces of a split batch, waiting for a sibling
                self.inflight = asyncio.ensure_future(self._run(after_store))
            self._space.clear()
            await self._space.wait()
        self.waiting.append(batch)
        batch.guard.unscored -= 1
        if batch.guard.unscored <= 0 and (self.inflight is None or self.inflight.done()):
            self.inflight = asyncio.ensure_future(self._run(after_store))

    def _take_group(self) -> list[ScoredBatch]:
        """The oldest waiting batch and those after it, while they fit in one insert of STORE_GROUP_ROWS."""
        group = [self.waiting.popleft()]
        rows = len(group[0].scored)
        while self.waiting and rows + len(self.waiting[0].scored) <= STORE_GROUP_ROWS:
            rows += len(self.waiting[0].scored)
            group.append(self.waiting.popleft())
        self._space.set()
        return group

    async def _run(self, after_store: AfterStore) -> None:
        """Store the waiting batches in order, a group per insert; finish each group while the next is stored.

        Ends when nothing waits and nothing is being finished (:meth:`put` starts it again), so the
        check "is a runner running" in :meth:`put` never misses a batch.
        """
        loop = asyncio.get_running_loop()
        finishing: asyncio.Future[None] | None = None
        while True:
            if not self.waiting:
                if finishing is None:
                    return
                await finishing  # then look again: batches may have arrived meanwhile
                finishing = None
                continue
            group = self._take_group()
            scored = [s for b in group for s in b.scored]
            try:
                store_s = await loop.run_in_executor(self.pool, self.insert, scored)
            except WorkerStopping as exc:
                log.warning("%s", exc)  # this group and those waiting stay unacked: redelivered later
                self.waiting.clear()
                self._space.set()
                continue
            stored_at = utcnow()
            if finishing is not None:  # groups are published (and acked) in order
                await finishing
            finishing = asyncio.ensure_future(after_store(group, scored, store_s, stored_at))

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait for the runner to end (at a stop); False when it did not within ``timeout_s``."""
        if self.inflight is None or self.inflight.done():
            return True
        done, _ = await asyncio.wait({self.inflight}, timeout=max(0.1, timeout_s))
        return bool(done)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
