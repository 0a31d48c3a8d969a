"""The one backoff the store and publish stages (and the alert agent's sends) retry with."""

from __future__ import annotations

#: Backoff between store/publish retries: starts here, doubles, capped. The cap is how long a worker
#: may sit idle after its store or broker is back (the issue measured up to 15 s with a 15 s cap),
#: traded against one failed attempt per cap per worker while it is down: at 4 s that is a connection
#: attempt every 4 s, nothing for either server, and at most 4 s of extra recovery time.
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 4.0


def next_delay(delay: float) -> float:
    """The wait after ``delay``: doubled, at most :data:`RETRY_MAX_S`."""
    return min(delay * 2, RETRY_MAX_S)


class WorkerStopping(Exception):
    """Raised inside a retry loop when the worker is shutting down; the batch stays unacked (redelivered)."""
