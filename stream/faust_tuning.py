"""What the worker changes in faust-streaming 0.15.3, and why: three measured costs on its hot path.

faust-streaming, aiokafka and mode-streaming are pinned together in ``pyproject.toml``;
``tests/test_faust_tuning.py`` checks that the Faust code the delivery fast path and the publisher
rely on is still the code they were written against, so a version bump that changes it fails there.

* :data:`FETCH_MAX_WAIT_MS` (:func:`install`): Faust passes a literal 1500 ms fetch wait to aiokafka.
  Tansu answers a fetch only when the wait is over, which added ~300 ms median delivery delay.
* :class:`LeanMonitor`: Faust's Monitor keeps per-record statistics that finsent never reads.
* the delivery fast path (:func:`install`): Faust hands every fetched record to its streams through
  mode's ``wait_first``, a race of four new tasks that is only needed while the delivery waits.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Generator
from typing import Any

from faust.sensors import Monitor

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
    it, logs a false "Stream has not started processing" ERROR every 30 s for each lagging partition
    (seen 22 times in a 15-minute soak).
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
    unchanged. Every other call goes to ``original``.
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


def _install_delivery_fast_path() -> None:
    """Route faust's ``Consumer.wait_first`` through :func:`fast_wait_first`."""
    from faust.transport.consumer import Consumer

    if getattr(Consumer, "_finsent_fast_delivery", False):
        return
    original = Consumer.wait_first

    async def wait_first(self: Any, *coros: Any, timeout: Any = None) -> Any:
        return await fast_wait_first(self, original, *coros, timeout=timeout)

    Consumer.wait_first = wait_first  # type: ignore[method-assign]
    Consumer._finsent_fast_delivery = True  # type: ignore[attr-defined]


def _install_fetch_wait_hook() -> None:
    """Let an app choose its consumer's ``fetch_max_wait_ms`` (``app.finsent_fetch_max_wait_ms``).

    faust-streaming 0.15.3 passes a literal 1500 to ``AIOKafkaConsumer``; we set aiokafka's
    attribute on the consumer it built, before ``start()`` creates the fetcher that reads it.
    """
    from faust.transport.drivers import aiokafka as driver

    cls = driver.AIOKafkaConsumerThread
    if getattr(cls, "_finsent_fetch_hook", False):
        return
    original = cls._create_consumer

    def _create_consumer(self: Any, loop: asyncio.AbstractEventLoop) -> Any:
        consumer = original(self, loop)
        wait = getattr(self.app, "finsent_fetch_max_wait_ms", None)
        if wait is not None and hasattr(consumer, "_fetch_max_wait_ms"):
            consumer._fetch_max_wait_ms = int(wait)
        return consumer

    cls._create_consumer = _create_consumer  # type: ignore[method-assign]
    cls._finsent_fetch_hook = True  # type: ignore[attr-defined]


def install(app: Any) -> None:
    """Apply the hooks (idempotent, process-wide) and set ``app``'s fetch wait."""
    _install_fetch_wait_hook()
    _install_delivery_fast_path()
    app.finsent_fetch_max_wait_ms = FETCH_MAX_WAIT_MS
