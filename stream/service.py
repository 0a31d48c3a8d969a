"""Running the scoring app: as a service (``finsent worker``) or in a background thread (demo, tests).

Why not ``faust.Worker``: it owns the process (signal handlers, logging set-up, ``sys.exit``),
which the in-process demo and the tests cannot have. Both entry points here drive the app with
``app.start()`` / ``app.stop()`` on an event loop we own, so the service and the demo run the
very same code path and stop the same way: agents finish (the batch in flight is drained),
acked offsets are committed, the store is closed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

from finsent.core.settings import Settings

log = logging.getLogger(__name__)


async def _serve(app: Any, stop: asyncio.Event) -> None:
    """Start the app, wait for ``stop`` (or for the app to crash), stop the app."""
    await app.start()
    try:
        while not stop.is_set():
            if app.should_stop or getattr(app, "crash_reason", None) is not None:
                raise RuntimeError(f"the Faust app stopped on its own: {app.crash_reason!r}")
            await asyncio.sleep(0.2)
    finally:
        await app.stop()
        app.finsent.close()


class WorkerThread:
    """The scoring app on its own event loop in a daemon thread.

    ``start()`` returns once the app is started (the consumer group join continues in the
    background); ``stop()`` stops it cleanly. ``app.finsent`` (the Scorer) holds stats and the store.
    """

    def __init__(self, settings: Settings, **create_kwargs: Any) -> None:
        self.settings = settings
        self.create_kwargs = create_kwargs
        self.app: Any = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="finsent-worker", daemon=True)

    def _run(self) -> None:
        from finsent.stream.worker import create_app

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            self._stop = asyncio.Event()
            self.app = create_app(self.settings, loop=loop, **self.create_kwargs)
            task = loop.create_task(_serve(self.app, self._stop))
            loop.call_soon(self._ready.set)
            loop.run_until_complete(task)
        except BaseException as exc:  # reported by start()/stop()
            self.error = exc
            log.exception("scoring worker thread failed")
        finally:
            self._ready.set()
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def start(self, timeout_s: float = 60.0) -> WorkerThread:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"scoring worker did not start in {timeout_s}s")
        if self.error is not None:
            raise RuntimeError(f"scoring worker failed to start: {self.error}") from self.error
        return self

    @property
    def scorer(self) -> Any:
        return self.app.finsent

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 60.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"scoring worker did not stop in {timeout_s}s")

    def __enter__(self) -> WorkerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_worker(settings: Settings, extensions: Sequence[Callable[[Any, Settings], Any]] = ()) -> int:
    """``finsent worker``: run until SIGINT/SIGTERM, then stop cleanly. Returns the exit code.

    ``extensions`` add agents to the app (the composition root passes the in-stream alert detector).
    """
    from finsent.stream.kafka import ensure_topics, quiet_client_logs
    from finsent.stream.metrics import serve_metrics
    from finsent.stream.worker import create_app

    quiet_client_logs(settings)
    scorer_ref: list[Any] = []

    def ready() -> tuple[bool, str]:
        return scorer_ref[0].readiness() if scorer_ref else (False, "starting")

    from finsent.stream.store.cli import api_handlers

    # the read-only query API: `finsent query` uses it when this worker holds an embedded store
    routes = api_handlers(lambda: scorer_ref[0].store if scorer_ref else None)
    server = serve_metrics(settings.metrics_host, settings.metrics_port, ready=ready, routes=routes)
    ensure_topics(settings)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = create_app(settings, loop=loop, extensions=extensions)
    scorer = app.finsent
    scorer_ref.append(scorer)
    clf = scorer.holder.current
    log.info(
        "worker %s: %s -> model %s (%s) -> %s; batch %d / %.2fs",
        settings.consumer_group, settings.topic_raw, getattr(clf, "version", "?"), getattr(clf, "provider", "?"),
        settings.redacted()["store"], settings.batch_max, settings.batch_within_s,
    )
    try:
        loop.run_until_complete(_serve(app, stop))
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        if server is not None:
            server.shutdown()
    st = scorer.stats.snapshot()
    log.info("worker stopped: consumed %d, stored %d, dead-lettered %s", st["consumed"], st["stored"],
             st["dead_lettered"])
    return 0
