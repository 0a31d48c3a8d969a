"""Running an ingester as a service: readiness for ``/readyz`` and a bounded SIGTERM drain.

Why one module: the pollers, ``ingest replay`` and the push endpoint must agree on what
"ready" and "stopped" mean, so that a systemd unit or a Kubernetes probe treats them alike.

* **Ready** (``/readyz`` 200): the producer's last contact with Kafka succeeded -- it connected
  (metadata fetched) or its last publish round was acknowledged -- and the service is not
  stopping. A dry run is always ready (it talks to no broker). Alive (``/healthz``) only says
  the process answers. While not ready, a background thread retries the connection every few
  seconds, so an idle ingester becomes ready when the broker comes (back) even with nothing to publish.
* **SIGTERM / SIGINT**: stop taking work, give the publish in flight :data:`DRAIN_GRACE_S` to be
  acknowledged, hand back what is not (not counted as produced, not marked as seen: the next run
  sends it again), exit 0 with no traceback. The whole stop stays within :data:`STOP_BOUND_S`,
  inside Kubernetes' default 30 s grace period, in every state -- broker gone included.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: how long the publish in flight may still wait for its acks once a stop is asked for
DRAIN_GRACE_S = 5.0
#: what a stop takes at most, whatever the state (the tests hold every ingester to it)
STOP_BOUND_S = 10.0
#: how often a service that is not ready tries to reach Kafka again
RECONNECT_EVERY_S = 5.0


class Stopper:
    """SIGTERM/SIGINT -> ``event`` set and the publisher drained (``publisher.drain(DRAIN_GRACE_S)``)."""

    def __init__(self, publisher: Any | None, grace_s: float = DRAIN_GRACE_S) -> None:
        self.publisher = publisher
        self.grace_s = grace_s
        self.event = threading.Event()
        self.signal_name: str | None = None

    def __call__(self, signum: int | None = None, _frame: Any = None) -> None:
        first = not self.event.is_set()
        self.event.set()
        if first:
            self.signal_name = signal.Signals(signum).name if signum else "stop"
            log.info(
                "%s: stopping; the publish in flight gets %.0f s to be acknowledged", self.signal_name, self.grace_s
            )
        if self.publisher is not None:
            self.publisher.drain(self.grace_s if first else 0.0)  # a second signal: give up at once

    def install(self) -> bool:
        """Handle SIGTERM and SIGINT (only possible from the main thread; returns whether it did)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self)
        return True

    @property
    def stopped(self) -> bool:
        return self.event.is_set()


def readiness(
    publisher: Any | None, stopper: Stopper | None = None, accepting: Callable[[], bool] | None = None
) -> Callable[[], tuple[bool, str]]:
    """The ``/readyz`` answer of an ingester: ``(ready, why)``."""

    def ready() -> tuple[bool, str]:
        if stopper is not None and stopper.stopped:
            return False, "stopping"
        if accepting is not None and not accepting():
            return False, "not accepting requests"
        if publisher is None:
            return True, "ready (dry run: no Kafka)"
        return publisher.ready()

    return ready


def keep_connecting(publisher: Any | None, stop: threading.Event, every_s: float = RECONNECT_EVERY_S) -> None:
    """In a daemon thread: connect now, and again every ``every_s`` while not ready, until ``stop``."""
    if publisher is None:
        return

    def loop() -> None:
        first = True
        while not stop.is_set():
            ok, _ = publisher.ready()
            if not ok and not publisher.draining:
                try:
                    publisher.connect(quiet=not first)
                except Exception as exc:  # noqa: BLE001 - a config error surfaces on the first publish
                    log.debug("connect attempt failed: %s", exc)
            first = False
            if stop.wait(every_s):
                return

    threading.Thread(target=loop, name="finsent-kafka-connect", daemon=True).start()
