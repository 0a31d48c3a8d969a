"""Prometheus metrics of the scoring worker.

Why these: ``finsent_items_scored_total{topic,sentiment}`` is what the alert rules (alerts
package) compute negative shares from, so its name and labels are a contract. The rest answer
the operator's questions: is the worker keeping up (consumed vs scored, consumer lag), is input
broken (dead letters by reason), is the model or the store the bottleneck (inference seconds,
batch sizes, end-to-end latency from ``ingested_at`` to stored).

The metrics take a registry, like prometheus client_python's own: by default the process-wide
one that ``finsent worker`` serves, created once (several apps in one process, as in the tests
and ``finsent demo``, share it); a test passes a fresh registry. ``kafka_topic`` labels a Kafka
topic; ``topic`` is always the news topic the model predicted.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from finsent.core.errors import ConfigError
from finsent.core.events import DEAD_LETTER_REASONS

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
INFERENCE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class WorkerMetrics:
    consumed: Counter
    scored: Counter
    dead_lettered: Counter
    stored: Counter
    store_retries: Counter
    batch_size: Histogram
    inference_seconds: Histogram
    store_seconds: Histogram
    end_to_end_seconds: Histogram
    consumer_lag: Gauge
    partition_resets: Counter
    model_info: Gauge
    reloads: Counter
    reload_failures: Counter
    registry_corrupt: Gauge


_lock = threading.Lock()
_by_registry: dict[int, WorkerMetrics] = {}


def worker_metrics(registry: CollectorRegistry | None = None) -> WorkerMetrics:
    """The worker metrics on ``registry`` (default: the process-wide one), created once per registry.

    Several apps in one process (the tests, ``finsent demo``) share one set; a test that wants
    clean counters passes a fresh :class:`~prometheus_client.CollectorRegistry`.
    """
    reg = registry if registry is not None else REGISTRY
    with _lock:
        metrics = _by_registry.get(id(reg))
        if metrics is None:
            metrics = _by_registry[id(reg)] = _create(reg)
        return metrics


def _create(reg: CollectorRegistry) -> WorkerMetrics:
    m = WorkerMetrics(
        consumed=Counter("finsent_items_consumed", "Messages read from a Kafka topic", ["kafka_topic"], registry=reg),
        scored=Counter(
            "finsent_items_scored",
            "Items scored and stored, by predicted topic and sentiment",
            ["topic", "sentiment"],
            registry=reg,
        ),
        dead_lettered=Counter(
            "finsent_items_dead_lettered", "Messages sent to the dead-letter topic", ["reason"], registry=reg
        ),
        stored=Counter("finsent_items_stored", "Rows accepted by the store", registry=reg),
        store_retries=Counter(
            "finsent_store_retries", "Batch store attempts that failed and were retried", registry=reg
        ),
        batch_size=Histogram("finsent_batch_size", "Messages per scored batch", buckets=BATCH_BUCKETS, registry=reg),
        inference_seconds=Histogram(
            "finsent_inference_seconds", "Classifier time per batch", buckets=INFERENCE_BUCKETS, registry=reg
        ),
        store_seconds=Histogram(
            "finsent_store_seconds",
            "Store insert time per batch (incl. retries)",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        ),
        end_to_end_seconds=Histogram(
            "finsent_end_to_end_latency_seconds",
            "From an item's ingested_at to the moment its row was stored",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        ),
        consumer_lag=Gauge(
            "finsent_consumer_lag_messages",
            "Messages in the partition not yet stored (log end - next to store)",
            ["kafka_topic", "partition"],
            registry=reg,
        ),
        partition_resets=Counter(
            "finsent_partition_resets",
            "Partitions read again: from the earliest offset when their log ended below the worker's position "
            "(the broker lost it), or from the commit frontier when the consumer passed over messages",
            registry=reg,
        ),
        model_info=Gauge(
            "finsent_model_info",
            "The model serving now (value 1; one series, replaced on a hot reload)",
            ["version", "provider"],
            registry=reg,
        ),
        reloads=Counter("finsent_model_reloads", "Hot reloads: a new production version swapped in", registry=reg),
        reload_failures=Counter(
            "finsent_model_reload_failures",
            "Production versions that failed to load on a hot reload (the old model kept serving)",
            registry=reg,
        ),
        registry_corrupt=Gauge(
            "finsent_model_registry_corrupt",
            "1 while the model registry's aliases.json cannot be read (the worker runs on aliases.json.last-good "
            "or on FINSENT_MODEL_DIR); 0 when it reads fine",
            registry=reg,
        ),
    )
    for reason in DEAD_LETTER_REASONS:  # dashboards and alerts see 0, not "no data", before the first one
        m.dead_lettered.labels(reason)
    return m


#: Defaults of the server's limits against slow or greedy clients (:func:`serve_metrics`).
HEADER_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 256
#: How often the reaper looks for connections past their header deadline.
_REAP_EVERY_S = 0.25
_PROBE_PATHS = ("/metrics", "/healthz", "/readyz")
_TOO_MANY_BODY = b"too many open connections; retry in a moment\n"
_TOO_MANY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: "
    + str(len(_TOO_MANY_BODY)).encode()
    + b"\r\nConnection: close\r\n\r\n"
    + _TOO_MANY_BODY
)


def is_loopback(host: str) -> bool:
    """Whether a bound address is a loopback one (127.0.0.0/8, ::1, ::ffff:127.x); '' and 0.0.0.0 are not."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host == "localhost"
    mapped = getattr(addr, "ipv4_mapped", None)
    return bool((mapped or addr).is_loopback)


