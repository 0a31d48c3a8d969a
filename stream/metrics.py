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

import json
import logging
import threading
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
            "finsent_items_scored", "Items scored and stored, by predicted topic and sentiment",
            ["topic", "sentiment"], registry=reg,
        ),
        dead_lettered=Counter(
            "finsent_items_dead_lettered", "Messages sent to the dead-letter topic", ["reason"], registry=reg
        ),
        stored=Counter("finsent_items_stored", "Rows accepted by the store", registry=reg),
        store_retries=Counter(
            "finsent_store_retries", "Batch store attempts that failed and were retried", registry=reg
        ),
        batch_size=Histogram(
            "finsent_batch_size", "Messages per scored batch", buckets=BATCH_BUCKETS, registry=reg
        ),
        inference_seconds=Histogram(
            "finsent_inference_seconds", "Classifier time per batch", buckets=INFERENCE_BUCKETS, registry=reg
        ),
        store_seconds=Histogram(
            "finsent_store_seconds", "Store insert time per batch (incl. retries)", buckets=LATENCY_BUCKETS,
            registry=reg,
        ),
        end_to_end_seconds=Histogram(
            "finsent_end_to_end_latency_seconds",
            "From an item's ingested_at to the moment its row was stored",
            buckets=LATENCY_BUCKETS, registry=reg,
        ),
        consumer_lag=Gauge(
            "finsent_consumer_lag_messages", "Messages in the partition not yet stored (log end - next to store)",
            ["kafka_topic", "partition"], registry=reg,
        ),
        partition_resets=Counter(
            "finsent_partition_resets",
            "Partitions read again from the earliest offset because their log ended below the worker's position "
            "(the broker lost it)", registry=reg,
        ),
        model_info=Gauge("finsent_model_info", "The model serving now (value 1; one series, replaced on a hot reload)",
                         ["version", "provider"], registry=reg),
        reloads=Counter("finsent_model_reloads", "Hot reloads: a new production version swapped in", registry=reg),
        reload_failures=Counter(
            "finsent_model_reload_failures",
            "Production versions that failed to load on a hot reload (the old model kept serving)", registry=reg,
        ),
    )
    for reason in DEAD_LETTER_REASONS:  # dashboards and alerts see 0, not "no data", before the first one
        m.dead_lettered.labels(reason)
    return m


class _Handler(BaseHTTPRequestHandler):
    """``/metrics``, ``/healthz`` (alive), ``/readyz`` (ready to work); every other path is a 404."""

    registry: CollectorRegistry = REGISTRY
    ready: Callable[[], tuple[bool, str]] | None = None
    routes: dict[str, Callable[[dict[str, str]], tuple[int, Any]]] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path, _, query = self.path.partition("?")
        if path in self.routes:
            params = {k: v[-1] for k, v in urllib.parse.parse_qs(query).items()}
            try:
                status, body = self.routes[path](params)
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
            known = ", ".join(["/metrics", "/healthz", "/readyz", *sorted(self.routes)])
            self._reply(404, f"not found: try {known}\n".encode())

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the scraper gave up (its timeout) before the answer: nothing to report, no traceback

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - scrapes are not news
        pass


def serve_metrics(
    host: str,
    port: int,
    registry: CollectorRegistry | None = None,
    ready: Callable[[], tuple[bool, str]] | None = None,
    routes: dict[str, Callable[[dict[str, str]], tuple[int, Any]]] | None = None,
) -> ThreadingHTTPServer | None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` in a daemon thread (port 0 = off).

    ``ready`` answers ``/readyz``: ``(True, why)`` or ``(False, why)``. ``routes`` are read-only JSON
    endpoints (path -> ``handler(query params) -> (status, body)``): the worker's query API. Every long-running command
    (worker, ingesters, push endpoint, ``alerts watch``) serves its metrics through this one function.
    Raises :class:`ConfigError` when the port cannot be bound.
    """
    if not port:
        return None
    handler = type("MetricsHandler", (_Handler,), {
        "registry": registry or REGISTRY,
        "ready": staticmethod(ready) if ready else None,
        "routes": dict(routes or {}),
    })
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}",
            hint="set FINSENT_METRICS_PORT (or --metrics-port) to a free port, or 0 to turn metrics off",
        ) from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="finsent-metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", host, server.server_address[1])
    return server
