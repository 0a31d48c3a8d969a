"""The batch scheduler: continuous batching over ``model_calls`` model calls at once, results kept in take order.

Anchor: none of the reviewed libraries schedule a model; the shape follows quix-streams' split of
"what to process next" from "where results go" (``Checkpoint`` vs. ``BatchingSink``): this part only
decides which taken batches go to which model call and hands each result, in take order, to
``deliver``. It knows nothing of Kafka, the store or the model (``work`` runs in the model executor).

The algorithm (unchanged from the worker it came out of):

* :meth:`BatchScheduler.take` queues a taken batch and returns at once, so the consumer refills its
  buffer meanwhile. A free model call starts now with the oldest pending batches, up to
  ``batch_max`` messages (at least one batch); a busy model finds the batches taken meanwhile when
  a call ends and scores them together. So a message waits for the take window and at most one
  model call before its own, and the model's batches grow with the load instead of with a fixed wait.
* With more than one model call free, the messages are cut into that many pieces (of at least
  :data:`SPLIT_MIN_ITEMS`), scored at once: an idle worker scores a take on every core in about
  the time of one piece, without onnxruntime's per-operator thread synchronisation.
* Backpressure: once a model call's worth (``batch_max``) is pending and every call is busy,
  :meth:`take` waits for the first call to end.
* Order: each call waits for the call started before it (a future chained call to call) before
  delivering, so results reach ``deliver`` in take order whichever call finishes first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from finsent.stream.pipeline.offsets import AckGuard

#: Smallest piece of a batch split across free model calls (smaller pieces cost more model time per item).
SPLIT_MIN_ITEMS = 16

M = TypeVar("M")
R = TypeVar("R")


class BatchScheduler(Generic[M, R]):
    """Continuous batching of taken batches over at most ``model_calls`` concurrent calls of ``work``."""

    def __init__(
        self,
        batch_max: int,
        model_calls: int,
        work: Callable[[list[M]], R],
        deliver: Callable[[AckGuard, list[M], R], Awaitable[None]],
    ) -> None:
        self.batch_max = batch_max
        self.model_calls = model_calls
        self._work = work
        self._deliver = deliver
        self.pool = ThreadPoolExecutor(max_workers=model_calls, thread_name_prefix="finsent-model")
        #: the model calls running (at most ``model_calls``)
        self.scoring: set[asyncio.Future[None]] = set()
        #: set when the newest call has delivered: the next call waits for it (take order)
        self._handed: asyncio.Future[None] | None = None
        #: batches taken while the model was busy, oldest first: the model's next call scores them together
        self._pending: list[tuple[AckGuard, list[M]]] = []
        self._pending_n = 0

    @property
    def busy(self) -> bool:
        """True while a batch is pending or being scored (a stop waits for these)."""
        return bool(self._pending or self.scoring)

    async def take(self, guard: AckGuard, messages: list[M]) -> None:
        """Queue one taken batch; start a call if one is free, else wait only when a call's worth is pending."""
        self._pending.append((guard, messages))
        self._pending_n += len(messages)
        if len(self.scoring) < self.model_calls:
            self._start()
        elif self._pending_n >= self.batch_max:  # backpressure: a model call's worth waits, no more
            # the first call to end starts the next, with what is pending (asyncio.wait cancels nothing)
            await asyncio.wait(self.scoring, return_when=asyncio.FIRST_COMPLETED)

    def _start(self) -> None:
        """Hand the oldest pending batches, up to ``batch_max`` messages (at least one batch), to the model."""
        take = 1
        n = len(self._pending[0][1])
        while take < len(self._pending) and n + len(self._pending[take][1]) <= self.batch_max:
            n += len(self._pending[take][1])
            take += 1
        chunks, self._pending = self._pending[:take], self._pending[take:]
        self._pending_n -= n
        guard = AckGuard.join([g for g, _ in chunks])
        messages = chunks[0][1] if take == 1 else [m for _, ms in chunks for m in ms]
        pieces = max(1, min(self.model_calls - len(self.scoring), len(messages) // SPLIT_MIN_ITEMS))
        size = -(-len(messages) // pieces)
        parts = [messages[i : i + size] for i in range(0, len(messages), size)]
        guard.split(len(parts))
        loop = asyncio.get_running_loop()
        for part in parts:
            before, self._handed = self._handed, loop.create_future()
            call = asyncio.ensure_future(self._call(guard, part, before, self._handed))
            self.scoring.add(call)
            call.add_done_callback(self.scoring.discard)

    async def _call(
        self, guard: AckGuard, messages: list[M], before: asyncio.Future[None] | None, handed: asyncio.Future[None]
    ) -> None:
        """One model call: ``work`` off the loop, then, after the call started before it, ``deliver``."""
        try:
            result = await asyncio.get_running_loop().run_in_executor(self.pool, self._work, messages)
            if before is not None:
                await asyncio.shield(before)  # the batch taken before this one is delivered first
            await self._deliver(guard, messages, result)
        finally:
            if not handed.done():
                handed.set_result(None)
            self.scoring.discard(asyncio.current_task())  # type: ignore[arg-type]
        while self._pending and len(self.scoring) < self.model_calls:
            self._start()  # taken while the model was busy: the model's next call(s)

    async def drain(self, deadline: float, now: Callable[[], float]) -> None:
        """At a stop: score what is pending and wait for the calls, until ``deadline`` (on the ``now`` clock)."""
        while now() < deadline:
            while self._pending and len(self.scoring) < self.model_calls:
                self._start()
            if not self.scoring:
                break
            await asyncio.wait(
                set(self.scoring), timeout=max(0.1, deadline - now()), return_when=asyncio.FIRST_COMPLETED
            )

    def close(self) -> None:
        self.pool.shutdown(wait=True)