class GuardedHTTPServer(ThreadingHTTPServer):
    """A thread-per-connection HTTP server that no client can stall or exhaust.

    Why: the plain :class:`ThreadingHTTPServer` keeps a thread per connection for as long as the
    client likes: 1,000 half-sent requests held 1,000 threads for good (issue 22). Here

    * at most ``max_connections`` connections are open. A new one beyond that cap takes the place of the
      oldest connection that is still sending its request headers (that one is cut), so half-sent
      requests can never lock a good client out; when every open connection is being answered, the new
      one gets a 503 line and is closed at once, without a thread. Handler threads stay <= the cap whatever
      arrives (plus, for a moment, those of connections just cut, which end at once);
    * the request line and headers must be complete within ``header_timeout_s`` of the request's
      start (a *total* deadline, enforced by a reaper thread that shuts the socket, so a client
      sending one byte every few seconds is cut too); the same limit is each socket read's and
      write's timeout (a client that stops reading the answer is dropped). The handler speaks
      HTTP/1.0, one request per connection, so no connection idles between requests;
    * :meth:`shutdown` also closes every open connection, so stopping never waits for a client.
    """

    daemon_threads = True
    request_queue_size = 1024  # a burst of connects is accepted (and refused past the cap) rather than SYN-queued

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        max_connections: int = MAX_CONNECTIONS,
        header_timeout_s: float = HEADER_TIMEOUT_S,
    ) -> None:
        if max_connections < 1 or header_timeout_s <= 0:
            raise ValueError("max_connections must be >= 1 and header_timeout_s > 0")
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        #: open connection -> deadline (monotonic) of the headers being read, None while answering
        self._open: dict[socket.socket, float | None] = {}
        self._open_lock = threading.Lock()
        self._closing = threading.Event()
        #: connections refused at the cap (every one busy answering), cut to make room for a new one while
        #: still sending headers, and cut at their header deadline (tests, the log)
        self.refused = 0
        self.evicted = 0
        self.timed_out = 0
        super().__init__(address, handler)
        threading.Thread(target=self._reap, name="finsent-http-reaper", daemon=True).start()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def process_request(self, request: Any, client_address: Any) -> None:
        evict = None
        with self._open_lock:
            full = len(self._open) >= self.max_connections or self._closing.is_set()
            if full and not self._closing.is_set():
                # the cap is reached: make room by cutting the oldest connection still sending its headers
                # (a slow or half-sent request), so that a flood of those never locks out a good client
                waiting = [(deadline, id(c), c) for c, deadline in self._open.items() if deadline is not None]
                if waiting:
                    evict = min(waiting)[2]
                    del self._open[evict]
                    full = False
            if not full:
                self._open[request] = time.monotonic() + self.header_timeout_s
        if evict is not None:
            self.evicted += 1
            _cut(evict)
        if full:
            self.refused += 1
            try:
                request.setblocking(False)
                request.send(_TOO_MANY)
            except OSError:
                pass
            super().shutdown_request(request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    def arm(self, conn: socket.socket) -> None:
        """A request starts on ``conn``: its line and headers are due within ``header_timeout_s``."""
        with self._open_lock:
            if conn in self._open:
                self._open[conn] = time.monotonic() + self.header_timeout_s

    def disarm(self, conn: socket.socket) -> None:
        """The headers of ``conn``'s request are in: no deadline while it is answered."""
        with self._open_lock:
            if conn in self._open:
                self._open[conn] = None

    def _reap(self) -> None:
        while not self._closing.wait(_REAP_EVERY_S):
            now = time.monotonic()
            with self._open_lock:
                late = [c for c, deadline in self._open.items() if deadline is not None and deadline < now]
                for c in late:
                    self._open[c] = None  # cut once; the handler thread ends and removes it
            for c in late:
                self.timed_out += 1
                _cut(c)

    def shutdown(self) -> None:
        """Stop serving and close every open connection (their threads end at once)."""
        self._closing.set()
        super().shutdown()
        with self._open_lock:
            conns = list(self._open)
        for c in conns:
            _cut(c)
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that vanished or was cut is not a server error: no traceback on stderr
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError | ValueError):
            log.debug("http connection from %s ended: %s", client_address, exc)
            return
        log.error("http request from %s failed", client_address, exc_info=True)


