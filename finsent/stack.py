"""A whole finsent stack on one machine -- broker, store, scoring workers -- started and stopped in one place.

Why: the demo and four benchmarks (pipeline, plumbing, scale-out, soak) each made a temporary
directory, started a Tansu broker, pointed a copy of the settings at it, declared the topics, opened a
store (or a private clickhouse-server), started one or more workers, and stopped all of it again in a
``finally`` block: five copies of the same sequence, each with its own order and its own gaps (a store
left open when the worker failed to start, a broker left running when the server did not come up).
:class:`LocalStack` is that sequence once::

    with LocalStack(settings, name="finsent-bench") as stack:
        worker = stack.start_worker(classifier=clf)        # in this process, on stack.store
        produce(stack.settings, items)                      # stack.settings: brokers, store, group, topics
        wait_until(lambda: worker.scorer.stats.stored >= n, 60, what=f"{n} rows stored")
    # on any exit (return, error, Ctrl-C): workers, API, store, server, broker stopped, in reverse order

Every part is registered for its stop as it is started (an :class:`contextlib.ExitStack`), so a
failure half-way through start-up stops exactly what had started. The stack is a composition of
real parts (the same broker, worker and store a user runs), which is why the demo, the benchmarks
and the tests can share it: nothing here is a test double.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from finsent.core.events import stable_id
from finsent.core.settings import Settings

if TYPE_CHECKING:
    from finsent.bench.clickhouse_server import ClickHouseServer
    from finsent.bench.worker_pool import WorkerProcess
    from finsent.core.store import Store
    from finsent.stream.broker import EmbeddedBroker
    from finsent.stream.service import WorkerThread

__all__ = ["LocalStack", "Topics"]


@dataclass(frozen=True)
class Topics:
    """The four topic names the stack's settings use."""

    raw: str
    scored: str
    dlq: str
    alerts: str


