"""Prometheus metrics of the scoring worker.

Why these: ``finsent_items_scored_total{topic,sentiment}`` is what the alert rules (alerts
package) compute negative shares from, so its name and labels are a contract. The rest answer
the operator's questions: is the worker keeping up (consumed vs scored, consumer lag), is input
broken (dead letters by reason), is the model or the store the bottleneck (inference seconds,
batch sizes, end-to-end latency from ``ingested_at`` to stored).

The metrics live in prometheus-client's default registry and are created once per process
(several apps in one process, as in tests and ``finsent demo``, share them).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

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
    model_info: Gauge


_lock = threading.Lock()
_metrics: WorkerMetrics | None = None


def worker_metrics() -> WorkerMetrics:
    """The process-wide worker metrics (created on first use)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = WorkerMetrics(
                consumed=Counter("finsent_items_consumed", "Messages read from the raw topic", ["topic"]),
                scored=Counter(
                    "finsent_items_scored", "Items scored and stored, by predicted topic and sentiment",
                    ["topic", "sentiment"],
                ),
                dead_lettered=Counter(
                    "finsent_items_dead_lettered", "Messages sent to the dead-letter topic", ["reason"]
                ),
                stored=Counter("finsent_items_stored", "Rows accepted by the store"),
                store_retries=Counter("finsent_store_retries", "Batch store attempts that failed and were retried"),
                batch_size=Histogram("finsent_batch_size", "Messages per scored batch", buckets=BATCH_BUCKETS),
                inference_seconds=Histogram(
                    "finsent_inference_seconds", "Classifier time per batch", buckets=INFERENCE_BUCKETS
                ),
                store_seconds=Histogram(
                    "finsent_store_seconds", "Store insert time per batch (incl. retries)", buckets=LATENCY_BUCKETS
                ),
                end_to_end_seconds=Histogram(
                    "finsent_end_to_end_latency_seconds",
                    "From an item's ingested_at to the moment its row was stored",
                    buckets=LATENCY_BUCKETS,
                ),
                consumer_lag=Gauge(
                    "finsent_consumer_lag", "Messages behind the partition end, per partition", ["topic", "partition"]
                ),
                model_info=Gauge("finsent_model_info", "The model serving now (value 1)", ["version", "provider"]),
            )
        return _metrics


def serve_metrics(host: str, port: int) -> object | None:
    """Serve ``/metrics`` on ``host:port`` in a daemon thread (port 0 = off). Returns the server or None."""
    if not port:
        return None
    try:
        result = start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:
        raise RuntimeError(
            f"cannot serve metrics on {host}:{port} ({exc}); set FINSENT_METRICS_PORT to a free port or 0 to disable"
        ) from exc
    server = result[0] if isinstance(result, tuple) else result
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server
