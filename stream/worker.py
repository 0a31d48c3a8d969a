"""The scoring worker: ``finsent.raw`` in, stored and published scored rows out, offsets committed after both.

The hot path, top to bottom (:class:`Scorer`, the parts in :mod:`finsent.stream.pipeline`):

1. :meth:`Scorer.handle` -- a batch taken by the Faust agent (:mod:`finsent.stream.faust_adapter`) gets an
   :class:`~finsent.stream.pipeline.offsets.AckGuard` (nothing commits before step 5) and goes to the
   :class:`~finsent.stream.pipeline.scheduler.BatchScheduler` (continuous batching, ``model_calls`` calls at once);
2. :meth:`Scorer._score` -- in the model thread: decode (a defective message becomes a dead letter with its
   reason), score with the classifier in use (one model version per call), encode the scored topic's records;
3. :meth:`Scorer._scored` -- back on the loop, in take order: count, then queue for the
   :class:`~finsent.stream.pipeline.store_stage.StoreStage` (a group per insert, retried, backpressure), whose
   pre-store :class:`~finsent.stream.pipeline.store_stage.Stage`\\ s run first (``create_worker(stages=...)``);
4. :meth:`Scorer._finish` -- the stored group is published
   (:class:`~finsent.stream.pipeline.publish_stage.PublishStage`) while the next group is stored;
5. then, and only then, its guards are released: the offsets may be committed.

A crash or a stop anywhere before 5 leaves the offsets uncommitted: the batch is redelivered, and the store
keeps each item once (its insert is idempotent by id). Readiness is :class:`~finsent.stream.pipeline.health.Health`;
extensions (the alert agent, the drift timer) get a :class:`~finsent.stream.context.WorkerContext`.

Anchor files followed: quix-streams ``quixstreams/checkpointing/checkpoint.py`` (the offset tracker commits
only what its sinks flushed: :mod:`~finsent.stream.pipeline.offsets`), ``quixstreams/sinks/base/batch.py``
(a batching sink that accumulates while busy, retries and applies backpressure:
:mod:`~finsent.stream.pipeline.store_stage`), aiokafka's public ``create_batch``/``send_batch``
(:mod:`finsent.stream.publish`), httpx's transport split (one module owns the third-party edge:
:mod:`finsent.stream.faust_adapter`), prometheus client_python's registry passed in, not global.
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
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from finsent.core.events import ScoredItem
from finsent.core.settings import Settings
from finsent.stream import faust_adapter
from finsent.stream.context import Extension, Extensions, SharedStore, WorkerContext
from finsent.stream.lag import LagMeter
from finsent.stream.metrics import worker_metrics
from finsent.stream.pipeline.health import Health
from finsent.stream.pipeline.offsets import AckGuard, Frontier, Positions
from finsent.stream.pipeline.publish_stage import PublishStage
from finsent.stream.pipeline.retry import RETRY_FIRST_S, RETRY_MAX_S, WorkerStopping
from finsent.stream.pipeline.scheduler import SPLIT_MIN_ITEMS, BatchScheduler
from finsent.stream.pipeline.scoring import (
    ClassifierHolder,
    DeadLetter,
    RawMessage,
    _to_scored,
    decode_and_score,
    decode_batch,
    raw_messages,
    score_items,
)
from finsent.stream.pipeline.store_stage import (
    MAX_WAITING_BATCHES,
    STORE_GROUP_ROWS,
    ScoredBatch,
    Stage,
    StoreStage,
)
from finsent.stream.publish import Record

__all__ = [  # the names other modules and the tests import from here
    "MAX_WAITING_BATCHES",
    "RETRY_FIRST_S",
    "RETRY_MAX_S",
    "SPLIT_MIN_ITEMS",
    "STORE_GROUP_ROWS",
    "AckGuard",
    "ClassifierHolder",
    "DeadLetter",
    "RawMessage",
    "Scorer",
    "ScoringWorker",
    "WorkerStats",
    "WorkerStopping",
    "_to_scored",
    "create_app",
    "create_worker",
    "decode_batch",
    "faust_datadir",
    "load_classifier",
    "score_items",
]

log = logging.getLogger(__name__)

#: A model call's result: scored items, dead letters, the scored topic's records, model seconds.
Scored = tuple[list[ScoredItem], list[DeadLetter], list[Record], float]


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


class Scorer:
    """One worker's pipeline: the parts of :mod:`finsent.stream.pipeline`, wired in the order a batch goes."""

    def __init__(
        self,
        settings: Settings,
        holder: ClassifierHolder,
        store_factory: Callable[[], Any],
        stats: WorkerStats | None = None,
        owns_store: bool = True,
        registry: CollectorRegistry | None = None,
        stages: Sequence[Stage] = (),
    ) -> None:
        self.settings = settings
        self.holder = holder
        self.stats = stats or WorkerStats()
        self.metrics = worker_metrics(registry)
        self.stopping = threading.Event()
        #: set when the agent stops: a batch in flight may finish, but a failing store or broker is not retried
        self.draining = threading.Event()
        self.shared_store = SharedStore(store_factory, owned=owns_store)
        self.extensions = Extensions()
        self.health = Health(holder, self.extensions.ready_checks)
        #: what the extensions get (the alert agent, the drift timer): no attributes on the Faust app
        self.context = WorkerContext(settings, self.shared_store, self.metrics, self.health, holder, self.extensions)
        self.scheduler: BatchScheduler[RawMessage, Scored] = BatchScheduler(
            settings.worker.batch_max, settings.model.model_calls, self._score, self._scored
        )
        self.store_stage = StoreStage(self.shared_store, self.health, self.metrics.store_retries, self.draining, stages)
        #: set by :meth:`bind` (the Faust edge); a test may hand :meth:`_publish` its own
        self.publisher: PublishStage | None = None
        self.positions = Positions()
        #: what each raw partition commits: stored, contiguously, from where its assignment began
        self.frontier = Frontier()
        #: the lag gauge from fresh end offsets (the highwater goes stale under backpressure)
        self.lag = LagMeter(self.metrics.consumer_lag, [settings.kafka.topic_raw])
        #: the Faust consumer (set when the agent starts): highwaters, seeks
        self.consumer: Any = None
        self.datadir: Path | None = None
        self._redeclared_at = -1e9

    def bind(self, edge: faust_adapter.FaustEdge) -> None:
        """Publish through ``edge`` (the Faust app's producer)."""
        self.publisher = PublishStage(
            edge.send,
            self.settings.kafka.topic_scored,
            self.settings.kafka.topic_dlq,
            self._redeclare_topics,
            self.stopping,
            self.draining,
        )

    # -- the hot path, in the order a batch goes --------------------------------------------
    async def handle(self, events: Sequence[Any]) -> None:
        """Take one batch and return at once (unless a model call's worth already waits), so Faust refills meanwhile."""
        if self.stats.first_batch_t is None:
            self.stats.first_batch_t = time.monotonic()
        guard = AckGuard(events)  # before any work: nothing of this batch commits until released
        messages = raw_messages(events)
        self.metrics.consumed.labels(self.settings.kafka.topic_raw).inc(len(messages))
        self.metrics.batch_size.observe(len(messages))
        self.positions.note_taken(((m.topic, m.partition), m.offset) for m in messages)
        self.refresh_lag()
        await self.scheduler.take(guard, messages)

    def _score(self, messages: list[RawMessage]) -> Scored:
        """Model thread: decode, score with the classifier in use (one version per call), encode the records."""
        return decode_and_score(
            self.holder.current, messages, self.settings.kafka.max_message_bytes, self.settings.model.max_text_chars
        )

    async def _scored(self, guard: AckGuard, messages: list[RawMessage], result: Scored) -> None:
        """A model call's result, in take order: count it, then queue it for the store (may wait: backpressure)."""
        scored, dead, payloads, infer_s = result
        self.metrics.inference_seconds.observe(infer_s)
        with self.stats.lock:
            self.stats.consumed += len(messages)
            self.stats.batches += 1
            self.stats.inference_s += infer_s
            if scored:
                self.stats.batch_versions.append(frozenset(s.model_version for s in scored))
        await self.store_stage.put(ScoredBatch(guard, scored, dead, payloads), self._finish)

    async def _finish(
        self, group: list[ScoredBatch], scored: list[ScoredItem], store_s: float, stored_at: datetime
    ) -> None:
        """A stored group: publish it, count it, and only then release its offsets for commit."""
        dead = [d for b in group for d in b.dead]
        try:
            await self._publish([p for b in group for p in b.payloads], dead)
        except WorkerStopping as exc:
            log.warning("%s", exc)
            return
        self._count(scored, dead, store_s, stored_at)
        for b in group:
            if b.guard.release():  # False for all but the last piece of a batch split across model calls
                self.positions.note_stored(b.guard)
                self.frontier.stored(
                    ((ev.message.topic, ev.message.partition), ev.message.offset) for ev in b.guard.events
                )

    async def _publish(self, payloads: list[Record], dead: list[DeadLetter]) -> None:
        assert self.publisher is not None, "bind() the scorer to its Kafka edge first"
        await self.publisher.publish(payloads, dead)

    def _count(self, scored: list[ScoredItem], dead: list[DeadLetter], store_s: float, stored_at: datetime) -> None:
        """Metrics (one increment per label set, not per item) and the in-process stats of a finished group."""
        m = self.metrics
        m.store_seconds.observe(store_s)
        m.stored.inc(len(scored))
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

    # -- stopping -------------------------------------------------------------------------
    async def drain(self, timeout_s: float = 30.0) -> None:
        """Let the batches in flight finish storing (called when the agent stops)."""
        self.draining.set()
        deadline = time.monotonic() + timeout_s
        await self.scheduler.drain(deadline, time.monotonic)  # those in the model, then those taken while busy
        if not await self.store_stage.wait_idle(deadline - time.monotonic()):
            log.warning("stopping with a batch still being stored; it stays unacked and will be redelivered")
            self.stopping.set()

    def close(self) -> None:
        self.stopping.set()
        self.draining.set()
        self.extensions.close()
        self.scheduler.close()
        self.store_stage.close()
        self.shared_store.close()
        if self.datadir is not None:
            shutil.rmtree(self.datadir, ignore_errors=True)

    # -- health and positions -------------------------------------------------------------
    def readiness(self) -> tuple[bool, str]:
        """``/readyz`` (:class:`~finsent.stream.pipeline.health.Health`)."""
        return self.health.readiness()

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

    def open_store(self) -> Any:
        """The worker's store, opened on first use; the extensions share it (``context.store``)."""
        return self.shared_store.get()

    @property
    def last_offsets(self) -> dict[tuple[str, int], int]:
        return self.positions.taken

    @last_offsets.setter
    def last_offsets(self, value: dict[tuple[str, int], int]) -> None:
        self.positions.taken = value

    @property
    def stored_offsets(self) -> dict[tuple[str, int], int]:
        return self.positions.stored

    @stored_offsets.setter
    def stored_offsets(self, value: dict[tuple[str, int], int]) -> None:
        self.positions.stored = value

    def refresh_lag(self) -> None:
        """Set the lag gauge from the positions (a timer runs it too, so it shows when idle); never for decisions."""
        if self.consumer is None:
            return
        consumer = self.consumer
        lag = self.positions.lag(lambda key: faust_adapter.highwater(consumer, key), lambda key: self.lag.end_of(*key))
        for (topic, partition), n in lag.items():
            self.metrics.consumer_lag.labels(topic, str(partition)).set(n)

    def forget_partitions(self, keys: Sequence[tuple[str, int]]) -> None:
        """A rebalance revoked ``keys``: their offsets are another worker's business now."""
        for key in keys:
            self.positions.forget(key)
            self.frontier.forget(key)
            self.lag.forget(key)

    async def check_positions(self) -> list[tuple[str, int]]:
        """Read a partition again from its earliest offset when its log ends below the worker's position.

        That happens when the broker lost the log: a restart of a memory-only broker (the embedded
        Tansu), a topic deleted and re-created, or an unclean leader election. Faust would otherwise
        drop every new record below its old read offset, silently (defect seen with 971 of 3,000
        items never stored). Re-reading from the earliest offset is safe because the store dedups
        by item id. Returns the partitions reset (:meth:`Positions.lost_logs` says when).
        """
        consumer = self.consumer
        if consumer is None:
            return []
        reset: list[tuple[str, int]] = []
        for key, end, position in self.positions.lost_logs(lambda k: faust_adapter.highwater(consumer, k)):
            log.warning(
                "partition log behind the worker's position: %s[%d] ends at offset %d, the worker is at %d; "
                "the broker lost this log (a memory-only broker restarted, or the topic was re-created). "
                "Reading it again from the earliest offset (the store keeps each item once)",
                key[0],
                key[1],
                end,
                position,
            )
            await faust_adapter.restart_partition(consumer, key)
            self.positions.forget(key)
            reset.append(key)
        if reset:
            self.metrics.partition_resets.inc(len(reset))
            await self._redeclare_topics()
        return reset + await self._fill_holes(consumer)

    async def _fill_holes(self, consumer: Any) -> list[tuple[str, int]]:
        """Read a raw partition again from its commit frontier when messages above it were stored but the
        ones at it never came (the consumer passed over them: :class:`Frontier` says when and why)."""
        begin = getattr(consumer, "begin_frontier", None)
        if begin is not None and self.frontier.unbegun():
            try:
                await begin()  # a partition assigned without Faust's seek (or whose log start was not answered)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the broker did not answer: the next check asks again
                log.warning("no log start for a newly assigned partition yet (%s); asking again at the next check", exc)
        positions = self.positions

        def log_end(key: tuple[str, int]) -> int:  # the highwater, or the fresh end if larger (a stale highwater)
            return max(faust_adapter.highwater(consumer, key) or 0, self.lag.end_of(*key))

        def idle(key: tuple[str, int]) -> bool:  # messages of one partition are stored in the order taken
            return positions.taken.get(key) == positions.stored.get(key)

        holes = self.frontier.holes(log_end, idle)
        earliest = getattr(consumer, "earliest_offsets", None)
        if holes and earliest is not None:  # a frontier below the log start (retention) reads from the start
            try:
                starts = await earliest(*[faust_adapter.TP(*key) for key, _ in holes])
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - unknown: seek to the frontier; the consumer's reset policy applies
                starts = {}
            holes = [(key, max(offset, int(starts.get(faust_adapter.TP(*key)) or 0))) for key, offset in holes]
        done: list[tuple[str, int]] = []
        for key, offset in holes:
            log.warning(
                "%s[%d]: messages from offset %d never reached the worker (the consumer passed over them "
                "after a rebalance); reading the partition again from there (the store keeps each item once)",
                key[0],
                key[1],
                offset,
            )
            try:
                await faust_adapter.restart_partition(consumer, key, offset)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - revoked meanwhile, or the client refused: the next check
                log.warning("%s[%d]: the seek back failed (%s); the next position check tries again", *key, exc)
                continue
            self.positions.forget(key)
            done.append(key)
        if done:
            self.metrics.partition_resets.inc(len(done))
        return done

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
        startup_model_dir(settings),
        variant=settings.model.model_variant,
        threads=settings.model.call_threads,
        cache_dir=settings.model.cache_dir,
        text_cache_size=settings.model.model_cache_size,
        spinning=settings.model.model_spinning,
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
    stages: Sequence[Stage] = (),
    registry: CollectorRegistry | None = None,
) -> ScoringWorker:
    """The composition of one worker: classifier, store, pipeline, the Faust edge, then the extensions.

    ``classifier``/``store`` may be given (tests, the demo); otherwise the classifier is loaded
    from the settings now (registry production first) and the store is opened on the first batch (in
    the store thread). An app that loaded its own model follows the registry's production alias (hot
    reload, :mod:`finsent.stream.reload`); one given a classifier keeps it. ``stages`` run between
    scoring and storing (:class:`~finsent.stream.pipeline.store_stage.Stage`). ``extensions`` are called
    with the app and the :class:`~finsent.stream.context.WorkerContext` to add agents of their own (the
    in-stream alert detector, the drift timer); ``registry`` is where the worker's metrics live
    (default: the process-wide one that ``/metrics`` serves).
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

    scorer = Scorer(
        settings,
        ClassifierHolder(classifier),
        store_factory,
        stats,
        owns_store=store is None,
        registry=registry,
        stages=stages,
    )
    scorer.datadir = faust_datadir(Path(settings.model.cache_dir))
    app = faust_adapter.make_app(
        settings, app_id or settings.kafka.consumer_group, scorer.datadir, loop, commit_interval_s
    )
    scorer.bind(faust_adapter.FaustEdge(app))
    scorer.metrics.model_info.labels(
        str(getattr(classifier, "version", "?")), str(getattr(classifier, "provider", "?"))
    ).set(1)
    if follow_registry:
        from finsent.stream.reload import attach as follow_production

        follow_production(app, scorer.context)
    faust_adapter.run_scorer(app, scorer, settings)
    for extend in extensions:  # e.g. finsent.alerts.agent.attach: the composition root decides, not this module
        extend(app, scorer.context)
    return ScoringWorker(app, scorer, scorer.context)
