"""The scoring worker: a Faust app whose agent turns ``finsent.raw`` into stored, scored rows.

Per batch (``stream.take_events(batch_max, within=batch_within_s)``; batches taken while the model
is busy are scored together in its next call, :meth:`Scorer.handle`):

1. decode every message with :func:`finsent.core.events.decode_raw`; a defective one becomes a
   dead-letter record (reason from :class:`InvalidEvent`) -- the agent never crashes on input;
2. score the good ones OFF the event loop (a model executor running up to ``model_calls`` batches
   at once, each with ``Settings.call_threads`` onnxruntime threads; onnxruntime releases the GIL
   so Kafka I/O keeps flowing); a model failure is narrowed to the item(s) that cause it, which
   are dead-lettered as ``model_error``;
3. store the scored rows (another single-thread executor), retrying with backoff while the
   store raises -- the batch is never dropped;
4. publish the scored items to ``finsent.scored`` (encoded in the model thread) and the dead
   letters to ``finsent.dlq`` as whole record batches per partition (:mod:`finsent.stream.publish`),
   then wait for the broker to confirm every batch;
5. only then release the batch's offsets for commit.

When does Faust ack? (faust-streaming 0.15.3, ``faust/streams.py``, ``Stream.take``/``take_events``):
take disables the stream's own acking and acks the buffered events in the ``finally`` after its
``yield`` -- i.e. when the agent's ``async for`` asks for the NEXT batch, or when the generator
is closed. "Closed" includes the agent body raising or being cancelled at shutdown: the async
generator is finalised and its ``finally`` acks a batch that was never stored. An acked offset is
committed by the consumer's commit timer (``broker_commit_interval``) and at stop. So relying on
take's ack alone would lose a batch on a crash or a SIGTERM mid-store.

Hence :class:`AckGuard`: before any work, each message of the batch gets one extra reference
(``Message.incref``). Take's ack then only brings the count back to 1; the final ack -- the
one that marks the offset safe to commit -- happens in :meth:`AckGuard.release`, called after
steps 3-4 succeeded. If the worker dies or stops first, the offsets stay uncommitted and the
batch is redelivered; ``insert_scored`` is idempotent by id, so the redelivery never shows twice.
The same guard lets the stages overlap: Faust fills the next batch while the model scores one
(the agent body returns as soon as a batch is handed to the model), the store inserts a group of
scored batches while the group before it is published. Batches that finish scoring while the
store is busy wait (at most ``MAX_WAITING_BATCHES``) and go into the store together, in order, as
one insert: a backlog is written in few large inserts, an idle worker stores each batch at once.
Memory is bounded: the waiting batches, the group being stored, the group being published, the
batch being scored, and Faust's own buffers. Stored comes before published, per group, and a
group is released (acked) only after both, in order.

The classifier sits in a :class:`ClassifierHolder` so a promoted model can be swapped in
atomically: with a model registry the app follows its production alias (:mod:`finsent.stream.reload`);
``_score`` reads ``holder.current`` once per batch, so each batch uses one model version.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from finsent.core.errors import StoreDiskFull, StoreUnavailable
from finsent.core.events import ScoredItem, utcnow
from finsent.core.settings import Settings
from finsent.stream import faust_tuning
from finsent.stream.context import Extension, Extensions, SharedStore, WorkerContext
from finsent.stream.kafka import faust_credentials
from finsent.stream.lag import LagMeter
from finsent.stream.metrics import worker_metrics
from finsent.stream.pipeline.health import Health
from finsent.stream.pipeline.scoring import (
    ClassifierHolder,
    DeadLetter,
    RawMessage,
    _to_scored,
    decode_and_score,
    decode_batch,
    score_items,
)
from finsent.stream.publish import Record, key_hash, send_batches

__all__ = [  # the names other modules and the tests import from here
    "MAX_WAITING_BATCHES", "RETRY_FIRST_S", "RETRY_MAX_S", "SPLIT_MIN_ITEMS", "AckGuard", "ClassifierHolder",
    "DeadLetter", "RawMessage", "ScoringWorker", "Scorer", "WorkerStats", "_to_scored", "create_app", "create_worker",
    "decode_batch", "faust_datadir", "load_classifier", "score_items",
]

log = logging.getLogger(__name__)

#: Backoff between store/publish retries: starts here, doubles, capped. The cap is how long a worker
#: may sit idle after its store or broker is back (the issue measured up to 15 s with a 15 s cap),
#: traded against one failed attempt per cap per worker while it is down: at 4 s that is a connection
#: attempt every 4 s, nothing for either server, and at most 4 s of extra recovery time.
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 4.0

#: Scored batches that may wait while the store is busy; the next insert takes all of them that fit
#: in STORE_GROUP_ROWS rows. Each insert makes a new part on ClickHouse and chdb, a fixed cost that
#: dominates small inserts, so a backlog is written in a few large ones; an idle worker still stores
#: each batch at once (bench/RESULTS.md "Plumbing").
MAX_WAITING_BATCHES = 8
#: Smallest piece of a batch split across free model calls (smaller pieces cost more model time per item).
SPLIT_MIN_ITEMS = 16
STORE_GROUP_ROWS = 2048


#: How often the lag gauge is refreshed and partitions are checked for a log that ends below the
#: worker's position (a reset takes two checks in a row, so about twice this after the broker is back).
POSITION_CHECK_S = 3.0


class WorkerStopping(Exception):
    """Raised inside a retry loop when the worker is shutting down; the batch stays unacked."""


@dataclass
class WorkerStats:
    """In-process counters for the demo and the benchmark (Prometheus has the same, for operators)."""

    consumed: int = 0
    stored: int = 0
    batches: int = 0
    dead_lettered: collections.Counter[str] = field(default_factory=collections.Counter)
    #: items ingested before this are not sampled for latency (the demo's back-filled history)
    latency_floor: datetime | None = None
    #: recent ingested_at -> stored latencies in seconds (bounded)
    latencies: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=200_000))
    inference_s: float = 0.0
    store_s: float = 0.0
    #: monotonic times of the first batch received and of the last batch stored (throughput benchmarks)
    first_batch_t: float | None = None
    last_stored_t: float | None = None
    #: the model versions found on each scored batch's rows, in scoring order (hot reload: always one; bounded)
    batch_versions: collections.deque[frozenset[str]] = field(default_factory=lambda: collections.deque(maxlen=100_000))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "consumed": self.consumed,
                "stored": self.stored,
                "batches": self.batches,
                "dead_lettered": dict(self.dead_lettered),
                "inference_s": self.inference_s,
                "store_s": self.store_s,
            }


@dataclass(slots=True)
class ScoredBatch:
    """One batch taken from Kafka, scored, waiting to be stored and published."""

    guard: AckGuard
    scored: list[ScoredItem]
    dead: list[DeadLetter]
    #: (key, value, key hash) of each scored item's ``finsent.scored`` message, made in the model thread
    payloads: list[Record]


class AckGuard:
    """Holds one reference on every message of a batch so nothing commits before :meth:`release`.

    See the module docstring for why Faust's own take-acking is not enough.
    """

    def __init__(self, events: Sequence[Any]) -> None:
        self.events = list(events)
        for ev in self.events:
            ev.message.incref()
        self.released = False
        #: how many pieces (model calls) the batch was scored in: each releases once, the last one acks
        self.pieces = 1
        #: pieces still in the model: an idle store stage starts only when the last one is scored, so an
        #: idle worker still writes a split batch in one insert
        self.unscored = 1

    @classmethod
    def join(cls, guards: Sequence[AckGuard]) -> AckGuard:
        """One guard over several taken batches (scored together); it takes over their references."""
        if len(guards) == 1:
            return guards[0]
        joined = cls.__new__(cls)
        joined.events = [ev for g in guards for ev in g.events]
        joined.released = False
        for g in guards:
            g.released = True  # their references now belong to ``joined``: released once, by it
        return joined

    def split(self, pieces: int) -> AckGuard:
        """The batch goes to the model in ``pieces`` calls: ack only once every piece has been released.

        A piece whose store failed at a stop is never released, so its messages are never acked,
        even when a later piece was stored: the whole batch is redelivered.
        """
        self.pieces = self.unscored = pieces
        return self

    def release(self) -> bool:
        """Release one piece; ack every message when the last piece is released. True when this call acked."""
        if self.released:
            return False
        self.pieces -= 1
        if self.pieces > 0:
            return False
        self.released = True
        for ev in self.events:
            ev.ack()
        return True


class Scorer:
    """The per-app pipeline state: model holder, store, executors, metrics, stats."""

    def __init__(
        self,
        settings: Settings,
        holder: ClassifierHolder,
        store_factory: Callable[[], Any],
        stats: WorkerStats | None = None,
        owns_store: bool = True,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.holder = holder
        self.shared_store = SharedStore(store_factory, owned=owns_store)
        self.stats = stats or WorkerStats()
        self.metrics = worker_metrics(registry)
        self.extensions = Extensions()
        self.health = Health(holder, self.extensions.ready_checks)
        #: what the extensions get (the alert agent, the drift timer): no attributes on the Faust app
        self.context = WorkerContext(settings, self.shared_store, self.metrics, self.health, holder, self.extensions)
        self.model_pool = ThreadPoolExecutor(max_workers=settings.model_calls, thread_name_prefix="finsent-model")
        self.store_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finsent-store")
        self.stopping = threading.Event()
        #: set when the agent stops: a batch in flight may finish, but a failing store is not retried
        self.draining = threading.Event()
        #: the store/publish stage (``_finish_waiting``) while it runs, and the model calls running (at most
        #: ``model_calls``)
        self.inflight: asyncio.Future[None] | None = None
        self.scoring: set[asyncio.Future[None]] = set()
        #: set when the newest model call has handed its batch to the store stage: the next call waits for
        #: it, so that batches reach the store in take order whichever call finishes first
        self._handed: asyncio.Future[None] | None = None
        #: batches taken while the model was busy, oldest first: the model's next call scores them together
        self._pending: list[tuple[AckGuard, list[RawMessage]]] = []
        self._pending_n = 0
        #: scored batches waiting for the store, oldest first (at most MAX_WAITING_BATCHES)
        self._waiting: collections.deque[ScoredBatch] = collections.deque()
        self._space = asyncio.Event()
        self.scored_topic: Any = None
        self.dlq_topic: Any = None
        self.consumer: Any = None
        self.datadir: Path | None = None
        #: per (topic, partition): the last offset taken from Kafka, and the last one stored (lag, resets)
        self.last_offsets: dict[tuple[str, int], int] = {}
        self.stored_offsets: dict[tuple[str, int], int] = {}
        #: partitions whose log end was seen below the worker's position at the previous check
        self.behind: dict[tuple[str, int], int] = {}
        #: the lag gauge from fresh end offsets (the highwater goes stale under backpressure)
        self.lag = LagMeter(self.metrics.consumer_lag, [settings.topic_raw])
        self._redeclared_at = -1e9
        #: the production-alias follower (hot reload), when the app follows a registry
        self.follower: Any = None

    @property
    def joined(self) -> bool:
        return self.health.joined

    @joined.setter
    def joined(self, value: bool) -> None:
        self.health.joined = value

    @property
    def store_error(self) -> str | None:
        return self.health.store_error

    @store_error.setter
    def store_error(self, value: str | None) -> None:
        self.health.store_error = value

    @property
    def store(self) -> Any:
        """The store if it is open (None before the first batch)."""
        return self.shared_store.current

    def readiness(self) -> tuple[bool, str]:
        """``/readyz`` (:class:`~finsent.stream.pipeline.health.Health`)."""
        return self.health.readiness()

    # -- blocking parts (executor threads) ---------------------------------------------------
    def open_store(self) -> Any:
        """The worker's store, opened on first use; the extensions share it (``context.store``)."""
        return self.shared_store.get()

    def _store_batch(self, scored: list[ScoredItem]) -> float:
        """Insert with retry until it succeeds or the worker stops; returns seconds spent."""
        t0 = time.perf_counter()
        delay = RETRY_FIRST_S
        while True:
            try:
                store = self.open_store()
                if scored:
                    store.insert_scored(scored)
                self.health.store_ok()
                return time.perf_counter() - t0
            except Exception as exc:
                self.health.store_failed(exc)
                self.metrics.store_retries.inc()
                if isinstance(exc, StoreDiskFull):
                    log.error("store disk full (%s); batch of %d kept unacknowledged, retrying in %.2fs",
                              exc, len(scored), delay)
                elif isinstance(exc, StoreUnavailable):
                    log.warning("store unavailable (%s); retrying this batch of %d in %.2fs", exc, len(scored), delay)
                else:
                    log.exception("store insert failed; retrying this batch of %d in %.2fs", len(scored), delay)
                if self.draining.wait(delay):  # set when stopping: give up, the batch stays unacked
                    raise WorkerStopping("stopped while the store was failing; batch left unacked") from exc
                delay = min(delay * 2, RETRY_MAX_S)

    def close(self) -> None:
        self.stopping.set()
        self.draining.set()
        if self.follower is not None:
            self.follower.close()
        self.extensions.close()
        self.model_pool.shutdown(wait=True)
        self.store_pool.shutdown(wait=True)
        self.shared_store.close()
        if self.datadir is not None:
            shutil.rmtree(self.datadir, ignore_errors=True)

    # -- the event-loop side ------------------------------------------------------------------
    async def handle(self, events: Sequence[Any]) -> None:
        """Take one batch from ``take_events`` and return at once, so Faust refills its buffer meanwhile.

        Continuous batching: an idle model scores the batch now; a busy one finds it, with every
        other batch taken meanwhile, when it finishes, and scores them in one call (at most
        ``batch_max`` messages). So a message waits for the take window and at most one model call
        before its own, and the model's batches grow with the load instead of with a fixed wait.
        Three stages overlap, each bounded to about one batch: take filling the next, the model
        scoring one, the store/publish of the one before. The AckGuard keeps every offset
        uncommitted until its batch is stored, whatever take does with its own acks when this returns.
        """
        if self.stats.first_batch_t is None:
            self.stats.first_batch_t = time.monotonic()
        guard = AckGuard(events)
        messages = [
            RawMessage(ev.value, ev.message.topic, ev.message.partition, ev.message.offset, ev.message.timestamp,
                       ev.key if isinstance(ev.key, bytes) else None)
            for ev in events
        ]
        m = self.metrics
        m.consumed.labels(self.settings.topic_raw).inc(len(messages))
        m.batch_size.observe(len(messages))
        self._update_lag(messages)
        self._pending.append((guard, messages))
        self._pending_n += len(messages)
        if len(self.scoring) < self.settings.model_calls:
            self._start_scoring()
        elif self._pending_n >= self.settings.batch_max:  # backpressure: a model call's worth waits, no more
            # the first call to end starts the next, with what is pending (asyncio.wait cancels nothing)
            await asyncio.wait(self.scoring, return_when=asyncio.FIRST_COMPLETED)

    def _start_scoring(self) -> None:
        """Hand the oldest pending batches, up to ``batch_max`` messages (at least one batch), to the model.

        With more than one model call free they are cut into that many pieces (of at least
        SPLIT_MIN_ITEMS), scored at once: an idle worker scores a take on every core, in about the time
        of one piece, without onnxruntime's per-operator thread synchronisation. An idle store stage waits
        for the last piece, so the pieces still go into one insert.
        """
        take = 1
        n = len(self._pending[0][1])
        while take < len(self._pending) and n + len(self._pending[take][1]) <= self.settings.batch_max:
            n += len(self._pending[take][1])
            take += 1
        chunks, self._pending = self._pending[:take], self._pending[take:]
        self._pending_n -= n
        guard = AckGuard.join([g for g, _ in chunks])
        messages = chunks[0][1] if take == 1 else [m for _, ms in chunks for m in ms]
        pieces = max(1, min(self.settings.model_calls - len(self.scoring), len(messages) // SPLIT_MIN_ITEMS))
        size = -(-len(messages) // pieces)
        parts = [messages[i : i + size] for i in range(0, len(messages), size)]
        guard.split(len(parts))
        loop = asyncio.get_running_loop()
        for part in parts:
            before, self._handed = self._handed, loop.create_future()
            call = asyncio.ensure_future(self._score(guard, part, before, self._handed))
            self.scoring.add(call)
            call.add_done_callback(self.scoring.discard)

    async def _score(self, guard: AckGuard, messages: list[RawMessage], before: asyncio.Future[None] | None,
                     handed: asyncio.Future[None]) -> None:
        """One model call: score ``messages``, then, after the call started before it, hand them to the store stage."""
        try:
            await self._score_in_order(guard, messages, before)
        finally:
            if not handed.done():
                handed.set_result(None)
            self.scoring.discard(asyncio.current_task())  # type: ignore[arg-type]
        while self._pending and len(self.scoring) < self.settings.model_calls:
            self._start_scoring()  # taken while the model was busy: the model's next call(s)

    async def _score_in_order(self, guard: AckGuard, messages: list[RawMessage],
                              before: asyncio.Future[None] | None) -> None:
        loop = asyncio.get_running_loop()
        classifier = self.holder.current  # one model version per batch
        scored, dead, payloads, infer_s = await loop.run_in_executor(
            self.model_pool, decode_and_score, classifier, messages, self.settings.max_message_bytes,
            self.settings.max_text_chars,
        )
        if before is not None:
            await asyncio.shield(before)  # the batch taken before this one goes to the store first
        self.metrics.inference_seconds.observe(infer_s)
        with self.stats.lock:
            self.stats.consumed += len(messages)
            self.stats.batches += 1
            self.stats.inference_s += infer_s
            if scored:
                self.stats.batch_versions.append(frozenset(s.model_version for s in scored))
        while len(self._waiting) >= MAX_WAITING_BATCHES:  # backpressure: the store is behind
            if self.inflight is None or self.inflight.done():  # pieces of a split batch, waiting for a sibling
                self.inflight = asyncio.ensure_future(self._finish_waiting())
            self._space.clear()
            await self._space.wait()
        self._waiting.append(ScoredBatch(guard, scored, dead, payloads))
        guard.unscored -= 1
        if guard.unscored <= 0 and (self.inflight is None or self.inflight.done()):
            self.inflight = asyncio.ensure_future(self._finish_waiting())

    def _take_group(self) -> list[ScoredBatch]:
        """The oldest waiting batch and those after it, while they fit in one insert of STORE_GROUP_ROWS."""
        group = [self._waiting.popleft()]
        rows = len(group[0].scored)
        while self._waiting and rows + len(self._waiting[0].scored) <= STORE_GROUP_ROWS:
            rows += len(self._waiting[0].scored)
            group.append(self._waiting.popleft())
        self._space.set()
        return group

    async def _finish_waiting(self) -> None:
        """Store the waiting batches in order, a group per insert; publish each group while the next is stored.

        Ends when nothing waits and nothing is being published (``_score`` starts it again), so the
        check "is a finisher running" in ``_score`` never misses a batch.
        """
        loop = asyncio.get_running_loop()
        publishing: asyncio.Future[None] | None = None
        while True:
            if not self._waiting:
                if publishing is None:
                    return
                await publishing  # then look again: batches may have arrived meanwhile
                publishing = None
                continue
            group = self._take_group()
            scored = [s for b in group for s in b.scored]
            try:
                store_s = await loop.run_in_executor(self.store_pool, self._store_batch, scored)
            except WorkerStopping as exc:
                log.warning("%s", exc)  # this group and those waiting stay unacked: redelivered later
                self._waiting.clear()
                self._space.set()
                continue
            stored_at = utcnow()
            if publishing is not None:  # groups are published (and acked) in order
                await publishing
            publishing = asyncio.ensure_future(self._publish_group(group, scored, store_s, stored_at))

    async def _publish_group(
        self, group: list[ScoredBatch], scored: list[ScoredItem], store_s: float, stored_at: datetime
    ) -> None:
        """Publish a stored group, count it, and only then release its offsets for commit."""
        dead = [d for b in group for d in b.dead]
        try:
            await self._publish([p for b in group for p in b.payloads], dead)
        except WorkerStopping as exc:
            log.warning("%s", exc)
            return
        m = self.metrics
        m.store_seconds.observe(store_s)
        m.stored.inc(len(scored))
        # one increment per label set, not per item
        for (topic, sentiment), n in collections.Counter((s.topic, s.sentiment) for s in scored).items():
            m.scored.labels(topic, sentiment).inc(n)
        reasons = collections.Counter(d.reason for d in dead)
        for reason, n in reasons.items():
            m.dead_lettered.labels(reason).inc(n)
        lat = [(stored_at - s.item.ingested_at).total_seconds() for s in scored]
        observe = m.end_to_end_seconds.observe
        for seconds in lat:
            observe(seconds if seconds > 0.0 else 0.0)
        with self.stats.lock:
            self.stats.stored += len(scored)
            self.stats.store_s += store_s
            self.stats.last_stored_t = time.monotonic()
            floor = self.stats.latency_floor
            if floor is None:
                self.stats.latencies.extend(lat)
            else:
                self.stats.latencies.extend(x for s, x in zip(scored, lat, strict=True) if s.item.ingested_at >= floor)
            self.stats.dead_lettered.update(reasons)
        for b in group:
            if not b.guard.release():
                continue  # a piece of a batch split across model calls; its last piece acks the batch
            for ev in b.guard.events:
                key = (ev.message.topic, ev.message.partition)
                if ev.message.offset > self.stored_offsets.get(key, -1):
                    self.stored_offsets[key] = ev.message.offset

    async def _publish(self, payloads: list[Record], dead: list[DeadLetter]) -> None:
        """Send the scored items' messages and the dead letters; wait for the broker's acks (retrying until it answers).

        Whole record batches per partition through the app's aiokafka producer
        (:func:`finsent.stream.publish.send_batches`), then one wait for every batch's ack:
        ``Topic.send`` or ``producer.send`` per item cost more than encoding the items.
        """
        delay = RETRY_FIRST_S
        while True:
            try:
                producer = await self.scored_topic.app.maybe_start_producer()
                aio = producer._ensure_producer()  # faust-streaming's aiokafka producer (tests/test_faust_tuning.py)
                scored_name, dlq_name = self.scored_topic.get_topic_name(), self.dlq_topic.get_topic_name()
                futs = await send_batches(aio, scored_name, payloads)
                futs += await send_batches(aio, dlq_name, [(d.key, d.body, key_hash(d.key)) for d in dead])
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
                    "%.2fs", len(payloads), len(dead), type(exc).__name__, " ".join(str(exc).split())[:200], delay,
                )
                if self.stopping.is_set() or self.draining.is_set():
                    raise WorkerStopping("stopped while Kafka was failing; batch left unacked") from None
                await self._redeclare_topics()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def _redeclare_topics(self) -> None:
        """(Re)create every topic the worker uses, at most once per 10 s, off the event loop.

        A broker that lost its topics (a memory-only broker restarted) re-creates only those that
        clients auto-create, with default settings, and not Faust's internal ones: the alert counts
        topic then fails every commit. Best effort: a broker that is still down is retried later.
        """
        now = time.monotonic()
        if now - self._redeclared_at < 10.0:
            return
        self._redeclared_at = now
        from finsent.stream.kafka import ensure_topics

        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(None, ensure_topics, self.settings, None, 5.0), 8.0)
        except Exception as exc:  # the broker is still away; the next failure tries again
            log.debug("re-declaring topics failed: %s", exc)

    def _update_lag(self, messages: Sequence[RawMessage]) -> None:
        """Remember the last offset seen per partition, then refresh the lag gauge."""
        for msg in messages:
            key = (msg.topic, msg.partition)
            if msg.offset > self.last_offsets.get(key, -1):
                self.last_offsets[key] = msg.offset
        self.refresh_lag()

    def refresh_lag(self) -> None:
        """``log end - next offset to store`` per partition (also run by a timer, so it shows when idle).

        Measured from the last *stored* offset, not the last one taken: during a store outage the
        worker stops taking (backpressure) and the lag keeps growing with the log, which is the
        moment an operator needs it true. The log end is the larger of the fetch responses' highwater
        and the last end offset asked of the broker (:mod:`finsent.stream.lag`: the highwater freezes
        when backpressure stops fetching); it is clamped at 0 and only an operator's gauge, never
        used for decisions (see :meth:`check_positions` for the one that is).
        """
        if self.consumer is None:
            return
        from faust.types import TP

        for (topic, partition), seen in list(self.last_offsets.items()):
            try:
                hw = self.consumer.highwater(TP(topic, partition))
            except Exception:  # not assigned any more, or the broker did not say
                hw = None
            done = self.stored_offsets.get((topic, partition), -1)
            end = max(int(hw) if hw is not None else seen + 1, self.lag.end_of(topic, partition))
            self.metrics.consumer_lag.labels(topic, str(partition)).set(max(end - done - 1, 0))

    def forget_partitions(self, tps: Any) -> None:
        """A rebalance revoked ``tps``: their offsets are another worker's business now."""
        for tp in tps:
            key = (tp.topic, tp.partition)
            for table in (self.last_offsets, self.stored_offsets, self.behind):
                table.pop(key, None)
            self.lag.forget(key)

    async def check_positions(self) -> list[tuple[str, int]]:
        """Start a partition again from its earliest offset when its log ends below the worker's position.

        That happens when the broker lost the log: a restart of a memory-only broker (the embedded
        Tansu), a topic deleted and re-created, or an unclean leader election. Faust would otherwise
        drop every new record below its old read offset, silently (defect seen with 971 of 3,000
        items never stored). Re-reading from the earliest offset is safe because the store dedups
        by item id. The evidence must hold at two checks in a row, with the position unchanged, so a
        highwater that is briefly stale never triggers a re-read. Returns the partitions reset.
        """
        consumer = self.consumer
        if consumer is None:
            return []
        from faust.types import TP

        reset: list[tuple[str, int]] = []
        for key, seen in list(self.last_offsets.items()):
            try:
                hw = consumer.highwater(TP(*key))
            except Exception:
                hw = None
            if hw is None or int(hw) >= seen + 1:
                self.behind.pop(key, None)
                continue
            if self.behind.get(key) != seen:
                self.behind[key] = seen  # first sighting: look again at the next check
                continue
            log.warning(
                "partition log behind the worker's position: %s[%d] ends at offset %d, the worker is at %d; "
                "the broker lost this log (a memory-only broker restarted, or the topic was re-created). "
                "Reading it again from the earliest offset (the store keeps each item once)",
                key[0], key[1], int(hw), seen + 1,
            )
            await self._restart_partition(TP(*key))
            for table in (self.last_offsets, self.stored_offsets, self.behind):
                table.pop(key, None)
            reset.append(key)
        if reset:
            self.metrics.partition_resets.inc(len(reset))
            await self._redeclare_topics()
        return reset

    async def _restart_partition(self, tp: Any) -> None:
        """Seek ``tp`` to offset 0 and clear Faust's bookkeeping of it (read/committed offsets, acks, gaps).

        Faust ignores acks below the committed offset it remembers and drops records below its
        read offset, so both must go; the fields are faust-streaming 0.15's (``transport/consumer.py``).
        """
        consumer = self.consumer
        for name in ("_committed_offset", "_read_offset"):
            table = getattr(consumer, name, None)
            if table is not None:
                table[tp] = None
        for name in ("_acked", "_acked_index", "_gap"):
            table = getattr(consumer, name, None)
            if table is not None:
                table.pop(tp, None)
        await consumer.seek(tp, 0)

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Let the batch in flight finish storing (called when the agent stops)."""
        self.draining.set()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # the batches in the model, then those taken while it was busy
            while self._pending and len(self.scoring) < self.settings.model_calls:
                self._start_scoring()
            if not self.scoring:
                break
            await asyncio.wait(set(self.scoring), timeout=max(0.1, deadline - time.monotonic()),
                               return_when=asyncio.FIRST_COMPLETED)
        if self.inflight is not None and not self.inflight.done():
            done, _ = await asyncio.wait({self.inflight}, timeout=max(0.1, deadline - time.monotonic()))
            if not done:
                log.warning("stopping with a batch still being stored; it stays unacked and will be redelivered")
                self.stopping.set()


def faust_datadir(cache_dir: Path) -> Path:
    """A private data directory for one Faust app, under ``<cache_dir>/faust/<pid>-*``; removed at close.

    Faust wants one even without tables. They used to be ``finsent-faust-*`` temp directories, left
    behind by every worker that was SIGKILLed; now they live in the one documented cache directory,
    and each new app first removes those of processes that no longer exist.
    """
    base = cache_dir / "faust"
    base.mkdir(parents=True, exist_ok=True)
    for old in base.iterdir():
        pid = old.name.split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # its process is gone: nobody will clean it up but us
            shutil.rmtree(old, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=base))


def load_classifier(settings: Settings) -> Any:
    """The model a worker starts with: the registry's production version, else FINSENT_MODEL_DIR."""
    from finsent.models.runtime import Classifier
    from finsent.stream.reload import startup_model_dir

    return Classifier.load(
        startup_model_dir(settings), variant=settings.model_variant, threads=settings.call_threads,
        cache_dir=settings.cache_dir, text_cache_size=settings.model_cache_size, spinning=settings.model_spinning,
    )


@dataclass(frozen=True)
class ScoringWorker:
    """One scoring worker: the Faust app (the edge), its pipeline (:class:`Scorer`) and the extensions' context."""

    app: faust.App
    scorer: Scorer
    context: WorkerContext

    def close(self) -> None:
        """Close the extensions, the pipeline's executors and the store (after the app stopped)."""
        self.scorer.close()


def create_app(settings: Settings, **kwargs: Any) -> faust.App:
    """The Faust app of :func:`create_worker` (for callers that only look at its configuration)."""
    return create_worker(settings, **kwargs).app


def create_worker(
    settings: Settings,
    *,
    classifier: Any = None,
    store: Any = None,
    app_id: str | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
    commit_interval_s: float = 1.0,
    stats: WorkerStats | None = None,
    extensions: Sequence[Extension] = (),
    registry: CollectorRegistry | None = None,
) -> ScoringWorker:
    """The Faust app with the scoring agent, its :class:`Scorer` and the :class:`WorkerContext` of its extensions.

    ``classifier``/``store`` may be given (tests, the demo); otherwise the classifier is loaded
    from the settings now (registry production first) and the store is opened on the first batch (in
    the store thread). An app that loaded its own model follows the registry's production alias (hot
    reload, :mod:`finsent.stream.reload`); one given a classifier keeps it.
    ``extensions`` are called with the app and the :class:`~finsent.stream.context.WorkerContext` to add
    agents of their own (the in-stream alert detector, the drift timer); ``registry`` is where the
    worker's metrics live (default: the process-wide one that ``/metrics`` serves).
    """
    follow_registry = classifier is None
    if classifier is None:
        classifier = load_classifier(settings)
    if store is not None:

        def store_factory() -> Any:
            store.ensure_schema()
            return store

    else:
        from finsent.stream.store import store_from_settings

        def store_factory() -> Any:
            s = store_from_settings(settings)
            s.ensure_schema()
            return s

    group = app_id or settings.consumer_group
    datadir = faust_datadir(Path(settings.cache_dir))
    session_s = settings.session_timeout_ms / 1000
    app = faust.App(
        group,
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
    holder = ClassifierHolder(classifier)
    scorer = Scorer(settings, holder, store_factory, stats, owns_store=store is None, registry=registry)
    scorer.scored_topic = app.topic(settings.topic_scored, key_type=bytes, value_type=bytes)
    scorer.dlq_topic = app.topic(settings.topic_dlq, key_type=bytes, value_type=bytes)
    raw_topic = app.topic(settings.topic_raw, key_type=bytes, value_type=bytes, allow_empty=True)
    scorer.datadir = datadir
    faust_tuning.install(app)
    scorer.metrics.model_info.labels(
        str(getattr(classifier, "version", "?")), str(getattr(classifier, "provider", "?"))
    ).set(1)

    if follow_registry:
        from finsent.stream.reload import attach as follow_production

        follow_production(app, scorer, settings)

    @app.on_partitions_assigned.connect
    async def _joined(sender: Any, assigned: Any, **kwargs: Any) -> None:
        scorer.joined = True

    @app.on_partitions_revoked.connect
    async def _revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        scorer.forget_partitions(revoked)

    @app.timer(interval=POSITION_CHECK_S)
    async def refresh_lag() -> None:
        if scorer.joined:
            await scorer.lag.refresh(scorer.consumer, scorer.stored_offsets)
        scorer.refresh_lag()
        if scorer.joined:
            await scorer.check_positions()

    @app.agent(raw_topic, name="finsent.score", concurrency=1)
    async def score(stream: faust.StreamT) -> None:
        scorer.consumer = app.consumer
        try:
            async for events in stream.take_events(settings.batch_max, within=settings.batch_within_s):
                await scorer.handle(events)
        finally:
            await scorer.drain()

    for extend in extensions:  # e.g. finsent.alerts.agent.attach: the composition root decides, not this module
        extend(app, scorer.context)
    return ScoringWorker(app, scorer, scorer.context)