class LocalStack:
    """An embedded Tansu broker, a store and the workers started on them; a context manager.

    ``settings`` is the caller's; :attr:`settings` is the stack's copy pointing at the started broker and
    store, with a fresh consumer group (``<name>-<run_id>``), a 6 s session timeout (a stopped worker's
    partitions move on quickly) and no metrics port, updated with ``overrides`` (any other setting, e.g.
    ``partitions=2``). The store is, in order of precedence: a private clickhouse-server on loopback
    (``clickhouse_server=True``), ``store`` (a URL), or a fresh embedded chdb directory in :attr:`workdir`.

    ``open_store=False`` leaves the store to the workers (a worker process that holds an embedded store
    needs it to itself); ``declare_topics=False`` leaves the topics to the caller. ``keep_workdir=True``
    leaves :attr:`workdir` on disk at exit (the demo's ``--keep``: its store outlives the run).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        name: str = "finsent-stack",
        store: str | None = None,
        clickhouse_server: bool = False,
        database: str = "finsent_bench",
        open_store: bool = True,
        declare_topics: bool = True,
        keep_workdir: bool = False,
        run_id: str | None = None,
        **overrides: Any,
    ) -> None:
        self.base_settings = settings
        self.name = name
        self.run_id = run_id or stable_id(name, str(time.time()))[:8]
        self._store_url = store
        self._clickhouse_server = clickhouse_server
        self._database = database
        self._open_store = open_store
        self._declare_topics = declare_topics
        self.keep_workdir = keep_workdir
        self._overrides = overrides
        self._exit = contextlib.ExitStack()
        self.workdir: Path | None = None
        self.broker: EmbeddedBroker | None = None
        self.server: ClickHouseServer | None = None
        self._settings: Settings | None = None
        self._store: Store | None = None
        self.workers: list[WorkerThread] = []
        self.processes: list[WorkerProcess] = []
        self.api_url: str | None = None

    # -- start and stop -------------------------------------------------------------------------------

    def start(self) -> LocalStack:
        """Start the broker, the store and the topics (once; :meth:`__enter__` calls it too)."""
        if self.broker is None:
            try:
                self._start()
            except BaseException:
                self._exit.close()
                raise
        return self

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop everything that was started, newest first (idempotent)."""
        self._exit.close()

    def _start(self) -> None:
        from finsent.stream.broker import EmbeddedBroker

        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self._exit.callback(self._remove_workdir)
        self.broker = EmbeddedBroker(log_path=self.workdir / "tansu.log")
        self.broker.start()
        self._exit.callback(self.broker.stop)
        store_url = self._store_url or f"chdb://{self.workdir / 'chdb'}"
        if self._clickhouse_server:
            from finsent.bench.clickhouse_server import ClickHouseServer

            self.server = ClickHouseServer(self.workdir / "server")
            self._exit.callback(self.server.stop)
            self.server.start()
            store_url = self.server.url(self._database)
        update: dict[str, Any] = {
            "brokers": self.broker.bootstrap,
            "store": store_url,
            "session_timeout_ms": 6000,
            "consumer_group": f"{self.name}-{self.run_id}",
            "metrics_port": 0,
        }
        update.update(self._overrides)
        self._settings = self.base_settings.model_copy(update=update)
        if self._declare_topics:
            from finsent.stream.kafka import ensure_topics

            ensure_topics(self._settings.kafka)
        if self._open_store:
            self._store = self.open_store(self._settings.storage.store)

    def _remove_workdir(self) -> None:
        if self.workdir is not None and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def callback(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` at exit, before whatever was started earlier is stopped (e.g. unmount a disk)."""
        self._exit.callback(fn)

    # -- what the stack offers -----------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The caller's settings pointed at this stack (see the class docstring)."""
        if self._settings is None:
            raise RuntimeError("enter the LocalStack first (with LocalStack(...) as stack)")
        return self._settings

    @property
    def bootstrap(self) -> str:
        """The broker's ``host:port`` for Kafka clients."""
        assert self.broker is not None, "enter the LocalStack first"
        return self.broker.bootstrap

    @property
    def store(self) -> Store:
        """The store the stack opened (schema ensured); with ``open_store=False`` there is none."""
        if self._store is None:
            raise RuntimeError("this LocalStack did not open its store (open_store=False)")
        return self._store

    @property
    def store_url(self) -> str:
        return self.settings.storage.store

    @property
    def topics(self) -> Topics:
        s = self.settings
        return Topics(s.kafka.topic_raw, s.kafka.topic_scored, s.kafka.topic_dlq, s.kafka.topic_alerts)

    @property
    def broker_pid(self) -> int | None:
        return self.broker.proc.pid if self.broker is not None and self.broker.proc is not None else None

    @property
    def server_pid(self) -> int | None:
        return self.server.proc.pid if self.server is not None and self.server.proc is not None else None

    def open_store(self, url: str, *, cluster: str | None = None) -> Store:
        """Open ``url`` with its schema ensured; closed at exit (after the workers that use it have stopped)."""
        from finsent.stream.store import open_store

        store = open_store(url, cluster=cluster)
        self._exit.callback(store.close)
        store.ensure_schema()
        return store

    def start_worker(
        self, *, settings: Settings | None = None, store: Store | None = None, **create_kwargs: Any
    ) -> WorkerThread:
        """A scoring worker in this process (:class:`~finsent.stream.service.WorkerThread`), started.

        It stores into :attr:`store` unless ``store`` is given; ``create_kwargs`` go to ``create_worker``
        (``classifier=``, ``extensions=``). Stopped at exit; stopping it earlier yourself is fine.
        """
        from finsent.stream.service import WorkerThread

        worker = WorkerThread(settings or self.settings, store=store or self.store, **create_kwargs)
        self._exit.callback(_stop_thread, worker)
        worker.start()
        self.workers.append(worker)
        return worker

    def start_worker_process(
        self, name: str = "worker", *, settings: Settings | None = None, log_name: str | None = None
    ) -> WorkerProcess:
        """A real ``finsent worker`` process (its own ``/metrics`` port, log in :attr:`workdir`), started.

        Stopped at exit with SIGTERM (SIGKILL after 30 s) unless it already ended.
        """
        from finsent.bench.worker_pool import WorkerProcess

        assert self.workdir is not None, "enter the LocalStack first"
        proc = WorkerProcess(settings or self.settings, self.workdir / (log_name or f"{name}.log"), name=name)
        self._exit.callback(proc.stop)
        proc.start()
        self.processes.append(proc)
        return proc

    def serve_api(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve the worker's API (``/v1/...``, ``/metrics``, ``POST /v1/store/call``) on :attr:`store` from this
        process and record it next to an embedded store, so that other commands (``finsent query ...
        --store <stack.store_url>``) read this stack's store while it runs. Returns the API's base URL."""
        from finsent.stream.broker import free_port
        from finsent.stream.metrics import serve_metrics
        from finsent.stream.store import owner
        from finsent.stream.store.reports import api_handlers

        store = self.store
        ready: Callable[[], tuple[bool, str]] = (
            (lambda: self.workers[-1].scorer.readiness()) if self.workers else (lambda: (True, "store only"))
        )
        server = serve_metrics(
            host,
            port or free_port(host),
            ready=ready,
            routes=api_handlers(lambda: store),
            post_routes=owner.call_routes(lambda: store),
        )
        assert server is not None
        self._exit.callback(server.shutdown)
        record = owner.record(store, server, None)
        if record is not None:
            self._exit.callback(record.remove)
        self.api_url = f"http://{host}:{server.server_address[1]}"
        return self.api_url

    def describe(self) -> dict[str, Any]:
        """What is running, for a person or a JSON summary: broker, store, API, workers."""
        return {
            "broker": self.bootstrap,
            "broker_pid": self.broker_pid,
            "store": self.settings.redacted()["storage"]["store"],
            "api": self.api_url,
            "topics": dataclasses.asdict(self.topics),
            "consumer_group": self.settings.kafka.consumer_group,
            "workdir": str(self.workdir),
        }


def _stop_thread(worker: WorkerThread) -> None:
    # a thread that never started cannot be joined (RuntimeError): nothing to stop then
    with contextlib.suppress(RuntimeError):
        worker.stop()
