"""The Faust adapter (``finsent.stream.faust_adapter``): what it changes, for its own app only, pinned by behaviour.

The delivery fast path must behave exactly as mode's ``wait_first`` race it short-cuts, so each
scenario below runs against both and compares what the caller and the queue see: a delivery that
finishes at once, one that yields a bare turn of the loop, one that waits for space and gets it,
one that waits and is overtaken by a suspension (the rebalance case), one cancelled from outside,
and deliveries that raise before and after waiting. Then: the worker's app really uses the
adapter's consumer (fast path, fetch wait) and producer, and nothing of Faust or aiokafka is
changed for any other app in the process (no class is patched).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mode import Service

from finsent.stream.faust_adapter import FETCH_MAX_WAIT_MS, LeanMonitor, fast_wait_first


class _Consumer(Service):
    """The two things ``wait_first``'s caller has: the service events and ``suspend_flow``."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()


def _original(svc: Any, *coros: Any, timeout: Any = None) -> Any:
    return Service.wait_first(svc, *coros, timeout=timeout)


def _fast(svc: Any, *coros: Any, timeout: Any = None) -> Any:
    return fast_wait_first(svc, Service.wait_first, *coros, timeout=timeout)


async def _deliver(q: asyncio.Queue, item: str, seen: list[str], before: Callable | None = None) -> str:
    """What the conductor does per record: put it in a stream's queue (waits while the queue is full)."""
    try:
        if before is not None:
            await before()
        await q.put(item)
    except asyncio.CancelledError:
        seen.append("cancelled")
        raise
    seen.append("delivered")
    return f"ok:{item}"


async def _bare_yield() -> None:
    await asyncio.sleep(0)


async def _raise_after_wait() -> None:
    await asyncio.sleep(0.01)
    raise ValueError("delivery failed")


async def _scenario(wait_first: Callable, name: str) -> dict[str, Any]:
    svc = _Consumer()
    q: asyncio.Queue = asyncio.Queue(maxsize=1)
    seen: list[str] = []
    if name in ("waits_then_space", "waits_then_suspended", "cancelled_while_waiting"):
        q.put_nowait("old")
    if name == "already_suspended":
        svc.suspend_flow.set()
    before = {"bare_yield": _bare_yield, "raises_after_wait": _raise_after_wait}.get(name)

    async def raise_now() -> None:
        raise ValueError("delivery failed")

    if name == "raises_at_once":
        before = raise_now

    async def later() -> None:
        await asyncio.sleep(0.02)
        if name == "waits_then_space":
            q.get_nowait()
        elif name == "waits_then_suspended":
            svc.suspend_flow.set()

    helper = asyncio.ensure_future(later())
    call = asyncio.ensure_future(wait_first(svc, _deliver(q, "new", seen, before), svc.suspend_flow.wait()))
    if name == "cancelled_while_waiting":
        await asyncio.sleep(0.02)
        call.cancel()
    try:
        async with asyncio.timeout(10):  # a fast path that never returns fails here instead of hanging
            res = await call
        outcome: Any = (
            "returned",
            res.stopped,
            [r for r in res.results if r is not True],
            any(r is True for r in res.results),
        )
    except asyncio.CancelledError:
        outcome = ("cancelled",)
    except ValueError as exc:
        outcome = ("raised", str(exc))
    except TimeoutError:
        outcome = ("timed out",)
    await helper
    await asyncio.sleep(0.01)  # let cancelled tasks finish
    queue = []
    while not q.empty():
        queue.append(q.get_nowait())
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    return {"outcome": outcome, "seen": seen, "queue": queue, "tasks_left": len(leftover)}


SCENARIOS = [
    "at_once",
    "bare_yield",
    "waits_then_space",
    "waits_then_suspended",
    "cancelled_while_waiting",
    "raises_at_once",
    "raises_after_wait",
    "already_suspended",
]


@pytest.mark.parametrize("name", SCENARIOS)
def test_fast_path_behaves_like_the_race_it_replaces(name: str) -> None:
    original = asyncio.run(_scenario(_original, name))
    fast = asyncio.run(_scenario(_fast, name))
    assert fast == original, f"{name}: fast {fast} != mode's wait_first {original}"
    assert fast["tasks_left"] == 0


def test_the_scenarios_tell_the_cases_apart() -> None:
    """Not vacuous: the scenarios do produce different outcomes (a delivery, a cancelled one, an error)."""
    names = ("at_once", "waits_then_suspended", "raises_at_once")
    got = {n: asyncio.run(_scenario(_fast, n)) for n in names}
    assert got["at_once"]["outcome"] == ("returned", False, ["ok:new"], False)
    assert got["at_once"]["queue"] == ["new"]
    assert got["waits_then_suspended"]["seen"] == ["cancelled"] and got["waits_then_suspended"]["queue"] == ["old"]
    assert got["waits_then_suspended"]["outcome"] == ("returned", False, [], True)
    assert got["raises_at_once"]["outcome"] == ("raised", "delivery failed")


