"""``finsent bench pipeline --plumbing``: the pipeline's own rate, with a classifier that costs nothing.

With the shipped model costing ~4 ms per item on this CPU, what the streaming machinery around it
costs per item (Faust, decoding, building rows, the store insert, publishing the scored topic,
metrics, the broker) is no longer negligible, and on a GPU it decides how many workers one GPU
needs. So this runs the very same worker (:func:`finsent.stream.worker.create_app` in a
:class:`~finsent.stream.service.WorkerThread`, a real embedded Tansu broker, a real store) with
:class:`ConstantClassifier`, which answers every text with one fixed prediction.

How a round is measured: the worker is stopped, a backlog of ``items/rounds`` new items is
produced to the raw topic (so the producer's CPU is not in the window), a fresh worker is started
on the same consumer group (it resumes from the committed offsets), and the window runs from the
first batch it receives to the last batch stored. CPU time is sampled at both ends of the window
(``/proc``): this process split into its Python threads (the worker: Faust's loop, decoding,
rows, metrics, the executor threads) and its native threads (chdb's own pools, when the store is
embedded), plus the broker process and, with ``--clickhouse-server``, the server process. The
main thread polls every few milliseconds to find the window's ends; its own CPU is in the figure.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from finsent.bench.common import cpu_name, percentile
from finsent.core.events import utcnow
from finsent.core.settings import Settings
from finsent.core.wait import wait_until
from finsent.models.runtime import Prediction

if TYPE_CHECKING:
    from finsent.stack import LocalStack

#: What every text gets: a valid prediction with the labels the alert rules know.
CONSTANT_PREDICTION = Prediction(
    sentiment="neutral",
    sentiment_probs={"negative": 0.1, "neutral": 0.8, "positive": 0.1},
    topic="general",
    topic_prob=0.9,
    truncated=False,
)


class ConstantClassifier:
    """The interface the worker uses (``predict``, ``version``, ``variant``, ``provider``), at no cost."""

    version = "plumbing-constant"
    variant = "constant"
    provider = "none"

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return [CONSTANT_PREDICTION] * len(texts)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_cpu(path: str) -> tuple[str, float]:
    """(comm, utime + stime in seconds) from a ``/proc/.../stat`` file."""
    with open(path, "rb") as f:
        text = f.read().decode("ascii", "replace")
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return comm, (int(fields[11]) + int(fields[12])) / _TICK


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds used so far: this process (split), the broker, the ClickHouse server."""

    python_threads: float
    native_threads: float
    broker: float
    server: float

    @classmethod
    def take(cls, broker_pid: int | None, server_pid: int | None) -> CpuSample:
        comm, total = _stat_cpu("/proc/self/stat")
        native = 0.0
        for tid in os.listdir("/proc/self/task"):
            try:
                tcomm, t = _stat_cpu(f"/proc/self/task/{tid}/stat")
            except OSError:  # a thread that just ended
                continue
            if tcomm != comm:  # Python 3.11 leaves its threads the process name; chdb names its own
                native += t
        return cls(total - native, native, _pid_cpu(broker_pid), _pid_cpu(server_pid))

    def minus(self, other: CpuSample) -> CpuSample:
        return CpuSample(
            self.python_threads - other.python_threads,
            self.native_threads - other.native_threads,
            self.broker - other.broker,
            self.server - other.server,
        )


def _pid_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        return _stat_cpu(f"/proc/{pid}/stat")[1]
    except OSError:
        return 0.0


def _round(
    stack: LocalStack, clf: Any, texts: list[str], run: str, prefix: str, poll_s: float = 0.005
) -> dict[str, Any]:
    """One backlog through a fresh worker: items/s and CPU per item over the first-batch..last-stored window."""
    from finsent.bench.pipeline import _items, _produce

    _produce(stack.settings, _items(texts, run, prefix))
    worker = stack.start_worker(classifier=clf)
    try:
        stats = worker.scorer.stats
        t0 = time.monotonic()
        wait_until(lambda: stats.first_batch_t is not None, 120, poll_s, what="the worker's first batch")
        cpu0 = CpuSample.take(stack.broker_pid, stack.server_pid)
        left = 120 - (time.monotonic() - t0) + len(texts) / 100
        wait_until(lambda: stats.stored >= len(texts), left, poll_s, what=f"{len(texts)} items stored")
        cpu = CpuSample.take(stack.broker_pid, stack.server_pid).minus(cpu0)
        assert stats.last_stored_t is not None
        window = stats.last_stored_t - stats.first_batch_t
        snap = stats.snapshot()
    finally:
        worker.stop()
    n = len(texts)
    return {
        "items": n,
        "seconds": round(window, 3),
        "msgs_per_s": round(n / window, 1),
        "batches": snap["batches"],
        "store_s": round(snap["store_s"], 3),
        "cpu_ms_per_item": {
            "worker_python_threads": round(cpu.python_threads * 1000 / n, 4),
            "worker_native_threads": round(cpu.native_threads * 1000 / n, 4),
            "broker": round(cpu.broker * 1000 / n, 4),
            "clickhouse_server": round(cpu.server * 1000 / n, 4),
            "total": round((cpu.python_threads + cpu.native_threads + cpu.broker + cpu.server) * 1000 / n, 4),
        },
    }


