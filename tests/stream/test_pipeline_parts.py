"""The scoring pipeline's parts, each without Kafka or a store server (``finsent.stream.pipeline``)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from finsent.core.errors import StoreDiskFull, StoreUnavailable
from finsent.stream.context import SharedStore
from finsent.stream.pipeline.health import Health
from finsent.stream.pipeline.offsets import AckGuard, Positions
from finsent.stream.pipeline.publish_stage import PublishStage
from finsent.stream.pipeline.retry import WorkerStopping
from finsent.stream.pipeline.scheduler import SPLIT_MIN_ITEMS, BatchScheduler
from finsent.stream.pipeline.scoring import ClassifierHolder, DeadLetter
from finsent.stream.pipeline.store_stage import MAX_WAITING_BATCHES, STORE_GROUP_ROWS, ScoredBatch, StoreStage


class _Msg:
    def __init__(self, offset: int, partition: int = 0) -> None:
        self.topic, self.partition, self.offset = "raw", partition, offset
        self.refs = 1

    def incref(self) -> None:
        self.refs += 1


class _Event:
    def __init__(self, offset: int, partition: int = 0) -> None:
        self.message = _Msg(offset, partition)

    def ack(self) -> None:
        self.message.refs -= 1


def _events(*offsets: int) -> list[_Event]:
    return [_Event(o) for o in offsets]


# -- offsets ----------------------------------------------------------------------------------
def test_a_guard_acks_only_when_every_piece_was_released_and_only_once() -> None:
    evs = _events(1, 2, 3)
    g = AckGuard(evs)
    for ev in evs:
        ev.ack()  # what Faust's take does when the agent asks for the next batch
    assert all(ev.message.refs == 1 for ev in evs), "take's own ack must not free the offset"
    g.split(2)
    assert g.release() is False and all(ev.message.refs == 1 for ev in evs)
    assert g.release() is True and all(ev.message.refs == 0 for ev in evs)
    assert g.release() is False and all(ev.message.refs == 0 for ev in evs)


def test_joined_guards_hand_their_references_to_the_joint_one() -> None:
    a, b = AckGuard(_events(1)), AckGuard(_events(2))
    j = AckGuard.join([a, b])
    assert a.release() is False and b.release() is False  # theirs now belong to j
    assert [ev.message.refs for ev in j.events] == [2, 2]
    assert j.release() is True and [ev.message.refs for ev in j.events] == [1, 1]


def test_a_lost_log_needs_two_sightings_at_an_unchanged_position() -> None:
    p = Positions()
    p.note_taken([(("raw", 0), 299), (("raw", 1), 399)])
    hw = {("raw", 0): 12, ("raw", 1): 400}
    assert p.lost_logs(hw.get) == []
    assert p.lost_logs(hw.get) == [(("raw", 0), 12, 300)]
    p.forget(("raw", 0))
    assert p.taken == {("raw", 1): 399}
    p.note_taken([(("raw", 1), 500)])
    hw[("raw", 1)] = 10
    assert p.lost_logs(hw.get) == []  # first sighting
    p.note_taken([(("raw", 1), 501)])  # the worker moved on: a stale highwater is not evidence
    assert p.lost_logs(hw.get) == []


def test_lag_counts_from_the_last_stored_offset_and_the_freshest_end() -> None:
    p = Positions()
    p.note_taken([(("raw", 0), 899)])
    g = AckGuard([_Event(499)])
    p.note_stored(g)
    assert p.lag(lambda k: 900, lambda k: 0) == {("raw", 0): 400}
    assert p.lag(lambda k: 900, lambda k: 2000) == {("raw", 0): 1500}  # highwater frozen under backpressure
    assert p.lag(lambda k: None, lambda k: 0) == {("raw", 0): 400}


# -- store stage ------------------------------------------------------------------------------
class _FlakyStore:
    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.rows: list[Any] = []

    def insert_scored(self, rows: list[Any]) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.rows.extend(rows)


def _stage(store: Any, draining: threading.Event | None = None, stages: Any = ()) -> tuple[StoreStage, Health]:
    health = Health(ClassifierHolder(object()))
    health.joined = True
    retries = Counter("retries", "", registry=CollectorRegistry())
    return StoreStage(SharedStore(lambda: store), health, retries, draining or threading.Event(), stages), health


def test_the_store_stage_retries_until_stored_and_readiness_names_a_full_disk(monkeypatch) -> None:
    import finsent.stream.pipeline.store_stage as mod

    monkeypatch.setattr(mod, "RETRY_FIRST_S", 0.01)
    seen: list[tuple[bool, str]] = []
    store = _FlakyStore([StoreDiskFull("No space left on device"), StoreUnavailable("refused")])
    stage, health = _stage(store)
    orig = store.insert_scored

    def watch(rows: list[Any]) -> None:
        seen.append(health.readiness())
        orig(rows)

    store.insert_scored = watch  # type: ignore[method-assign]
    stage.insert(["a", "b"])
    assert store.rows == ["a", "b"]
    assert seen[1] == (False, "store disk full: No space left on device")
    assert seen[2] == (False, "store unreachable: refused")
    assert health.readiness() == (True, "ready")
    stage.close()


def test_a_stop_ends_the_retries_and_leaves_the_batch_unstored() -> None:
    draining = threading.Event()
    store = _FlakyStore([StoreUnavailable("refused")] * 100)
    stage, _ = _stage(store, draining)
    threading.Timer(0.1, draining.set).start()
    t0 = time.monotonic()
    with pytest.raises(WorkerStopping):
        stage.insert(["a"])
    assert time.monotonic() - t0 < 2 and store.rows == []
    stage.close()


def test_stages_run_between_scoring_and_storing_in_take_order() -> None:
    seen: list[list[str]] = []

    def mentions(rows: list[str]) -> list[str]:
        seen.append(list(rows))
        return [r + "+m" for r in rows]

    store = _FlakyStore([])
    stage, _ = _stage(store, stages=[mentions])

    async def run() -> None:
        done: list[list[str]] = []

        async def after(group: Any, scored: Any, store_s: float, at: Any) -> None:
            done.append(scored)

        for i in range(3):
            await stage.put(ScoredBatch(AckGuard(_events(i)), [f"r{i}"], [], []), after)
        while stage.inflight is not None and not stage.inflight.done():
            await asyncio.sleep(0.01)
        assert sum(done, []) == ["r0", "r1", "r2"]

    asyncio.run(run())
    assert sum(seen, []) == ["r0", "r1", "r2"] and store.rows == ["r0+m", "r1+m", "r2+m"]
    stage.close()


def test_batches_waiting_for_a_busy_store_go_in_one_insert_and_the_queue_is_bounded() -> None:
    gate = threading.Event()
    inserts: list[int] = []

    class Slow:
        def insert_scored(self, rows: list[Any]) -> None:
            gate.wait(5)
            inserts.append(len(rows))

    stage, _ = _stage(Slow())

    async def run() -> None:
        async def after(*_: Any) -> None:
            return None

        await stage.put(ScoredBatch(AckGuard(_events(0)), ["x"], [], []), after)  # the store takes it now
        await asyncio.sleep(0.05)
        for i in range(MAX_WAITING_BATCHES):
            await stage.put(ScoredBatch(AckGuard(_events(i + 1)), ["y"] * 10, [], []), after)
        blocked = asyncio.ensure_future(stage.put(ScoredBatch(AckGuard(_events(99)), ["z"], [], []), after))
        await asyncio.sleep(0.1)
        assert not blocked.done(), "a full queue must make the caller wait (backpressure)"
        gate.set()
        await blocked
        while stage.inflight is not None and not stage.inflight.done():
            await asyncio.sleep(0.01)

    asyncio.run(run())
    assert inserts[0] == 1 and sum(inserts) == 1 + 10 * MAX_WAITING_BATCHES + 1
    assert len(inserts) <= 3 and max(inserts) <= STORE_GROUP_ROWS  # the backlog went in few inserts
    stage.close()


# -- publish stage ----------------------------------------------------------------------------
def test_publishing_retries_after_redeclaring_and_stops_when_the_worker_stops(monkeypatch) -> None:
    import finsent.stream.pipeline.publish_stage as mod

    monkeypatch.setattr(mod, "RETRY_FIRST_S", 0.01)
    sent: list[tuple[str, int]] = []
    failures = [RuntimeError("broker away")]
    redeclared: list[int] = []

    async def send(topic: str, records: Any) -> list[Any]:
        fut = asyncio.get_running_loop().create_future()
        if failures:
            fut.set_exception(failures.pop())
        else:
            sent.append((topic, len(records)))
            fut.set_result(None)
        return [fut]

    async def redeclare() -> None:
        redeclared.append(1)

    stopping, draining = threading.Event(), threading.Event()
    stage = PublishStage(send, "scored", "dlq", redeclare, stopping, draining)
    asyncio.run(stage.publish([(b"k", b"v", 1)], [DeadLetter("bad_json", b"{}", b"k2")]))
    # the scored batch failed, its dead letters went: the whole send is retried once the topics are re-declared
    assert redeclared == [1] and sent == [("dlq", 1), ("scored", 1), ("dlq", 1)]
    failures.append(RuntimeError("again"))
    draining.set()
    with pytest.raises(WorkerStopping):
        asyncio.run(stage.publish([(b"k", b"v", 1)], []))


# -- scheduler --------------------------------------------------------------------------------
def test_results_are_delivered_in_take_order_whichever_call_ends_first() -> None:
    release_first = threading.Event()
    delivered: list[list[int]] = []

    def work(msgs: list[int]) -> list[int]:
        if msgs[0] == 0:
            release_first.wait(5)  # the first call ends last
        return msgs

    async def deliver(guard: AckGuard, msgs: list[int], result: list[int]) -> None:
        delivered.append(result)

    sched: BatchScheduler[int, list[int]] = BatchScheduler(batch_max=4, model_calls=2, work=work, deliver=deliver)

    async def run() -> None:
        await sched.take(AckGuard([]), [0, 1])
        await sched.take(AckGuard([]), [2, 3])
        await asyncio.sleep(0.2)
        assert delivered == [], "the second call must wait for the first"
        release_first.set()
        await sched.drain(time.monotonic() + 5, time.monotonic)

    asyncio.run(run())
    assert delivered == [[0, 1], [2, 3]]
    sched.close()


def test_an_idle_scheduler_splits_a_take_over_its_free_calls_and_joins_pending_batches() -> None:
    calls: list[int] = []
    gate = threading.Event()

    def work(msgs: list[int]) -> int:
        gate.wait(5)
        calls.append(len(msgs))
        return len(msgs)

    async def deliver(guard: AckGuard, msgs: list[int], n: int) -> None:
        return None

    sched: BatchScheduler[int, int] = BatchScheduler(batch_max=256, model_calls=2, work=work, deliver=deliver)

    async def run() -> None:
        await sched.take(AckGuard([]), list(range(4 * SPLIT_MIN_ITEMS)))  # two pieces, one per call
        assert len(sched.scoring) == 2
        await sched.take(AckGuard([]), [1] * 5)  # both calls busy: pending
        await sched.take(AckGuard([]), [2] * 7)
        gate.set()
        await sched.drain(time.monotonic() + 5, time.monotonic)

    asyncio.run(run())
    assert sorted(calls[:2]) == [2 * SPLIT_MIN_ITEMS] * 2 and calls[2:] == [12]  # pending ones scored together
    sched.close()
