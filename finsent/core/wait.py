"""One way to wait for something: :func:`wait_until`.

Why one: the demo, the benchmarks and the tests all start real processes (a broker, workers, a
store server) and then wait for a condition to hold (a worker ready, N rows stored). Each had its own
poll loop with its own interval, error type and message, and none could give up early when the thing
being waited on had already died. This is that loop once, in the leaf core, with no dependencies.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from finsent.core.errors import FinsentError

__all__ = ["WaitTimeout", "wait_until"]


class WaitTimeout(FinsentError, TimeoutError):
    """A condition did not hold in time. Also a :class:`TimeoutError`, so callers that caught that still do."""

    hint = "the machine may be busy, or what was waited on is stuck: see its log"


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    interval: float = 0.2,
    *,
    what: str = "the condition",
    check: Callable[[], None] | None = None,
) -> None:
    """Poll ``predicate`` every ``interval`` seconds until it is truthy; raise :class:`WaitTimeout` after ``timeout``.

    ``check`` runs after each failed poll and raises to give up early, e.g. when the process being waited on has
    exited: a dead worker then fails in a second with its log, not after the whole timeout. ``what`` names
    the condition in the error ("timed out after 60s waiting for <what>"). The predicate is always tried
    at least once, even with ``timeout <= 0``.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if check is not None:
            try:
                check()
            except BaseException:
                # what was waited on may have ended by doing it (a process that finished its work and exited
                # between the two calls): the condition decides, the check only cuts a hopeless wait short
                if predicate():
                    return
                raise
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
