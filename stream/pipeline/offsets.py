"""The offset tracker: nothing is committed before it is stored and published.

Two parts, neither knows Faust (anchor: quix-streams' ``Checkpoint``, which commits the offsets of
what its sinks flushed and nothing else):

* :class:`AckGuard` holds one reference on every message of a taken batch, so that the consumer's
  own acking (Faust's ``take`` acks a batch when the agent asks for the next one, or when its
  generator is closed by a crash or a stop) can never mark an offset safe to commit; the final
  ack happens in :meth:`AckGuard.release`, after the batch was stored and published.
* :class:`Positions` keeps, per partition, the last offset taken and the last one stored: the lag
  gauge and the detection of a log that ends below the worker's position (a broker that lost it).
* :class:`Frontier` is what a raw partition commits: the offset below which every message was stored,
  counted from where the assignment began. Not the consumer's acks: those can pass over messages the
  worker never received (see the class).

A message here is anything with ``message.incref()`` / ``ack()`` (Faust's ``Event``): what the
guard needs, and what the tests hand it without a broker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

log = logging.getLogger(__name__)

Key = tuple[str, int]


class AckGuard:
    """Holds one reference on every message of a batch so nothing commits before :meth:`release`.

    Faust's take acks the buffered events in the ``finally`` after its ``yield``; with the extra
    reference taken here that ack only brings the count back to 1. If the worker dies or stops
    before :meth:`release`, the offsets stay uncommitted and the batch is redelivered; the store's
    insert is idempotent by id, so the redelivery never shows twice.
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
        joined.pieces = joined.unscored = 1
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


class Positions:
    """Per partition: the last offset taken from Kafka and the last one stored (lag, lost logs)."""

    def __init__(self) -> None:
        self.taken: dict[Key, int] = {}
        self.stored: dict[Key, int] = {}
        #: partitions whose log end was seen below the worker's position at the previous check
        self.behind: dict[Key, int] = {}

    def note_taken(self, keyed_offsets: Iterable[tuple[Key, int]]) -> None:
        for key, offset in keyed_offsets:
            if offset > self.taken.get(key, -1):
                self.taken[key] = offset

    def note_stored(self, guard: AckGuard) -> None:
        """A released guard's messages are stored and published: move the stored positions on."""
        for ev in guard.events:
            key = (ev.message.topic, ev.message.partition)
            if ev.message.offset > self.stored.get(key, -1):
                self.stored[key] = ev.message.offset

    def forget(self, key: Key) -> None:
        """``key`` was revoked or reset: its offsets are no longer this worker's to track."""
        for table in (self.taken, self.stored, self.behind):
            table.pop(key, None)

    def lag(self, highwater: Callable[[Key], int | None], end_of: Callable[[Key], int]) -> dict[Key, int]:
        """``log end - next offset to store`` per partition taken from (clamped at 0).

        Measured from the last *stored* offset: during a store outage the worker stops taking
        (backpressure) and the lag keeps growing with the log. The log end is the larger of the
        highwater and ``end_of`` (fresh end offsets: the highwater freezes when fetching stops).
        """
        out: dict[Key, int] = {}
        for key, seen in list(self.taken.items()):
            hw = highwater(key)
            done = self.stored.get(key, -1)
            end = max(int(hw) if hw is not None else seen + 1, end_of(key))
            out[key] = max(end - done - 1, 0)
        return out

    def lost_logs(self, highwater: Callable[[Key], int | None]) -> list[tuple[Key, int, int]]:
        """Partitions whose log ends below the worker's position at two checks in a row, position unchanged.

        A briefly stale highwater is never evidence: the first sighting only marks the partition,
        and a worker that moved on since clears the mark. Returns (key, log end, position) of each
        partition to read again; the caller resets them and then :meth:`forget`\\ s them.
        """
        found: list[tuple[Key, int, int]] = []
        for key, seen in list(self.taken.items()):
            hw = highwater(key)
            if hw is None or int(hw) >= seen + 1:
                self.behind.pop(key, None)
                continue
            if self.behind.get(key) != seen:
                self.behind[key] = seen  # first sighting: look again at the next check
                continue
            found.append((key, int(hw), seen + 1))
        return found


