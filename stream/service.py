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
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from finsent.core.errors import Interrupted, error_line
from finsent.core.settings import Settings

if TYPE_CHECKING:
    from finsent.stream.context import Extension, WorkerContext
    from finsent.stream.worker import Scorer, ScoringWorker

log = logging.getLogger(__name__)


#: How long stopping may take, in every state (Kafka gone included): well inside Kubernetes' 30 s grace.
STOP_TIMEOUT_S = 6.0


async def _serve(
    worker: ScoringWorker,
    stop: asyncio.Event,
    stop_timeout_s: float = STOP_TIMEOUT_S,
    on_stopping: Callable[[], Any] | None = None,
) -> bool:
    """Start the app, wait for ``stop`` (or for the app to crash), stop the app within ``stop_timeout_s``.

    A stop that Kafka cannot complete (no broker to commit to) is cut off: what was committed
    stays committed, the batches after it are redelivered to whoever consumes next, and the
    store's dedup makes that safe. The store is always closed. Returns False when the stop was cut off.
    ``on_stopping`` runs when the stop begins (the command's log policy).
    """
    clean = True
    app = worker.app
    await app.start()
    try:
        while not stop.is_set():
            if app.should_stop or getattr(app, "crash_reason", None) is not None:
                raise RuntimeError(f"the Faust app stopped on its own: {app.crash_reason!r}")
            await asyncio.sleep(0.2)
    finally:
        worker.scorer.draining.set()  # a batch waiting on a failing store or broker gives up at once
        if on_stopping is not None:
            on_stopping()
        try:
            await asyncio.wait_for(app.stop(), timeout=stop_timeout_s)
        except TimeoutError:
            clean = False
            log.warning(
                "Kafka did not let the worker stop in %.0f s; stopped without a final commit "
                "(uncommitted batches are redelivered, and stored once)",
                stop_timeout_s,
            )
        except Exception as exc:  # noqa: BLE001 - stopping must end, whatever the client library raises
            clean = False
            log.warning(
                "stopping the Faust app failed (%s: %s); the store is closed all the same", type(exc).__name__, exc
            )
        finally:
            worker.close()
    return clean


def _cancel_leftovers(loop: asyncio.AbstractEventLoop, timeout_s: float = 0.5) -> None:
    """Cancel the tasks a cut-off stop left behind, so the loop closes without 'Task was destroyed' noise."""
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not pending:
        return
    for task in pending:
        task.cancel()
    asyncio_log = logging.getLogger("asyncio")
    level = asyncio_log.level
    asyncio_log.setLevel(logging.CRITICAL)  # the cancelled client tasks' last words, for these few lines only
    try:
        loop.run_until_complete(asyncio.wait(pending, timeout=timeout_s))
    finally:
        asyncio_log.setLevel(level)


async def _watch_health(health: Any, probe: Callable[[], Any], redeclare: Callable[[], Any] | None = None) -> None:
    """Ask Kafka every 2 s (``probe``: a metadata request of the app's own client) and tick :class:`KafkaHealth`.

    A failed answer is the evidence (not the client libraries' log records); "back" is a quiet
    ``quiet_s`` without one. While Kafka is lost, and once when it is back, run ``redeclare``
    (rate-limited by the worker, once per 10 s): a restarted memory-only broker lacks our topics.
    """
    while True:
        await asyncio.sleep(2.0)
        if await probe() is False:
            health.error()
        was_lost = health.lost_since is not None
        health.tick()
        if was_lost and redeclare is not None:
            try:
                await redeclare()
            except Exception as exc:  # best effort; the publish path re-declares again on failure
                log.debug("re-declaring topics after Kafka came back failed: %s", exc)


class WorkerThread:
    """The scoring app on its own event loop in a daemon thread.

    ``start()`` returns once the app is started (the consumer group join continues in the
    background); ``stop()`` stops it cleanly. :attr:`scorer` holds stats and the store; :attr:`context`
    is what the extensions were given (``w.context.extensions.get("alerts")``).
    """

    def __init__(self, settings: Settings, **create_kwargs: Any) -> None:
        self.settings = settings
        self.create_kwargs = create_kwargs
        self.worker: ScoringWorker | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="finsent-worker", daemon=True)

    def _run(self) -> None:
        from finsent.stream.worker import create_worker

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            self._stop = asyncio.Event()
            self.worker = create_worker(self.settings, loop=loop, **self.create_kwargs)
            task = loop.create_task(_serve(self.worker, self._stop))
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
    def app(self) -> Any:
        """The Faust app (None before :meth:`start`)."""
        return self.worker.app if self.worker is not None else None

    @property
    def scorer(self) -> Scorer:
        assert self.worker is not None, "start() the worker first"
        return self.worker.scorer

    @property
    def context(self) -> WorkerContext:
        assert self.worker is not None, "start() the worker first"
        return self.worker.context

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


