"""Run polling sources (feeds, social APIs) on their own intervals with back-off, in threads.

Each source is independent: one failing feed backs off exponentially (or as long as the
server's ``Retry-After`` / rate-limit reset says) while the others keep their schedule, and
its error is logged on stderr naming the URL and counted in metrics. Fetches run in a small
thread pool because they are blocking network I/O; publishing is serialised by the pipeline.

A publish that Kafka did not acknowledge in time (the publisher's bounded wait) fails that poll
like a fetch error: nothing was marked as seen, so the items are fetched again next time. The
last such error of a source is kept (``_State.publish_error``) so ``--once`` can exit with it.

A poll cannot hold its slot past the fetch deadline: :class:`~finsent.ingest.fetch.Fetcher` bounds the
whole request (connect, headers, body, redirects), so a feed that drips its headers fails as
``timeout`` -- logged, counted in ``finsent_ingest_errors_total{kind="timeout"}``, backed off -- and
the slot goes to the next due source (eight such feeds no longer starve the good ones).

Stopping (:meth:`Poller.run_forever` after :attr:`Poller.stop`): no poll starts any more, polls in
flight get ``stop_grace_s`` to finish (their publish is drained by the publisher within its own
grace), and a poll still running after that -- a fetch from a slow server -- is abandoned: it has
published nothing and moved no cursor, so the next run fetches the same items. That is why the
long-running loop runs each poll in a daemon thread, not a pool the interpreter would wait for.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Protocol

from finsent.ingest.fetch import FetchError
from finsent.ingest.pipeline import Pipeline
from finsent.ingest.publisher import PublishError

log = logging.getLogger(__name__)


@dataclass
class PollOutcome:
    """What one poll did. ``wait_s``: the source asks not to be polled again sooner (rate limits)."""

    fetched: int = 0
    published: int = 0
    wait_s: float | None = None


class Source(Protocol):
    name: str  # metrics label and log name
    url: str  # what the operator configured (for error messages)
    interval_s: float

    def poll(self, pipeline: Pipeline) -> PollOutcome: ...


@dataclass(eq=False)
class _State:
    source: Source
    next_due: float = 0.0
    failures: int = 0
    ok: bool = False
    publish_error: PublishError | None = None  # the last poll's, if its items were not acked


class Poller:
    """Polls sources when due, at most ``max_workers`` at once (:meth:`run_forever`), or each once (:meth:`run_once`).

    Fairness: due sources start longest-overdue first, and sources whose last poll failed may hold at
    most ``max_workers - 1`` slots together. Eight feeds that drip their headers in a pool of eight
    would otherwise retake every slot each time their deadline freed it (1 s of back-off later), and a
    good feed would get a slot only in the instant between: 2 of 12 polls in 60 s, measured.
    """

    def __init__(
        self,
        sources: Sequence[Source],
        pipeline: Pipeline,
        *,
        max_workers: int = 4,
        max_backoff_s: float = 3600.0,
    ) -> None:
        self.states = [_State(s) for s in sources]
        self.pipeline = pipeline
        self.max_workers = max(1, min(max_workers, len(sources) or 1))
        self.max_backoff_s = max_backoff_s
        #: polls of failing sources (last poll failed) in flight at most: all slots but one, so feeds that
        #: time out again and again cannot take every slot from the ones that work
        self.failing_slots = max(1, self.max_workers - 1)
        self.stop = threading.Event()

    def _backoff(self, state: _State) -> float:
        """Exponential from min(interval, 60 s): a dead feed is retried soon, then ever more rarely."""
        base = min(state.source.interval_s, 60.0)
        return min(base * (2 ** min(state.failures - 1, 20)), self.max_backoff_s)

    def _poll_one(self, state: _State) -> None:
        src = state.source
        metrics = self.pipeline.metrics
        started = time.monotonic()
        try:
            outcome = src.poll(self.pipeline)
        except FetchError as exc:
            metrics.errors.labels(src.name, exc.kind).inc()
            state.failures += 1
            delay = max(self._backoff(state), exc.retry_after or 0.0)
            state.next_due = time.monotonic() + delay * random.uniform(1.0, 1.1)
            log.error("source %s failed (%s): %s; next try in %.0fs", src.url, exc.kind, exc, delay)
            return
        except PublishError as exc:  # already counted by the pipeline; nothing was marked as seen
            state.publish_error = exc
            state.failures += 1
            delay = self._backoff(state)
            state.next_due = time.monotonic() + delay
            log.error("source %s: items not published (%s); they will be fetched again", src.url, exc)
            return
        except Exception as exc:  # a bug in one source must not stop the others
            metrics.errors.labels(src.name, "internal").inc()
            state.failures += 1
            delay = self._backoff(state)
            state.next_due = time.monotonic() + delay
            log.exception("source %s failed unexpectedly: %s; next try in %.0fs", src.url, exc, delay)
            return
        finally:
            metrics.fetch_seconds.labels(src.name).observe(time.monotonic() - started)
        state.failures = 0
        state.ok = True
        state.publish_error = None
        delay = max(src.interval_s, outcome.wait_s or 0.0)
        state.next_due = time.monotonic() + delay * random.uniform(0.95, 1.05)
        (log.info if outcome.fetched else log.debug)(
            "%s: %d fetched, %d published", src.url, outcome.fetched, outcome.published
        )

    def run_once(self) -> tuple[int, int]:
        """Poll every source once (concurrently). Returns (succeeded, failed)."""
        with ThreadPoolExecutor(self.max_workers, thread_name_prefix="poll") as pool:
            list(pool.map(self._poll_one, self.states))
        ok = sum(1 for s in self.states if s.ok and s.failures == 0)
        return ok, len(self.states) - ok

    def _start(self, state: _State) -> Future[None]:
        """Run one poll in a daemon thread (abandoned, not waited for, when a stop outlasts its grace)."""
        fut: Future[None] = Future()

        def run() -> None:
            try:
                self._poll_one(state)
            except BaseException as exc:  # noqa: BLE001 - _poll_one catches everything; this is belt and braces
                fut.set_exception(exc)
            else:
                fut.set_result(None)

        threading.Thread(target=run, name=f"poll-{state.source.name}", daemon=True).start()
        return fut

    def run_forever(self, stop_grace_s: float = 6.0) -> None:
        """Poll each source when due until :attr:`stop` is set (SIGINT/SIGTERM in the CLI).

        Then waits at most ``stop_grace_s`` for the polls in flight; the rest are abandoned.
        """
        running: dict[Future[None], _State] = {}
        while not self.stop.is_set():
            now = time.monotonic()
            busy = set(running.values())
            failing = sum(1 for st in busy if st.failures)
            for st in sorted(self.states, key=lambda s: s.next_due):  # the longest overdue first
                if st in busy or st.next_due > now or len(running) >= self.max_workers:
                    continue
                if st.failures and failing >= self.failing_slots:
                    continue  # the last slot is kept for sources that work (see the class docstring)
                running[self._start(st)] = st
                failing += bool(st.failures)
            idle = [s.next_due for s in self.states if s not in set(running.values())]
            timeout = max(0.05, min(idle) - time.monotonic()) if idle else 1.0
            timeout = min(timeout, 1.0)
            if running:
                done, _ = wait(list(running), timeout=timeout, return_when=FIRST_COMPLETED)
                for fut in done:
                    running.pop(fut)
            else:
                self.stop.wait(timeout)
        if running:
            _, late = wait(list(running), timeout=stop_grace_s)
            for fut in late:
                log.warning(
                    "stopping: abandoned the poll of %s still in flight (nothing of it was published)",
                    running[fut].source.url,
                )
