"""The commit frontier: a raw partition commits what was stored, contiguously, from where its assignment began.

The defect it closes (seen in tests/stream/test_faults_worker.py, one run in two): after a rebalance the
survivor of a killed worker took a partition that had no committed offset from offset 179 (0-178 were
fetched and never delivered), and faust-streaming committed 230 from its acks; another run committed 233
for records acked unseen while the stream's flow was suspended. Those items were never stored.

Pure logic here (the Frontier, the consumer's commit offset on Faust's own tables, the worker's check on a
fake consumer); the kill test with real processes is the end-to-end check.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from prometheus_client import CollectorRegistry

from finsent.core.settings import load_settings
from finsent.stream.faust_adapter import _Consumer
from finsent.stream.pipeline.offsets import Frontier
from finsent.stream.worker import ClassifierHolder, Scorer
from tests.stream.test_stream_positions import FakeConsumer

RAW0 = ("raw", 0)


def _stored(f: Frontier, key: tuple[str, int], offsets: range | list[int]) -> None:
    f.stored((key, o) for o in offsets)


def test_the_frontier_moves_over_contiguous_stores_and_waits_at_a_missing_offset() -> None:
    f = Frontier()
    f.begin(RAW0, 100)
    assert f.commit_offset(RAW0) == 100
    _stored(f, RAW0, range(100, 116))
    assert f.commit_offset(RAW0) == 116
    _stored(f, RAW0, range(120, 130))  # 116-119 not stored: the commit must not pass them
    assert f.commit_offset(RAW0) == 116
    _stored(f, RAW0, [117, 118, 119, 90])  # below the frontier: ignored
    assert f.commit_offset(RAW0) == 116
    _stored(f, RAW0, [116])
    assert f.commit_offset(RAW0) == 130
    assert f.ahead[RAW0] == set()


def test_a_partition_not_begun_commits_nothing_and_counts_its_stores_once_begun() -> None:
    f = Frontier()
    _stored(f, RAW0, range(0, 10))  # stored before the start was known
    assert f.commit_offset(RAW0) is None and f.unbegun() == [RAW0]
    f.begin(RAW0, 0)
    assert f.commit_offset(RAW0) == 10 and f.unbegun() == []
    f.begin(RAW0, 500)  # begun once per assignment: a second start changes nothing
    assert f.commit_offset(RAW0) == 10
    f.forget(RAW0)  # revoked
    assert f.commit_offset(RAW0) is None and not f.knows(RAW0)


def test_a_stored_offset_above_the_frontier_is_a_hole_after_two_checks_then_retried() -> None:
    f = Frontier(retry_s=15.0)
    f.begin(RAW0, 0)
    _stored(f, RAW0, range(179, 230))  # what the survivor received: 0-178 never came

    def no_end(key: Any) -> int:
        return 0

    def busy(key: Any) -> bool:
        return False

    assert f.holes(no_end, busy, now=0.0) == []  # first sighting: a store may still be finishing
    assert f.holes(no_end, busy, now=3.0) == [(RAW0, 0)]
    assert f.holes(no_end, busy, now=6.0) == []  # reported: not again at once (the seek is under way)
    assert f.holes(no_end, busy, now=19.0) == [(RAW0, 0)]  # still unmoved after retry_s: read again
    f.restart(RAW0, 0)
    _stored(f, RAW0, [230])  # the seek brought nothing but a buffered later record: retried after retry_s only

    def end(key: Any) -> int:
        return 233

    def idle(key: Any) -> bool:
        return True

    assert f.holes(end, idle, now=22.0) == [] and f.holes(end, idle, now=25.0) == []
    assert f.holes(end, idle, now=34.0) == [(RAW0, 0)]
    f.restart(RAW0, 0)
    _stored(f, RAW0, range(0, 230))
    assert f.commit_offset(RAW0) == 230
    assert f.holes(no_end, busy, now=40.0) == [] and f.holes(no_end, busy, now=43.0) == []


def test_a_log_past_the_frontier_is_a_hole_only_while_the_worker_holds_none_of_its_messages() -> None:
    f = Frontier()
    f.begin(RAW0, 0)
    in_flight = {"raw0": True}

    def end(key: Any) -> int:
        return 233

    def idle(key: Any) -> bool:
        return not in_flight["raw0"]

    # a batch in flight (a slow store, backpressure): waiting is right
    assert f.holes(end, idle, now=0.0) == [] and f.holes(end, idle, now=3.0) == []
    in_flight["raw0"] = False  # nothing in flight, the log goes on, nothing arrives: passed over
    assert f.holes(end, idle, now=6.0) == []
    assert f.holes(end, idle, now=9.0) == [(RAW0, 0)]
    _stored(f, RAW0, range(0, 233))  # caught up: the log end is the frontier
    assert f.holes(end, idle, now=12.0) == [] and f.holes(end, idle, now=15.0) == []


def _faust_consumer_state() -> Any:
    """A ``_Consumer`` with only the tables Faust's commit computation reads (no app, no broker)."""
    c = _Consumer.__new__(_Consumer)
    c._acked = defaultdict(list)
    c._acked_index = defaultdict(set)
    c._gap = defaultdict(list)
    c._committed_offset = defaultdict(lambda: None)
    return c


