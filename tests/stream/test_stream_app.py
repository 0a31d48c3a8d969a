"""Pure logic of the scoring worker (no servers): decoding into dead letters, model-failure narrowing,
the classifier holder, the ack guard against Faust's real Message refcounting, and the bench's
RESULTS.md section writer."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from finsent.core.errors import ConfigError, ModelError
from finsent.core.events import RawItem, utcnow
from finsent.stream.worker import AckGuard, ClassifierHolder, RawMessage, decode_batch, score_items


def _raw(value: bytes | None, offset: int = 0) -> RawMessage:
    return RawMessage(value, "finsent.raw", 1, offset)


def test_decode_batch_splits_good_and_dead_with_reasons_and_origin() -> None:
    good = RawItem(id="a", source="s", source_type="news", text="stocks up", ingested_at=utcnow()).to_json()
    msgs = [_raw(good, 0), _raw(b"{nope", 1), _raw(None, 2), _raw(b'{"id":"x"}', 3), _raw(b"\xff", 4)]
    items, dead = decode_batch(msgs, 10_000, 1000)
    assert [i.id for i in items] == ["a"]
    assert [d.reason for d in dead] == ["not_json", "empty_message", "missing_field", "invalid_utf8"]
    body = json.loads(dead[0].body)
    assert (body["topic"], body["partition"], body["offset"], body["payload"]) == ("finsent.raw", 1, 1, "{nope")
    assert json.loads(dead[3].body)["payload_encoding"] == "hex"


def test_decode_batch_truncates_long_text_and_rejects_oversize() -> None:
    long = RawItem(id="l", source="s", source_type="news", text="x" * 500, ingested_at=utcnow()).to_json()
    items, dead = decode_batch([_raw(long)], 10_000, 100)
    assert len(items[0].text) == 100 and items[0].truncated and not dead
    items, dead = decode_batch([_raw(long)], 300, 100)
    assert not items and dead[0].reason == "oversize"


@dataclass
class _Pred:
    sentiment: str = "negative"
    sentiment_probs: dict[str, float] | None = None
    topic: str = "Markets"
    topic_prob: float = 0.9
    truncated: bool = False


class _PoisonClassifier:
    """Fails any batch containing 'boom' (a fake for pure logic: which items get dead-lettered)."""

    version = "fake-1"

    def predict(self, texts: list[str]) -> list[_Pred]:
        if any("boom" in t for t in texts):
            raise RuntimeError("kaboom")
        return [
            _Pred(sentiment_probs={"negative": 0.8, "neutral": 0.1, "positive": 0.1}, truncated=len(t) > 10)
            for t in texts
        ]


def _item(i: int, text: str) -> RawItem:
    return RawItem(id=f"i{i}", source="s", source_type="social", text=text, ingested_at=utcnow())


def test_score_items_narrows_a_model_failure_to_the_poison_item() -> None:
    items = [_item(0, "fine"), _item(1, "boom here"), _item(2, "a rather long text")]
    scored, dead = score_items(_PoisonClassifier(), items)
    assert [s.id for s in scored] == ["i0", "i2"]
    assert all(s.model_version == "fake-1" for s in scored)
    assert scored[1].item.truncated and not scored[0].item.truncated  # the model's truncation flag is kept
    assert [d.reason for d in dead] == ["model_error"] and dead[0].key == b"i1"
    assert "kaboom" in json.loads(dead[0].body)["detail"]


def test_classifier_holder_swaps_atomically() -> None:
    a, b = _PoisonClassifier(), _PoisonClassifier()
    holder = ClassifierHolder(a)
    assert holder.current is a
    assert holder.swap(b) is a
    assert holder.current is b


class _Consumer:
    """Records final acks (what faust.transport.Consumer.ack does when the refcount reaches 0)."""

    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, message: Any) -> bool:
        self.acked.append(message.offset)
        return True


class _Event:
    def __init__(self, message: Any, consumer: _Consumer) -> None:
        self.message = message
        self._consumer = consumer

    def ack(self) -> bool:
        return self.message.ack(self._consumer)


def test_ack_guard_holds_offsets_until_release_with_faust_refcounting() -> None:
    from faust.types.tuples import ConsumerMessage

    consumer = _Consumer()
    msgs = [ConsumerMessage("finsent.raw", 0, off, 0.0, 0, None, b"k", b"v", None) for off in range(3)]
    for m in msgs:
        m.incref()  # what Faust's conductor does when it hands the message to our stream
    events = [_Event(m, consumer) for m in msgs]
    guard = AckGuard(events)
    for ev in events:  # take_events' finally: acks after our loop body returns (or on close)
        ev.ack()
    assert consumer.acked == []  # not committable: the batch is not stored yet
    guard.release()
    assert consumer.acked == [0, 1, 2]
    guard.release()  # idempotent
    assert consumer.acked == [0, 1, 2]


def test_ack_guard_never_released_keeps_offsets_uncommitted() -> None:
    from faust.types.tuples import ConsumerMessage

    consumer = _Consumer()
    m = ConsumerMessage("finsent.raw", 0, 7, 0.0, 0, None, b"k", b"v", None)
    m.incref()
    AckGuard([_Event(m, consumer)])
    _Event(m, consumer).ack()  # the generator's ack on crash/cancel
    assert consumer.acked == []


@pytest.mark.parametrize("bad", [0, -1])
def test_demo_rejects_bad_rate(bad: float, capsys: pytest.CaptureFixture[str]) -> None:
    from finsent.cli import main

    assert main(["demo", "--rate", str(bad)]) == ConfigError.exit_code
    assert "--rate must be > 0" in capsys.readouterr().err


def test_demo_without_a_model_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from finsent.cli import main

    assert main(["demo", "--model-dir", str(tmp_path / "missing")]) == ModelError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("finsent: error: model directory") and "Traceback" not in err and err.count("\n") == 1


def test_item_without_ingested_at_takes_the_record_timestamp() -> None:
    """A redelivered record must decode to the same row: its Kafka timestamp stands in for ingested_at."""
    from finsent.stream.worker import RawMessage, decode_batch

    body = b'{"id":"r1","source":"s","source_type":"social","text":"stocks slide"}'
    msg = RawMessage(body, "finsent.raw", 0, 7, 1_790_000_000.25)
    first, _ = decode_batch([msg], 1_000_000, 20_000)
    again, _ = decode_batch([msg], 1_000_000, 20_000)
    assert first[0].ingested_at == again[0].ingested_at
    assert first[0].ingested_at.timestamp() == 1_790_000_000.25


class _GatedClassifier:
    """Blocks in predict until released, recording each call's texts (continuous-batching logic)."""

    version = "gated-1"

    def __init__(self, later_calls_s: float = 0.0) -> None:
        import threading

        self.calls: list[list[str]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.later_calls_s = later_calls_s

    def predict(self, texts: list[str]) -> list[_Pred]:
        import time

        self.calls.append(list(texts))
        self.entered.set()
        self.gate.wait(10)
        if len(self.calls) > 1:
            time.sleep(self.later_calls_s)
        return [_Pred(sentiment_probs={"negative": 0.8, "neutral": 0.1, "positive": 0.1}) for _ in texts]


class _ListStore:
    def __init__(self) -> None:
        self.inserts: list[list[str]] = []

    def ensure_schema(self) -> None:
        pass

    def insert_scored(self, rows: list[Any]) -> None:
        self.inserts.append([r.id for r in rows])

    def close(self) -> None:
        pass


class _ValueEvent(_Event):
    def __init__(self, message: Any, consumer: _Consumer) -> None:
        super().__init__(message, consumer)
        self.value = message.value
        self.key = message.key


def _gated_scorer(
    batch_max: int, later_calls_s: float = 0.0, model_calls: int = 1, clf: Any = None
) -> tuple[Any, Any, _ListStore, _Consumer, list[list[bytes]], Any]:
    """A Scorer with a gated classifier, a list store and a recorded publish; ``take(n)`` hands it n messages."""
    import asyncio

    from faust.types.tuples import ConsumerMessage
    from prometheus_client import CollectorRegistry

    from finsent.core.settings import Settings
    from finsent.stream.worker import Scorer

    consumer = _Consumer()
    clf = clf or _GatedClassifier(later_calls_s)
    store = _ListStore()
    scorer = Scorer(
        Settings(batch_max=batch_max, model_calls=model_calls),
        ClassifierHolder(clf),
        lambda: store,
        registry=CollectorRegistry(),
    )
    published: list[list[bytes]] = []

    async def publish(payloads: list[Any], dead: list[Any]) -> None:
        published.append([k for k, _, _ in payloads])

    scorer._publish = publish  # type: ignore[method-assign]  # the broker is not this test's subject
    offset = 0

    async def take(n: int) -> None:
        nonlocal offset
        events = []
        for _ in range(n):
            value = RawItem(
                id=f"m{offset}", source="s", source_type="news", text="stocks up", ingested_at=utcnow()
            ).to_json()
            m = ConsumerMessage("finsent.raw", 0, offset, 0.0, 0, None, f"m{offset}".encode(), value, None)
            m.incref()  # what Faust's conductor does
            events.append(_ValueEvent(m, consumer))
            offset += 1
        await scorer.handle(events)
        for ev in events:  # take_events acks the batch when the agent asks for the next one
            ev.ack()
        await asyncio.sleep(0)

    return scorer, clf, store, consumer, published, take


def test_batches_taken_while_the_model_is_busy_are_scored_together_up_to_batch_max() -> None:
    import asyncio

    scorer, clf, store, consumer, published, take = _gated_scorer(batch_max=10)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        await take(3)  # the model is idle: scored at once
        await loop.run_in_executor(None, clf.entered.wait, 5)
        await asyncio.wait_for(take(4), 1)  # busy model: pending, handle returns at once
        await asyncio.wait_for(take(5), 1)
        assert [len(c) for c in clf.calls] == [3]
        fourth = asyncio.ensure_future(take(2))  # 11 pending >= batch_max: waits for the model
        await asyncio.sleep(0.05)
        assert not fourth.done()
        assert consumer.acked == []  # nothing released before it is stored and published
        clf.gate.set()
        await asyncio.wait_for(fourth, 5)
        await scorer.drain(5)

    try:
        asyncio.run(run())
    finally:
        scorer.close()
    # calls: the first batch alone; the next two together (9); the last (adding it would make 11 > 10)
    assert [len(c) for c in clf.calls] == [3, 9, 2]
    ids = [f"m{i}" for i in range(14)]
    assert [i for rows in store.inserts for i in rows] == ids  # every item stored once, in take order
    assert [k.decode() for keys in published for k in keys] == ids
    assert consumer.acked == list(range(14))  # each offset released once, in order
    assert scorer.stats.consumed == 14 and scorer.stats.stored == 14


def test_drain_at_stop_also_scores_and_stores_the_batches_pending_behind_the_model() -> None:
    import asyncio

    # the pending batch's model call is slow: the first batch is stored long before it is scored
    scorer, clf, store, consumer, published, take = _gated_scorer(batch_max=10, later_calls_s=0.3)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        await take(3)
        await loop.run_in_executor(None, clf.entered.wait, 5)
        await take(4)  # pending behind the busy model when the agent stops
        draining = asyncio.ensure_future(scorer.drain(5))
        await asyncio.sleep(0.05)
        clf.gate.set()
        await draining
        # drain has returned: what it let through is stored, published and released, nothing more to come
        assert [i for rows in store.inserts for i in rows] == [f"m{i}" for i in range(7)]
        assert consumer.acked == list(range(7))

    try:
        asyncio.run(run())
    finally:
        scorer.close()
    assert [len(c) for c in clf.calls] == [3, 4]


class _PerCallGates:
    """A classifier whose n-th call blocks until ``gates[n]`` is set: the test decides which call ends first."""

    version = "gated-2"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gates = [threading.Event() for _ in range(16)]
        self.started = [threading.Event() for _ in range(16)]
        self._lock = threading.Lock()

    def predict(self, texts: list[str]) -> list[_Pred]:
        with self._lock:
            n = len(self.calls)
            self.calls.append(list(texts))
        self.started[n].set()
        self.gates[n].wait(10)
        return [_Pred(sentiment_probs={"negative": 0.8, "neutral": 0.1, "positive": 0.1}) for _ in texts]


def test_two_model_calls_run_at_once_and_their_batches_are_stored_and_released_in_take_order() -> None:
    import asyncio

    clf = _PerCallGates()
    scorer, _, store, consumer, published, take = _gated_scorer(batch_max=10, model_calls=2, clf=clf)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        await take(3)  # call 0
        await take(4)  # call 1, at the same time: a second model call was free
        await loop.run_in_executor(None, clf.started[1].wait, 5)
        assert clf.started[0].is_set() and [len(c) for c in clf.calls] == [3, 4]
        await asyncio.wait_for(take(5), 1)  # both calls busy: pending, handle returns at once
        waiting = asyncio.ensure_future(take(6))  # 11 pending >= batch_max: backpressure
        await asyncio.sleep(0.05)
        assert not waiting.done()
        clf.gates[1].set()  # the later call ends first ...
        await loop.run_in_executor(None, time.sleep, 0.2)
        assert store.inserts == [] and consumer.acked == []  # ... and waits for the earlier one
        for g in clf.gates:
            g.set()
        await asyncio.wait_for(waiting, 5)
        await scorer.drain(5)

    try:
        asyncio.run(run())
    finally:
        scorer.close()
    assert sorted(len(c) for c in clf.calls[:2]) == [3, 4] and sum(len(c) for c in clf.calls) == 18
    assert max(len(c) for c in clf.calls) <= 10
    ids = [f"m{i}" for i in range(18)]
    assert [i for rows in store.inserts for i in rows] == ids  # stored once each, in take order
    assert [k.decode() for keys in published for k in keys] == ids
    assert consumer.acked == list(range(18))  # released once each, in order
    assert scorer.stats.consumed == 18 and scorer.stats.stored == 18


def test_an_idle_worker_splits_a_batch_across_its_free_model_calls_and_acks_it_when_every_piece_is_stored() -> None:
    import asyncio

    from finsent.stream.worker import SPLIT_MIN_ITEMS

    clf = _PerCallGates()
    scorer, _, store, consumer, published, take = _gated_scorer(batch_max=64, model_calls=2, clf=clf)
    n = 2 * SPLIT_MIN_ITEMS + 3

    async def run() -> None:
        loop = asyncio.get_running_loop()
        await take(n)  # both calls free: two pieces, scored at once
        await loop.run_in_executor(None, clf.started[1].wait, 5)
        assert [len(c) for c in clf.calls] == [SPLIT_MIN_ITEMS + 2, SPLIT_MIN_ITEMS + 1]
        clf.gates[0].set()  # the first piece is scored; the idle store waits for its sibling (one insert)
        await loop.run_in_executor(None, time.sleep, 0.2)
        assert store.inserts == [] and consumer.acked == []
        clf.gates[1].set()
        for _ in range(100):
            if consumer.acked:
                break
            await asyncio.sleep(0.02)
        assert [len(rows) for rows in store.inserts] == [n]  # both pieces in one insert
        await take(SPLIT_MIN_ITEMS * 2 - 1)  # too small for two pieces of SPLIT_MIN_ITEMS: one call
        for g in clf.gates:
            g.set()
        await scorer.drain(5)

    try:
        asyncio.run(run())
    finally:
        scorer.close()
    assert [len(c) for c in clf.calls][2:] == [SPLIT_MIN_ITEMS * 2 - 1]
    total = n + SPLIT_MIN_ITEMS * 2 - 1
    ids = [f"m{i}" for i in range(total)]
    assert [i for rows in store.inserts for i in rows] == ids
    assert [k.decode() for keys in published for k in keys] == ids
    assert consumer.acked == list(range(total))  # each once, in order, after both pieces were published


def test_a_split_guard_acks_only_when_every_piece_is_released() -> None:
    from faust.types.tuples import ConsumerMessage

    consumer = _Consumer()
    msgs = [ConsumerMessage("finsent.raw", 0, off, 0.0, 0, None, b"k", b"v", None) for off in range(4)]
    for m in msgs:
        m.incref()
    events = [_Event(m, consumer) for m in msgs]
    guard = AckGuard(events).split(3)
    for ev in events:
        ev.ack()  # take's own ack
    assert guard.release() is False and guard.release() is False
    assert consumer.acked == []  # a piece not released (its store failed at a stop) keeps the batch unacked
    assert guard.release() is True
    assert consumer.acked == [0, 1, 2, 3]
    assert guard.release() is False and consumer.acked == [0, 1, 2, 3]


def test_a_batch_split_into_more_pieces_than_the_store_queue_holds_is_still_stored() -> None:
    """More unstored pieces of one batch than MAX_WAITING_BATCHES: the store stage must start anyway
    (it waits for a batch's last piece only while there is room), or the later pieces wait forever."""
    import asyncio

    from finsent.stream.worker import MAX_WAITING_BATCHES, SPLIT_MIN_ITEMS

    clf = _PerCallGates()
    pieces = MAX_WAITING_BATCHES + 4
    n = pieces * SPLIT_MIN_ITEMS
    scorer, _, store, consumer, published, take = _gated_scorer(batch_max=n, model_calls=pieces, clf=clf)
    for g in clf.gates:
        g.set()

    async def run() -> None:
        await take(n)
        await scorer.drain(5)

    try:
        asyncio.run(run())
    finally:
        scorer.close()
    assert len(clf.calls) == pieces
    assert [i for rows in store.inserts for i in rows] == [f"m{i}" for i in range(n)]
    assert consumer.acked == list(range(n))
