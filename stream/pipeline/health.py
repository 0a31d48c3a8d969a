"""Readiness of one worker (``/readyz``): one owner for what the probe answers, and in which order.

Kept apart from the stages so that each stage only *reports* (the store stage says the store failed
and how; the Faust adapter says the group was joined) and this part alone decides what an operator
reads. Extensions (the alert agent, the drift timer) add their own checks through
:meth:`finsent.stream.context.Extensions.register`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from finsent.core.errors import StoreDiskFull, StoreUnavailable

#: A readiness check: (ready, why). ``why`` is what ``/readyz`` answers when not ready.
ReadyCheck = Callable[[], tuple[bool, str]]


class Health:
    """What ``/readyz`` says: model loaded, consumer group joined, store reachable (as last seen), extensions."""

    def __init__(self, holder: Any, extra: Callable[[], list[ReadyCheck]] = list) -> None:
        self._holder = holder
        self._extra = extra
        #: set by the consumer group's first assignment
        self.joined = False
        #: the last store failure, one line; None while the store works
        self.store_error: str | None = None
        #: what the last store failure was, in /readyz's words: "disk full", "unreachable" or "failing"
        self.store_error_kind = "unreachable"

    def store_failed(self, exc: BaseException) -> None:
        """The store stage saw ``exc``: remember it in the probe's words (a full disk is not an outage)."""
        self.store_error = " ".join(str(exc).split())[:200] or type(exc).__name__
        self.store_error_kind = (
            "disk full"
            if isinstance(exc, StoreDiskFull)
            else "unreachable"
            if isinstance(exc, StoreUnavailable)
            else "failing"
        )

    def store_ok(self) -> None:
        self.store_error = None

    def readiness(self) -> tuple[bool, str]:
        """``/readyz``: joined the consumer group, model loaded, store reachable (as last seen), extensions ready."""
        if self._holder.current is None:
            return False, "no model loaded"
        if not self.joined:
            return False, "not yet joined the consumer group"
        if self.store_error is not None:
            return False, f"store {self.store_error_kind}: {self.store_error}"
        for check in self._extra():
            ok, why = check()
            if not ok:
                return False, why
        return True, "ready"