def test_faust_alone_commits_past_messages_never_delivered_and_the_guarded_consumer_does_not() -> None:
    tp = TP("raw", 1)
    stock = _faust_consumer_state()
    stock._acked[tp] = list(range(179, 230))  # acks of what arrived; 0-178 never did
    assert faust_aiokafka.Consumer._new_offset(stock, tp) == 230  # the defect: 0-178 committed unseen

    guarded = _faust_consumer_state()
    guarded.frontier, guarded.guarded = Frontier(), frozenset({"raw"})
    guarded._acked[tp] = list(range(179, 230))
    guarded._acked_index[tp] = set(range(179, 230))
    assert guarded._new_offset(tp) is None  # not begun: commit nothing
    assert guarded._acked[tp] == [] and guarded._acked_index[tp] == set()  # Faust's acks stay bounded
    guarded.frontier.begin(("raw", 1), 0)
    _stored(guarded.frontier, ("raw", 1), range(179, 230))
    assert guarded._new_offset(tp) == 0
    _stored(guarded.frontier, ("raw", 1), range(0, 179))
    assert guarded._new_offset(tp) == 230
    other = TP("scored", 1)  # not guarded: Faust's own computation
    guarded._acked[other] = [0, 1, 2]
    assert guarded._new_offset(other) == 3


class _FakeConsumer(FakeConsumer):
    """The position tests' fake consumer, with the frontier and its two calls; every highwater is 230."""

    guarded = frozenset({"raw"})

    def __init__(self) -> None:
        super().__init__(defaultdict(lambda: 230))
        self.frontier: Frontier | None = None
        self.begun = 0
        self.log_start = 0

    async def earliest_offsets(self, *tps: Any) -> dict[Any, int]:
        return {tp: self.log_start for tp in tps}

    async def begin_frontier(self) -> None:
        self.begun += 1


def _wired(consumer: _FakeConsumer) -> Scorer:
    """A scorer whose consumer is ``consumer``, sharing its frontier, as run_scorer wires the real one."""
    scorer = Scorer(load_settings(), ClassifierHolder(object()), lambda: None, registry=CollectorRegistry())
    consumer.frontier = scorer.frontier
    scorer.consumer = consumer
    return scorer


def test_the_worker_reads_a_passed_over_partition_again_from_its_frontier() -> None:
    consumer = _FakeConsumer()
    scorer = _wired(consumer)
    try:
        scorer.frontier.begin(("raw", 1), 0)
        scorer.frontier.stored((("raw", 1), o) for o in range(179, 230))
        scorer.last_offsets = scorer.stored_offsets = {("raw", 1): 229}
        assert asyncio.run(scorer.check_positions()) == []
        assert asyncio.run(scorer.check_positions()) == [("raw", 1)]
        assert consumer.seeks == [(TP("raw", 1), 0)]
        assert scorer.frontier.commit_offset(("raw", 1)) == 0 and not scorer.frontier.ahead[("raw", 1)]
        assert ("raw", 1) not in scorer.last_offsets
        assert scorer.metrics.partition_resets._value.get() == 1
        scorer.frontier.stored((("raw", 2), o) for o in range(5))  # assigned without Faust's seek: asked for
        asyncio.run(scorer.check_positions())
        assert consumer.begun >= 1
    finally:
        scorer.close()


def test_a_frontier_below_the_log_start_reads_from_the_log_start() -> None:
    """Retention deleted the messages at the frontier: seeking there again would loop forever."""
    consumer = _FakeConsumer()
    consumer.log_start = 50
    scorer = _wired(consumer)
    try:
        scorer.frontier.begin(("raw", 1), 0)
        scorer.frontier.stored((("raw", 1), o) for o in range(60, 70))
        asyncio.run(scorer.check_positions())
        assert asyncio.run(scorer.check_positions()) == [("raw", 1)]
        assert consumer.seeks == [(TP("raw", 1), 50)]
        assert scorer.frontier.commit_offset(("raw", 1)) == 50
    finally:
        scorer.close()


def test_a_broker_that_does_not_answer_never_stops_the_check() -> None:
    """The log-start and seek calls go to the broker: a failure is logged and tried again, never raised."""

    class _Unanswered(_FakeConsumer):
        async def earliest_offsets(self, *tps: Any) -> dict[Any, int]:
            raise ConnectionError("broker gone")

        async def begin_frontier(self) -> None:
            raise ConnectionError("broker gone")

    consumer = _Unanswered()
    scorer = _wired(consumer)
    try:
        scorer.frontier.begin(("raw", 1), 0)
        scorer.frontier.stored((("raw", 1), o) for o in range(60, 70))
        scorer.frontier.stored((("raw", 2), o) for o in range(5))  # unbegun: begin_frontier is asked, and fails
        asyncio.run(scorer.check_positions())
        assert asyncio.run(scorer.check_positions()) == [("raw", 1)]
        assert consumer.seeks == [(TP("raw", 1), 0)]  # the log start unknown: the frontier itself

        async def refuse(tp: Any, offset: int) -> None:
            raise RuntimeError("not assigned")

        consumer.seek = refuse  # type: ignore[method-assign]
        scorer.frontier.stored((("raw", 1), o) for o in range(60, 70))
        asyncio.run(scorer.check_positions())
        assert asyncio.run(scorer.check_positions()) == []  # the seek failed: logged, tried again later
        assert scorer.metrics.partition_resets._value.get() == 1
    finally:
        scorer.close()