def _serve_api(settings: Settings, scorer_ref: list[Any]) -> tuple[Any, str | None]:
    """Claim the store and serve /metrics, the probes and the query API before the model loads.

    The owner check comes first so that an embedded store another worker holds is one clear line before any port
    is bound; the server answers ``starting`` until ``scorer_ref`` holds the scorer, and other commands reach the
    store through it (the read-only API, and the calls they make while this worker holds an embedded store).
    Returns the server and the API token.
    """
    from finsent.stream.metrics import serve_metrics
    from finsent.stream.store import owner
    from finsent.stream.store.reports import api_handlers

    def ready() -> tuple[bool, str]:
        return scorer_ref[0].readiness() if scorer_ref else (False, "starting")

    owner.mark_worker(settings.storage.store)  # an embedded store another worker holds: one line, before binding a port
    # the read-only query API, and the store calls other commands make while this worker holds an embedded store
    routes = api_handlers(lambda: scorer_ref[0].store if scorer_ref else None)
    token = settings.worker.api_token.get_secret_value() if settings.worker.api_token else None
    server = serve_metrics(
        settings.worker.metrics_host,
        settings.worker.metrics_port,
        ready=ready,
        routes=routes,
        api_token=token,
        post_routes=owner.call_routes(lambda: scorer_ref[0].store if scorer_ref else None),
    )
    return server, token


def _stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> list[int]:
    """SIGINT and SIGTERM set ``stop``; the returned list records them, the first deciding the exit code
    (SIGTERM 0: a service stopped; Ctrl-C 130)."""
    signals: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda s=sig: (signals.append(s), stop.set()))
    return signals


def _record_owner(worker: ScoringWorker, loop: asyncio.AbstractEventLoop, server: Any, token: str | None) -> Any:
    """Write the owner file other commands find this worker by (owner.py), opening the store.

    A store that is down at start is one clear line (StoreUnavailable, exit 8), not a crashing agent: the worker
    and the loop are closed and the error goes up. Once running, the worker keeps its batches and retries a store
    that goes away.
    """
    from finsent.stream.store import owner

    try:
        return owner.record(worker.context.store.get(), server, token)
    except BaseException:
        worker.close()
        loop.close()
        raise


def _quiet_kafka_at_stop(limiter: Any, health: Any) -> Callable[[], None]:
    """The stop's log policy: stopping without Kafka, the clients' complaints say nothing new, so mute them."""

    def quiet_kafka_at_stop() -> None:
        if limiter is not None and health.lost_since is not None:
            limiter.stopping = True

    return quiet_kafka_at_stop


def _log_started(settings: Settings, scorer: Scorer) -> None:
    """One line that says what this worker does: group, topic, model version and provider, store, batching."""
    clf = scorer.holder.current
    log.info(
        "worker %s: %s -> model %s (%s) -> %s; batch %d / %.2fs",
        settings.kafka.consumer_group,
        settings.kafka.topic_raw,
        getattr(clf, "version", "?"),
        getattr(clf, "provider", "?"),
        settings.redacted()["storage"]["store"],
        settings.worker.batch_max,
        settings.worker.batch_within_s,
    )


def _quiet_thread_deaths(stop: asyncio.Event, default_hook: Callable[[Any], Any]) -> Callable[[Any], None]:
    """A ``threading.excepthook`` for the stop: Faust's consumer thread, cut off while Kafka is gone, dies of a
    CancelledError; once ``stop`` is set that is one warning line, not a traceback. Before, the default hook."""

    def quiet_stop(args: Any) -> None:
        if stop.is_set():
            log.warning(
                "%s ended during shutdown: %s", getattr(args.thread, "name", "a thread"), args.exc_type.__name__
            )
        else:
            default_hook(args)

    return quiet_stop


def _close_run(loop: asyncio.AbstractEventLoop, health_timer: asyncio.Task[Any], owned: Any, server: Any) -> None:
    """After the app stopped (or failed): end the loop's tasks and the loop, remove the owner file, stop serving.

    The owner file goes only after the store is closed, so no other command opens the store while we still hold it.
    """
    health_timer.cancel()
    _cancel_leftovers(loop)
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
    if owned is not None:
        owned.remove()
    if server is not None:
        server.shutdown()