def _latency(stack: LocalStack, clf: Any, texts: list[str], rate: float, seconds: float, run: str) -> dict[str, Any]:
    """ingested_at -> stored under a paced producer, on a worker that has already joined its group."""
    from finsent.bench.pipeline import _paced_latencies

    worker = stack.start_worker(classifier=clf)
    try:
        scorer = worker.scorer
        wait_until(lambda: scorer.joined, 60, 0.05, what="the consumer group join")
        time.sleep(1.0)  # the first fetches after the join
        scorer.stats.latency_floor = utcnow()
        lat = _paced_latencies(stack.settings, scorer.stats, texts, rate, seconds, run)
    finally:
        worker.stop()
    return {
        "offered_msgs_per_s": round(rate, 1),
        "seconds": seconds,
        "samples": len(lat),
        "p50_ms": round(percentile(lat, 0.50) * 1000, 1),
        "p99_ms": round(percentile(lat, 0.99) * 1000, 1),
        "max_ms": round(max(lat) * 1000, 1) if lat else None,
    }


def run_plumbing(
    settings: Settings,
    items: int,
    rounds: int,
    load: float,
    latency_seconds: float,
    store_url: str | None,
    clickhouse_server: bool = False,
    progress: Any = print,
) -> dict[str, Any]:
    """``--plumbing``: ``rounds`` backlogs of ``items/rounds`` through a fresh worker each, then latency."""
    from finsent.demo import load_tweets
    from finsent.stack import LocalStack
    from finsent.stream.kafka import quiet_client_logs

    quiet_client_logs(settings)
    tweets = [t["text"] for t in load_tweets()]
    per_round = max(settings.worker.batch_max, items // rounds)
    clf = ConstantClassifier()
    load_before = os.getloadavg()
    results: list[dict[str, Any]] = []
    with LocalStack(
        settings, name="finsent-bench-plumbing", store=store_url, clickhouse_server=clickhouse_server
    ) as stack:
        run = stack.run_id
        progress("warm-up: a small backlog through the pipeline (group join, store)")
        _round(stack, clf, [tweets[i % len(tweets)] for i in range(4 * settings.worker.batch_max)], run, "warmup")
        for r in range(rounds):
            texts = [tweets[(r * per_round + i) % len(tweets)] for i in range(per_round)]
            res = _round(stack, clf, texts, run, f"round{r}")
            results.append(res)
            progress(
                f"round {r + 1}/{rounds}: {res['msgs_per_s']:.0f} items/s, "
                f"{res['cpu_ms_per_item']['total']:.3f} ms CPU per item ({res['cpu_ms_per_item']})"
            )
        total_items = sum(x["items"] for x in results)
        rate = total_items / sum(x["seconds"] for x in results)
        latency = None
        if latency_seconds > 0:
            offered = max(1.0, load * rate)
            progress(f"latency: offering {offered:.0f} items/s for {latency_seconds:.0f}s")
            latency = _latency(stack, clf, tweets, offered, latency_seconds, run)
            latency["load_fraction"] = load
        counts = stack.store.count()
    keys = results[0]["cpu_ms_per_item"].keys()
    cpu = {k: round(sum(x["cpu_ms_per_item"][k] * x["items"] for x in results) / total_items, 4) for k in keys}
    return {
        "hardware": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "load_avg_at_start": [round(x, 2) for x in load_before],
            "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "classifier": "constant (plumbing only)",
        "store": "chdb (embedded)"
        if not (store_url or clickhouse_server)
        else ("clickhouse-server (private, loopback)" if clickhouse_server else store_url.split("://", 1)[0]),
        "broker": "Tansu (embedded, in-memory)",
        "batch_max": settings.worker.batch_max,
        "batch_within_s": settings.worker.batch_within_s,
        "rounds": rounds,
        "items_per_round": per_round,
        "per_round_msgs_per_s": [x["msgs_per_s"] for x in results],
        "plumbing_msgs_per_s": round(rate, 1),
        "cpu_ms_per_item": cpu,
        "latency": latency,
        "store_rows": counts["rows"],
        "store_duplicates": counts["rows"] - counts["unique_ids"],
    }
