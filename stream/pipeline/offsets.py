"""The offset tracker: nothing is committed before it is stored and published.

Two parts, neither knows Faust (anchor: quix-streams' ``Checkpoint``, which commits the offsets of
what its sinks flushed and nothing else):

* :class:`AckGuard` holds one reference on every message of a taken batch, so that the consumer's
  own acking (Faust's ``take`` acks a batch when the agent asks for the next one, or when its
  generator is closed by a crash or a stop) can never mark an offset safe to commit; the final
  ack happens in :meth:`AckGuard.release`, after the batch was stored and published.
* :class:`Positions` keeps, per partition, the last offset taken and the last one stored: the lag
  gauge and the detection of a log that ends below the worker's position (a broker that lost it).

A message here is anything with ``message.incref()`` / ``ack()`` (Faust's ``Event``): what the
guard needs, and what the tests hand it without a broker.
"""

from __future__ import annotations

import logging
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