def _log_stopped(scorer: Scorer, signals: list[int]) -> Interrupted | None:
    """Log the run's counts; for a Ctrl-C stop, the :class:`Interrupted` to end with (exit 130, says how to go on)."""
    st = scorer.stats.snapshot()
    log.info(
        "worker stopped: consumed %d, stored %d, dead-lettered %s", st["consumed"], st["stored"], st["dead_lettered"]
    )
    if not (signals and signals[0] == signal.SIGINT):
        return None
    return Interrupted(
        f"worker stopped by Ctrl-C: stored {st['stored']:,} item(s), dead-lettered "
        f"{sum(st['dead_lettered'].values()):,}; offsets are committed up to what was stored",
        hint="run the same command again: it goes on from the committed offsets (ids dedup in the store)",
    )


class _PendingTaskNoise(logging.Filter):
    """Drops asyncio's "Task was destroyed but it is pending!" once the worker has stopped.

    Faust's consumer thread runs aiokafka on a loop of its own; when the broker is gone at stop, that loop ends with
    client tasks still pending, and they are collected while the process ends (after "worker stopped"): a
    traceback-like line about a library's own retry task that says nothing an operator can act on. Installed by the
    command's exit policy only, for the last second of the process; everything else on the asyncio logger passes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Task was destroyed but it is pending")


def _exit_policy(clean: bool, interrupted: Interrupted | None, default_hook: Callable[[Any], Any]) -> int:
    """The exit policy: 0 for a service stop, :class:`Interrupted` (130) for Ctrl-C, and ``os._exit`` only when
    threads linger.

    Faust's consumer thread may end only now, after the loop closed (its goodbye to the closed loop raises): the
    quiet hook stays until the threads have had their second to end. A thread that outlives that second (or a stop
    that was cut off) may still wait on a dead broker, and it is not a daemon: the store is closed and the log
    flushed, so the process ends now, with the same code and line, rather than hang past the grace period.
    """
    logging.getLogger("asyncio").addFilter(_PendingTaskNoise())
    lingering = not clean or _lingering_threads(timeout_s=1.0)
    if not lingering:  # (a process about to os._exit keeps the quiet hook to the end)
        threading.excepthook = default_hook
    if lingering:
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        if interrupted is not None:
            print(error_line(interrupted), file=sys.stderr)
        sys.stderr.flush()
        os._exit(interrupted.exit_code if interrupted is not None else 0)
    if interrupted is not None:
        raise interrupted
    return 0


def run_worker(settings: Settings, extensions: Sequence[Extension] = ()) -> int:
    """``finsent worker``: run until SIGINT/SIGTERM, then stop cleanly. Returns the exit code.

    ``extensions`` add agents to the app (the composition root passes the in-stream alert detector). The steps:
    serve the API, declare the topics, create the worker on our own loop, record the owner, serve until a signal,
    close everything, then the exit policy (:func:`_exit_policy`).
    """
    from finsent.stream import faust_adapter
    from finsent.stream.kafka import KafkaHealth, ensure_topics, quiet_client_logs
    from finsent.stream.worker import create_worker

    health = KafkaHealth(settings.kafka.brokers)
    limiter = quiet_client_logs(settings)  # rate limits the clients' lines; Kafka's health is probed below
    scorer_ref: list[Any] = []
    server, token = _serve_api(settings, scorer_ref)
    ensure_topics(settings.kafka)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    signals = _stop_on_signals(loop, stop)
    worker = create_worker(settings, loop=loop, extensions=extensions)
    scorer = worker.scorer
    owned = _record_owner(worker, loop, server, token)  # found by other commands (owner.py)
    scorer_ref.append(scorer)
    _log_started(settings, scorer)
    # a broker that lost its topics (memory-only, restarted) gets every one of ours back, internal ones too
    health_timer = loop.create_task(
        _watch_health(health, lambda: faust_adapter.kafka_answers(worker.app), scorer._redeclare_topics)
    )
    default_hook = threading.excepthook
    threading.excepthook = _quiet_thread_deaths(stop, default_hook)
    clean = True
    try:
        clean = loop.run_until_complete(_serve(worker, stop, on_stopping=_quiet_kafka_at_stop(limiter, health)))
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    finally:
        _close_run(loop, health_timer, owned, server)
    return _exit_policy(clean, _log_stopped(scorer, signals), default_hook)


def _lingering_threads(timeout_s: float) -> list[threading.Thread]:
    """Non-daemon threads still alive after ``timeout_s`` (they would keep the process from exiting)."""
    deadline = time.monotonic() + timeout_s
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    for t in others:
        t.join(max(0.0, deadline - time.monotonic()))
    return [t for t in others if t.is_alive()]
