"""The Faust edge of the scoring worker: every contact with Faust and, through it, aiokafka, is in this module.

The pipeline (:mod:`finsent.stream.pipeline`) knows messages, guards and callables; this module turns a
Faust app into those. It builds the app (:func:`make_app`), runs the scoring agent (``take_events``
batches handed to :meth:`~finsent.stream.worker.Scorer.handle`), the position timer and the rebalance
signals (:func:`run_scorer`), gives the publish stage a ``send`` over the app's producer
(:class:`FaustEdge`), and restarts a partition at an offset (:func:`restart_partition`: a log the broker
lost, messages the consumer passed over). The raw topic's commits are the scorer's commit frontier, not
Faust's acks (:class:`_Consumer`). Replacing Faust means replacing this module.

Three measured costs of faust-streaming 0.15 on the hot path are changed here, for this app only
(its own Transport, Consumer and consumer-thread subclasses, chosen by :class:`ScoringApp`; no
class of Faust or aiokafka is modified, so another Faust app in the process is the stock one):

* :data:`FETCH_MAX_WAIT_MS`: Faust passes a literal 1500 ms fetch wait to aiokafka. Tansu answers a
  fetch only when the wait is over, which added ~300 ms median delivery delay.
* :class:`LeanMonitor`: Faust's Monitor keeps per-record statistics that finsent never reads.
* the delivery fast path (:meth:`_Consumer.wait_first`): Faust hands every fetched record to its
  streams through mode's ``wait_first``, a race of four new tasks that is only needed while the
  delivery waits (``bench pipeline --plumbing`` measures what it is worth).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust
from faust.sensors import Monitor
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from finsent.core.settings import Settings
from finsent.stream.kafka import faust_credentials
from finsent.stream.pipeline.offsets import Frontier
from finsent.stream.publish import Record, send_batches

if TYPE_CHECKING:
    from finsent.stream.worker import Scorer

log = logging.getLogger(__name__)

#: How often the lag gauge is refreshed and partitions are checked for a log that ends below the
#: worker's position (a reset takes two checks in a row, so about twice this after the broker is back).
POSITION_CHECK_S = 3.0

#: How long a fetch may wait at the broker for data. faust-streaming hard-codes 1500 ms; that is harmless
#: with Kafka (a fetch returns as soon as data arrives) but Tansu answers a fetch only when the wait is
#: over, which measured as ~300 ms median / 600+ ms worst added delivery delay at 1500 ms versus ~10 ms at
#: 100 ms. An idle consumer then sends ~10 small fetches/s, which costs nothing worth measuring.
FETCH_MAX_WAIT_MS = 100


class LeanMonitor(Monitor):
    """Faust's Monitor without its per-record bookkeeping.

    Faust calls four sensor hooks for every record (message in, stream event in and out, message
    out); its Monitor keeps counters, timestamps and a runtime history there that finsent never
    reads: the worker's own Prometheus metrics count per batch. In the plumbing profile these
    hooks were ~4% of the event loop. The commit, send and assignment statistics stay, and so does
    ``stream_inbound_time`` (one dict store per record): Faust's liveness check reads it and, without
    it, logs a false "Stream has not started processing" ERROR every 30 s for each lagging partition.
    """

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> dict | None:
        self.stream_inbound_time[tp] = time.monotonic()  # read by the consumer's verify_event_path
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None


class _Continued:
    """An awaitable that carries on a coroutine already stepped once, which then yielded ``pending``.

    It forwards every step (a value sent, an exception thrown, e.g. the cancellation of the task
    running it) to the coroutine, so the task running it behaves as if it had run the coroutine
    from the start.
    """

    __slots__ = ("coro", "pending")

    def __init__(self, coro: Any, pending: Any) -> None:
        self.coro, self.pending = coro, pending

    def __await__(self) -> Generator[Any, None, Any]:
        coro, pending = self.coro, self.pending
        while True:
            try:
                yield pending
            except BaseException as exc:  # noqa: BLE001 - forwarded, as a task forwards it
                try:
                    pending = coro.throw(exc)
                except StopIteration as done:
                    return done.value
                continue
            try:
                pending = coro.send(None)
            except StopIteration as done:
                return done.value


_SUSPEND_WAIT = asyncio.Event.wait.__code__  # Consumer.suspend_flow is an asyncio.Event


async def fast_wait_first(service: Any, original: Any, *coros: Any, timeout: Any = None) -> Any:
    """``service.wait_first(*coros)`` as mode runs it, minus the race when the first coroutine need not wait.

    ``Consumer._drain_messages`` hands every record over with
    ``await self.wait_first(callback(message), self.suspend_flow.wait())``: per record four new
    tasks (the delivery, the suspension, the service's stopped and crashed events), an
    ``asyncio.wait`` and three cancellations, each one more turn of the event loop. The race
    only matters while the delivery waits (a stream's buffer is full) and a rebalance suspends
    the flow meanwhile. So, for exactly that call and only while nothing is suspended, stopped or
    crashed: step the delivery once; if it finishes without waiting (the usual case) return what
    ``wait_first`` would have returned; if it has to wait, the rest of it runs in the original race,
    unchanged. Every other call goes to ``original``. (The pair is recognised by the second
    coroutine's code object and its ``self``, plain CPython coroutine attributes.)
    """
    if (
        len(coros) != 2
        or timeout is not None
        or not inspect.iscoroutine(coros[0])
        or getattr(coros[1], "cr_code", None) is not _SUSPEND_WAIT
        or coros[1].cr_frame.f_locals.get("self") is not service.suspend_flow
        or service.suspend_flow.is_set()
        or service._stopped.is_set()
        or service._crashed.is_set()
    ):
        return await original(service, *coros, timeout=timeout)
    from mode.services import WaitResults

    delivery, suspended = coros
    try:
        pending = delivery.send(None)
    except StopIteration as done:
        suspended.close()
        # one turn of the loop per record, as the race gave: without it a fetch of hundreds of
        # records is handed over before the producer's acks, the store's completions and the agent
        # run again, and the pipeline stalls (measured: -30% items/s)
        await asyncio.sleep(0)
        return WaitResults([delivery], [done.value], False)
    except BaseException:
        suspended.close()
        raise
    return await original(service, _Continued(delivery, pending), suspended)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, building its aiokafka consumer with :data:`FETCH_MAX_WAIT_MS`."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # faust-streaming passes fetch_max_wait_ms=1500 to AIOKafkaConsumer's constructor and offers no
        # setting; aiokafka reads this attribute when start() builds its fetcher, so it is set on the
        # instance just built, before start() (no class is changed)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with the delivery fast path, a partition restart, and guarded commits.

    Guarded commits: for the topics in :attr:`guarded` (the raw topic), the offset committed is the
    scorer's :class:`~finsent.stream.pipeline.offsets.Frontier` (stored, contiguously, from where the
    assignment began), never Faust's acks; the class docstring of ``Frontier`` says why. The frontier
    learns where each partition begins when Faust seeks the assignment to its committed offsets.
    """

    #: set by :func:`run_scorer`: the scorer's frontier, and the topics it decides the commits of
    frontier: Frontier | None = None
    guarded: frozenset[str] = frozenset()

    def _new_consumer_thread(self) -> Any:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:
        return await fast_wait_first(self, faust_aiokafka.Consumer.wait_first, *coros, timeout=timeout)

    async def perform_seek(self) -> None:
        """Faust's seek to the committed offsets, then the frontier's start of each newly assigned partition.

        A broker that does not answer the log-start request leaves those partitions unbegun (they commit nothing
        yet); the worker's position check begins them later, so the rebalance itself never fails on it."""
        await super().perform_seek()
        try:
            await self.begin_frontier()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure: begun at the next position check instead
            log.warning(
                "no log start for the newly assigned partitions (%s: %s); their commits wait for the next position "
                "check",
                type(exc).__name__,
                " ".join(str(exc).split())[:200],
            )

    async def begin_frontier(self) -> None:
        """Begin every assigned guarded partition the frontier does not know: at its committed offset, or
        at the log start when it has none or its commit lies below it (where ``auto_offset_reset=earliest``
        reads from)."""
        frontier = self.frontier
        if frontier is None:
            return
        assigned = [tp for tp in self.assignment() if tp.topic in self.guarded]
        fresh = [tp for tp in assigned if not frontier.knows((tp.topic, tp.partition))]
        if not fresh:
            return
        # Faust's committed table, just refreshed from the broker by perform_seek (None: no commit, or 0); a
        # commit below the log start (retention deleted what it pointed at) reads from the log start
        earliest = await self.earliest_offsets(*fresh)
        for tp in fresh:
            start = max(self._committed_offset.get(tp) or 0, int(earliest.get(tp) or 0))
            frontier.begin((tp.topic, tp.partition), start)

    def _new_offset(self, tp: Any) -> int | None:
        frontier = self.frontier
        if frontier is None or tp.topic not in self.guarded:
            return super()._new_offset(tp)
        # Faust's acks of a guarded partition decide nothing: cleared each commit so they stay bounded
        # (the key stays, so the next commit asks the frontier again)
        self._acked[tp].clear()
        self._acked_index[tp].clear()
        self._gap.pop(tp, None)
        return frontier.commit_offset((tp.topic, tp.partition))


class _Producer(faust_aiokafka.Producer):
    """Faust's producer, giving the publish stage aiokafka's producer for whole record batches."""

    def aiokafka_producer(self) -> Any:
        return self._ensure_producer()


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer
    Producer = _Producer


class ScoringApp(faust.App):
    """The worker's Faust app: its transports are :class:`_Transport` (this app only)."""

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)

    def _new_producer_transport(self) -> Any:
        return _Transport(self.conf.broker_producer, self)


def make_app(
    settings: Settings, app_id: str, datadir: Path, loop: asyncio.AbstractEventLoop | None, commit_interval_s: float
) -> faust.App:
    """The Faust app, configured for the scoring worker (why each setting: the comments)."""
    session_s = settings.kafka.session_timeout_ms / 1000
    return ScoringApp(
        app_id,
        broker=[f"kafka://{b}" for b in settings.kafka.broker_list],
        broker_credentials=faust_credentials(settings.kafka),
        loop=loop,
        value_serializer="raw",
        key_serializer="raw",
        autodiscover=False,
        datadir=str(datadir),
        store="memory://",
        web_enabled=False,
        web_host="127.0.0.1",
        monitor=LeanMonitor(),
        topic_partitions=settings.kafka.partitions,
        topic_replication_factor=settings.kafka.replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session_s,
        broker_heartbeat_interval=max(session_s / 5, 0.5),
        broker_commit_interval=commit_interval_s,
        broker_max_poll_records=max(settings.worker.batch_max * 4, 500),
        # Faust's wait_empty would wait forever for offsets the AckGuard keeps unacked (a batch whose
        # store failed): at stop, commit what is acked and leave the rest for redelivery.
        stream_wait_empty=False,
        stream_buffer_maxsize=max(settings.worker.batch_max * 8, 1024),
        producer_acks=-1,
        producer_linger=0.005,
        # a stored group is sent in one burst: a few large record batches per partition instead of one per 16 KB
        producer_max_batch_size=512 * 1024,
        producer_max_request_size=max(settings.kafka.max_message_bytes + 64 * 1024, 1_048_576),
        consumer_max_fetch_size=max(settings.kafka.max_message_bytes + 64 * 1024, 4 * 1_048_576),
    )


class FaustEdge:
    """The publish stage's view of Kafka through one Faust app."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    async def send(self, topic: str, records: Sequence[Record]) -> list[Any]:
        """Whole record batches per partition through the app's aiokafka producer; one future per batch."""
        producer = await self.app.maybe_start_producer()
        return await send_batches(producer.aiokafka_producer(), topic, records)


async def kafka_answers(app: faust.App, timeout_s: float = 2.0) -> bool | None:
    """Whether the brokers answer a metadata request from the app's own producer (None: not started yet).

    This is the worker's evidence of Kafka's health (``finsent worker``'s "lost contact" / "answers
    again" lines and its topic re-declaration): a client call's outcome, not the client libraries'
    log records. aiokafka's public ``AIOKafkaClient.fetch_all_metadata`` raises when no broker answers.
    """
    producer = app.producer
    if not producer.started:
        return None
    try:
        await asyncio.wait_for(producer.aiokafka_producer().client.fetch_all_metadata(), timeout_s)
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - any failure to get metadata is "Kafka does not answer"
        return False
    return True


def highwater(consumer: Any, key: tuple[str, int]) -> int | None:
    """The consumer's last seen highwater of ``key`` (None: not assigned, or the broker did not say)."""
    try:
        hw = consumer.highwater(TP(*key))
    except Exception:  # not assigned any more, or the broker did not say
        return None
    return None if hw is None else int(hw)


async def restart_partition(consumer: Any, key: tuple[str, int], offset: int = 0) -> None:
    """Seek ``key`` to ``offset`` and clear Faust's bookkeeping of it (read/committed offsets, acks, gaps).

    Faust ignores acks below the committed offset it remembers and drops records below its read
    offset, and it has no call that forgets them: the fields are faust-streaming 0.15's
    (``transport/consumer.py``), cleared here and nowhere else.
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
    frontier = getattr(consumer, "frontier", None)
    if frontier is not None and tp.topic in consumer.guarded:
        frontier.restart(key, offset)
    await consumer.seek(tp, offset)


def run_scorer(app: faust.App, scorer: Scorer, settings: Settings) -> None:
    """Add the scoring agent, the position timer and the rebalance signals to ``app``."""
    raw_topic = app.topic(settings.kafka.topic_raw, key_type=bytes, value_type=bytes, allow_empty=True)
    consumer = app.consumer
    if isinstance(consumer, _Consumer):
        consumer.frontier = scorer.frontier
        consumer.guarded = frozenset({settings.kafka.topic_raw})

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
            async for events in stream.take_events(settings.worker.batch_max, within=settings.worker.batch_within_s):
                await scorer.handle(events)
        finally:
            await scorer.drain()