class Frontier:
    """Per partition: the next offset not yet stored, counting from where this worker's assignment began.

    The commit of a raw partition is this offset and nothing else. The consumer's own bookkeeping
    (faust-streaming 0.15) commits the acked offsets it holds, and two of its paths pass over messages
    the agent never received: records that reach a stream while a rebalance has its flow suspended are
    acked unseen, and a partition with no committed offset commits from its first acked offset,
    wherever that is. Seen in the two-worker kill test: the survivor took a dead worker's partition
    from offset 179 and committed 230; offsets 0-178 were never stored (one run in two).

    * :meth:`begin` sets where a partition starts (its committed offset, or the log start) once per
      assignment; :meth:`forget` ends it (revoked).
    * :meth:`stored` moves the frontier over each stored message; offsets above a missing one wait.
    * :meth:`holes`: a partition's messages are stored in the order they were taken, so a stored
      offset above the frontier means the messages at the frontier never came; so does a log that
      goes past the frontier while the worker holds none of the partition's messages. Seen at two
      checks in a row with the frontier unmoved, the partition is reported, to be read again from the
      frontier (again after ``retry_s`` if it still has not moved: a seek can race a fetch already
      under way). The store keeps each item once, so reading again is safe.
    """

    def __init__(self, retry_s: float = 15.0) -> None:
        self.retry_s = retry_s
        #: the next offset not known stored, per begun partition
        self.done: dict[Key, int] = {}
        #: stored offsets above ``done`` (or stored before the partition began)
        self.ahead: dict[Key, set[int]] = {}
        #: the frontier seen with something stored above it at the last check
        self._suspect: dict[Key, int] = {}
        #: a hole reported: (frontier, when) -- not again until the frontier moves or retry_s passed
        self._reported: dict[Key, tuple[int, float]] = {}

    def knows(self, key: Key) -> bool:
        return key in self.done

    def begin(self, key: Key, offset: int) -> None:
        """``key`` was assigned and starts at ``offset``; nothing if it is already begun."""
        if key in self.done:
            return
        self.done[key] = max(int(offset), 0)
        self._advance(key, ())

    def restart(self, key: Key, offset: int) -> None:
        """``key`` is read again from ``offset`` (a seek back): start over there. A hole reported just before
        stays reported, so a seek that brings nothing is retried after ``retry_s``, not at the next two checks."""
        reported = self._reported.get(key)
        self.forget(key)
        self.begin(key, offset)
        if reported is not None:
            self._reported[key] = (self.done[key], reported[1])

    def forget(self, key: Key) -> None:
        for table in (self.done, self.ahead, self._suspect, self._reported):
            table.pop(key, None)

    def stored(self, keyed_offsets: Iterable[tuple[Key, int]]) -> None:
        """These messages are stored (and published): move each partition's frontier over them."""
        by_key: dict[Key, list[int]] = {}
        for key, offset in keyed_offsets:
            by_key.setdefault(key, []).append(offset)
        for key, offsets in by_key.items():
            self._advance(key, offsets)

    def _advance(self, key: Key, offsets: Sequence[int]) -> None:
        done = self.done.get(key)
        ahead = self.ahead.get(key)
        if done is not None and not ahead and offsets and offsets[0] == done and offsets[-1] - done == len(offsets) - 1:
            self.done[key] = offsets[-1] + 1  # the usual case: one contiguous run from the frontier
            return
        if ahead is None:
            ahead = self.ahead[key] = set()
        ahead.update(offsets)
        if done is None:
            return
        ahead.difference_update([o for o in ahead if o < done])
        while done in ahead:
            ahead.discard(done)
            done += 1
        self.done[key] = done

    def commit_offset(self, key: Key) -> int | None:
        """The offset ``key`` may commit (None: not begun, commit nothing)."""
        return self.done.get(key)

    def unbegun(self) -> list[Key]:
        """Partitions with stored messages but no start yet (their commit waits)."""
        return [key for key, ahead in self.ahead.items() if ahead and key not in self.done]

    def holes(
        self, log_end: Callable[[Key], int | None], idle: Callable[[Key], bool], now: float | None = None
    ) -> list[tuple[Key, int]]:
        """Partitions to read again, with the offset to read from (see the class).

        A partition is stuck when something above its frontier was stored (the messages at the frontier
        were passed over), or when its log goes past the frontier and ``idle(key)`` says the worker holds
        none of its messages (they were passed over and nothing came after). ``log_end(key)``: the
        partition's log end offset (None: unknown).
        """
        now = time.monotonic() if now is None else now
        found: list[tuple[Key, int]] = []
        for key, done in self.done.items():
            end = log_end(key)
            if not (self.ahead.get(key) or (end is not None and end > done and idle(key))):
                self._suspect.pop(key, None)
                continue
            if self._suspect.get(key) != done:
                self._suspect[key] = done  # first sighting: a store may still be finishing, a fetch arriving
                continue
            reported = self._reported.get(key)
            if reported is not None and reported[0] == done and now - reported[1] < self.retry_s:
                continue
            self._reported[key] = (done, now)
            found.append((key, done))
        return found