def test_a_delivery_that_needs_no_wait_creates_no_task() -> None:
    async def run() -> int:
        svc = _Consumer()
        q: asyncio.Queue = asyncio.Queue()
        created = 0
        loop = asyncio.get_running_loop()
        factory = loop.get_task_factory()

        def counting(loop: Any, coro: Any, **kw: Any) -> asyncio.Task:
            nonlocal created
            created += 1
            return asyncio.Task(coro, loop=loop, **kw) if factory is None else factory(loop, coro, **kw)

        loop.set_task_factory(counting)
        for i in range(50):
            await _fast(svc, _deliver(q, str(i), []), svc.suspend_flow.wait())
        loop.set_task_factory(factory)
        assert q.qsize() == 50
        return created

    assert asyncio.run(run()) == 0


def test_other_wait_first_calls_go_to_mode_unchanged() -> None:
    async def run() -> Any:
        svc = _Consumer()
        ev = asyncio.Event()
        ev.set()
        # not the (delivery, suspend_flow.wait()) pair: handled by mode's own wait_first
        return await _fast(svc, ev.wait(), timeout=1.0)

    res = asyncio.run(run())
    assert res.results == [True] and not res.stopped


def _app(tmp_path: Path) -> Any:
    from finsent.core.settings import Settings
    from finsent.stream.faust_adapter import make_app

    s = Settings(brokers="127.0.0.1:1", store=f"chdb://{tmp_path / 'store'}")
    return make_app(s, "finsent-adapter-test", tmp_path, None, 1.0)


def test_the_worker_app_delivers_through_the_fast_path_and_no_faust_class_is_changed(tmp_path: Path) -> None:
    """The worker's own consumer takes the fast path (no task per record); Faust's classes stay mode's."""
    import faust
    from faust.transport.drivers import aiokafka as faust_aiokafka

    app = _app(tmp_path)
    other = faust.App(
        "finsent-other-app",
        broker="kafka://127.0.0.1:1",
        autodiscover=False,
        datadir=str(tmp_path / "other"),
        web_enabled=False,
    )

    async def run(consumer: Any) -> int:
        q: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        factory = loop.get_task_factory()
        created = 0

        def counting(loop: Any, coro: Any, **kw: Any) -> asyncio.Task:
            nonlocal created
            created += 1
            return asyncio.Task(coro, loop=loop, **kw) if factory is None else factory(loop, coro, **kw)

        loop.set_task_factory(counting)
        try:
            for i in range(20):
                await consumer.wait_first(_deliver(q, str(i), []), consumer.suspend_flow.wait())
        finally:
            loop.set_task_factory(factory)
        assert q.qsize() == 20
        return created

    assert asyncio.run(run(app.consumer)) == 0
    # nothing process-wide: another app in the process gets Faust's own consumer, whose wait_first is mode's race
    assert type(other.consumer) is faust_aiokafka.Consumer
    assert faust_aiokafka.Consumer.wait_first is Service.wait_first
    assert faust_aiokafka.AIOKafkaConsumerThread._create_consumer.__module__ == "faust.transport.drivers.aiokafka"


def test_the_worker_app_asks_the_broker_to_answer_fetches_within_the_short_wait(tmp_path: Path) -> None:
    """The aiokafka consumer the worker's app builds waits FETCH_MAX_WAIT_MS at the broker, a stock one 1500 ms."""
    import faust

    app = _app(tmp_path)
    other = faust.App(
        "finsent-other-app",
        broker="kafka://127.0.0.1:1",
        autodiscover=False,
        datadir=str(tmp_path / "other"),
        web_enabled=False,
    )

    async def build(a: Any) -> int:
        consumer = a.consumer._thread._create_worker_consumer(a.transport)
        try:
            return consumer._fetch_max_wait_ms  # what aiokafka's fetcher is built with at start()
        finally:
            await consumer.stop()

    assert asyncio.run(build(app)) == FETCH_MAX_WAIT_MS == 100
    assert asyncio.run(build(other)) == 1500


@pytest.mark.integration
def test_the_edge_sends_whole_record_batches_that_the_broker_confirms(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """The publish stage's ``send``: record batches through the app's producer, keyed as Kafka's partitioner."""
    from finsent.stream.faust_adapter import FaustEdge, make_app
    from finsent.stream.kafka import ensure_topics
    from finsent.stream.publish import key_hash
    from tests.stream_helpers import read_topic, stream_settings

    s = stream_settings(kafka_bootstrap, f"chdb://{tmp_path / 'store'}", unique_name)
    ensure_topics(s.kafka)
    keys = [f"k{i}".encode() for i in range(30)]

    async def run() -> None:
        app = make_app(s, f"{unique_name}-edge", tmp_path, None, 1.0)
        await app.producer.start()
        try:
            futs = await FaustEdge(app).send(s.kafka.topic_scored, [(k, b"v" + k, key_hash(k)) for k in keys])
            assert 1 <= len(futs) <= s.kafka.partitions  # one record batch per partition, not one send per record
            await asyncio.gather(*futs)
        finally:
            await app.producer.stop()

    asyncio.run(run())
    got = read_topic(s, s.kafka.topic_scored, expect=len(keys))
    assert sorted(r.key for r in got) == sorted(keys) and all(r.value == b"v" + r.key for r in got)


def test_lean_monitor_keeps_no_per_record_state_but_the_liveness_time() -> None:
    import time

    m = LeanMonitor()
    before = time.monotonic()
    assert m.on_stream_event_in("tp", 1, None, None) is None
    m.on_message_in(None, 1, None)
    m.on_message_out(None, 1, None)
    assert m.messages_received_total == 0 and m.events_total == 0
    assert m.stream_inbound_time["tp"] >= before  # Faust's "stream has not started processing" check