def _cut(conn: socket.socket) -> None:
    """Shut a connection down both ways: a thread blocked reading it gets EOF at once."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """``/metrics``, ``/healthz`` (alive), ``/readyz`` (ready to work), open to all; the data API
    (``routes``) only with the bearer token, or without one only on a loopback address; every other
    path is a 404. Probes and ``/metrics`` carry counts and states, never an item's text."""

    registry: CollectorRegistry = REGISTRY
    ready: Callable[[], tuple[bool, str]] | None = None
    routes: dict[str, Callable[[dict[str, str]], tuple[int, Any]]] = {}
    #: POST routes of the data API (the worker's store calls): path -> handler(body) -> (status, JSON bytes)
    post_routes: dict[str, Callable[[bytes], tuple[int, bytes]]] = {}
    api_token: bytes | None = None
    loopback: bool = True
    server: GuardedHTTPServer

    def setup(self) -> None:
        self.timeout = self.server.header_timeout_s  # every read and write on the socket
        super().setup()

    def handle_one_request(self) -> None:
        self.server.arm(self.connection)
        super().handle_one_request()

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.server.disarm(self.connection)
        return ok

    def _api_denied(self) -> tuple[int, str] | None:
        """Why this data API request may not be answered (status, message), or None."""
        if self.api_token is None:
            if self.loopback:
                return None
            return 403, (
                "the data API is off: this worker listens beyond loopback and FINSENT_API_TOKEN is not "
                "set; set FINSENT_API_TOKEN (clients send Authorization: Bearer <token>) or bind "
                "FINSENT_METRICS_HOST to 127.0.0.1"
            )
        scheme, _, given = (self.headers.get("Authorization") or "").strip().partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.api_token):
            return None
        return 401, "missing or wrong bearer token: send Authorization: Bearer <FINSENT_API_TOKEN>"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path, _, query = self.path.partition("?")
        route = path if path in self.routes else self._prefix_route(path)
        if route is not None:
            denied = self._api_denied()
            if denied is not None:
                status, why = denied
                extra = {"WWW-Authenticate": 'Bearer realm="finsent"'} if status == 401 else {}
                self._reply(status, (json.dumps({"error": why}) + "\n").encode(), "application/json", extra)
                return
            params = {k: v[-1] for k, v in urllib.parse.parse_qs(query).items()}
            if route != path:  # /v1/entity/{id}: the rest of the path is the {id} parameter
                params["{id}"] = urllib.parse.unquote(path[len(route) :])
            try:
                status, body = self.routes[route](params)
            except (ValueError, OverflowError, KeyError) as exc:  # since=inf, 1e20, a missing name: the caller's
                status, body = 400, {"error": f"bad query parameter: {type(exc).__name__}: {exc}"}
            except Exception as exc:  # noqa: BLE001 - a failed query is an answer, not a dead server thread
                log.exception("%s failed", path)
                status, body = 503, {"error": f"{type(exc).__name__}: {exc}"}
            self._reply(status, (json.dumps(body, ensure_ascii=False) + "\n").encode(), "application/json")
        elif path == "/metrics":
            accept = self.headers.get("Accept", "")
            encoder, content_type = choose_encoder(accept)
            self._reply(200, encoder(self.registry), content_type)
        elif path == "/healthz":
            self._reply(200, b"ok\n")
        elif path == "/readyz":
            ok, why = self.ready() if self.ready is not None else (True, "ready")
            self._reply(200 if ok else 503, (why + "\n").encode())
        else:
            known = ", ".join([*_PROBE_PATHS, *sorted(self.routes)])
            self._reply(404, f"not found: try {known}\n".encode())

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        """A data API POST route (same protection as GET routes); the body has a Content-Length and a limit."""
        from finsent.stream.store.owner import MAX_CALL_BYTES

        route = self.post_routes.get(self.path.partition("?")[0])
        if route is None:
            self._reply(404, f"not found: POST serves {', '.join(sorted(self.post_routes)) or 'nothing'}\n".encode())
            return
        denied = self._api_denied()
        if denied is not None:
            extra = {"WWW-Authenticate": 'Bearer realm="finsent"'} if denied[0] == 401 else {}
            self._reply(denied[0], (json.dumps({"error": denied[1]}) + "\n").encode(), "application/json", extra)
            return
        try:
            length = int(self.headers.get("Content-Length") or "-1")
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_CALL_BYTES:
            self._reply(
                413 if length > 0 else 411,
                json.dumps({"error": f"send a Content-Length of at most {MAX_CALL_BYTES} bytes"}).encode(),
                "application/json",
            )
            return
        try:
            status, body = route(self.rfile.read(length))
        except OSError:
            self.close_connection = True
            return
        except Exception as exc:  # noqa: BLE001 - a failed call is an answer, not a dead server thread
            log.exception("POST %s failed", self.path)
            status, body = 503, json.dumps({"error": f"{type(exc).__name__}: {exc}", "type": "StoreError"}).encode()
        self._reply(status, body, "application/json")

    def _prefix_route(self, path: str) -> str | None:
        """The route a templated path belongs to: routes ending in ``/`` (``/v1/entity/``) take one more path
        segment (``/v1/entity/AAPL``, ``/v1/entity/name%3Aftx``)."""
        for route in self.routes:
            if route.endswith("/") and path.startswith(route) and len(path) > len(route):
                return route
        return None

    def _reply(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True  # the client gave up or was cut: nothing to report, no traceback

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - scrapes are not news
        pass


def serve_metrics(
    host: str,
    port: int,
    registry: CollectorRegistry | None = None,
    ready: Callable[[], tuple[bool, str]] | None = None,
    routes: dict[str, Callable[[dict[str, str]], tuple[int, Any]]] | None = None,
    *,
    api_token: str | None = None,
    post_routes: dict[str, Callable[[bytes], tuple[int, bytes]]] | None = None,
    max_connections: int = MAX_CONNECTIONS,
    header_timeout_s: float = HEADER_TIMEOUT_S,
) -> GuardedHTTPServer | None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` in a daemon thread (port 0 = off).

    ``ready`` answers ``/readyz``: ``(True, why)`` or ``(False, why)``. ``routes`` are read-only JSON
    endpoints (path -> ``handler(query params) -> (status, body)``): the worker's data API, which
    answers only with ``Authorization: Bearer <api_token>`` when a token is given; without one it
    answers on a loopback address only (403 elsewhere, saying to set FINSENT_API_TOKEN), because it
    serves stored item texts. ``post_routes`` (path -> ``handler(body) -> (status, JSON bytes)``) are
    protected the same way (the worker's ``POST /v1/store/call``).
    ``max_connections`` and ``header_timeout_s``: see :class:`GuardedHTTPServer`.
    Every long-running command (worker, ingesters, push endpoint, ``alerts watch``) serves its
    metrics through this one function. Raises :class:`ConfigError` when the port cannot be bound.
    """
    if not port:
        return None
    handler = type(
        "MetricsHandler",
        (_Handler,),
        {
            "registry": registry or REGISTRY,
            "ready": staticmethod(ready) if ready else None,
            "routes": dict(routes or {}),
            "post_routes": dict(post_routes or {}),
            "api_token": api_token.encode() if api_token else None,
        },
    )
    try:
        server = GuardedHTTPServer((host, port), handler, max_connections, header_timeout_s)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}",
            hint="set FINSENT_METRICS_PORT (or --metrics-port) to a free port, or 0 to turn metrics off",
        ) from None
    handler.loopback = is_loopback(str(server.server_address[0]))
    threading.Thread(target=server.serve_forever, name="finsent-metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", host, server.server_address[1])
    if routes and not api_token and not handler.loopback:
        log.warning(
            "the data API (%s) answers 403 on %s: set FINSENT_API_TOKEN to serve it beyond loopback "
            "(/metrics, /healthz and /readyz stay open)",
            ", ".join(sorted(routes)),
            host,
        )
    return server
