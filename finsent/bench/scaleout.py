"""``finsent bench pipeline --workers N[,M...]``: throughput of N worker processes in one consumer group.

For each N: an embedded Tansu broker with fresh topics (``max(--partitions, largest N)`` partitions,
the same for every N so the runs compare), a private clickhouse-server on loopback (chdb allows one
process per data path, so several workers need a server) or ``--store clickhouse://...``, and N
real ``finsent worker`` processes (:mod:`finsent.bench.worker_pool`), each with
``cores // N`` onnxruntime threads unless ``FINSENT_MODEL_THREADS`` says otherwise. Once every
worker is ready and a warm-up batch is stored, a backlog of ``--items`` is published and each
worker's ``finsent_items_stored_total`` is polled: the total rate is backlog / (last stored - first
stored), and each worker's share of it is its rows over the same window. The store is then checked
to hold every item exactly once. ``--write-results FILE`` replaces the "Scale-out" section.

Why processes and not threads: each worker has its own GIL, consumer, model session and store
connection, exactly as N systemd units or N pods would.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from finsent.bench.common import cpu_name, load_average
from finsent.core.settings import Settings
from finsent.core.wait import wait_until

if TYPE_CHECKING:
    from finsent.stack import LocalStack

WARMUP_ITEMS = 64


def _one(
    stack: LocalStack, n: int, texts: list[str], partitions: int, store_url: str, run: str, progress: Any
) -> dict[str, Any]:
    """One run with ``n`` workers; ``run`` names its topics, group and log files (unique per run)."""
    from finsent.bench.pipeline import _items, _produce
    from finsent.bench.worker_pool import exited
    from finsent.stream.kafka import ensure_topics
    from finsent.stream.store import open_store

    suffix = run
    settings = stack.settings
    threads = settings.model.model_threads or max(1, (os.cpu_count() or 1) // (n * settings.model.model_calls))
    s = settings.model_copy(
        update={
            "store": store_url,
            "topic_raw": f"bench-raw-{suffix}",
            "topic_scored": f"bench-scored-{suffix}",
            "topic_dlq": f"bench-dlq-{suffix}",
            "topic_alerts": f"bench-alerts-{suffix}",
            "consumer_group": f"bench-{suffix}",
            "partitions": partitions,
            "session_timeout_ms": 6000,
            "model_threads": threads,
            "log_level": "WARNING",
        }
    )
    ensure_topics(s.kafka)
    store = open_store(s.storage.store, cluster=s.storage.clickhouse_cluster)  # this N's own database, closed below
    store.ensure_schema()
    load_start = load_average()
    workers = []
    try:
        for i in range(n):
            workers.append(stack.start_worker_process(f"worker {i}", settings=s, log_name=f"worker-{suffix}-{i}.log"))
        progress(f"N={n}: starting {n} worker(s), {threads} model thread(s) each")
        dead = exited(workers)
        wait_until(lambda: all(w.ready() for w in workers), 180, what=f"{n} workers ready", check=dead)
        _produce(s, _items(texts[:WARMUP_ITEMS], suffix, "warmup"))
        # the workers' own counters, not the store: a row is in the store a moment before its worker counts it
        wait_until(
            lambda: sum(w.stored() or 0 for w in workers) >= WARMUP_ITEMS, 180, what="the warm-up items", check=dead
        )
        base = [w.stored() or 0 for w in workers]
        backlog = _items(texts, suffix, "backlog")
        progress(f"N={n}: publishing {len(backlog)} items")
        t_produce = time.monotonic()
        _produce(s, backlog)
        produce_s = time.monotonic() - t_produce
        first: float | None = None
        last = 0.0
        done = list(base)
        deadline = time.monotonic() + 120 + len(backlog)
        while sum(done) - sum(base) < len(backlog):
            if time.monotonic() > deadline:
                raise TimeoutError(f"N={n}: {sum(done) - sum(base)} of {len(backlog)} stored before the deadline")
            now = [w.stored() for w in workers]
            t = time.monotonic()
            for i, v in enumerate(now):
                if v is not None and v > done[i]:
                    first = first if first is not None else t
                    last = t
                    done[i] = v
            time.sleep(0.05)
        wait_until(lambda: store.count()["rows"] >= WARMUP_ITEMS + len(backlog), 60, what="every item in the store")
        counts = store.count(physical=True)
    finally:
        stop_s = [w.stop() for w in workers]
        store.close()
    assert first is not None
    window = max(last - first, 1e-6)
    per = [d - b for d, b in zip(done, base, strict=True)]
    return {
        "workers": n,
        "model_threads_per_worker": threads,
        "partitions": partitions,
        "items": len(backlog),
        "seconds": round(window, 2),
        "publish_s": round(produce_s, 2),
        "total_items_per_s": round(len(backlog) / window, 1),
        "per_worker_items": per,
        "per_worker_items_per_s": [round(p / window, 1) for p in per],
        "store_rows": counts["rows"],
        "store_unique_ids": counts["unique_ids"],
        "store_physical_rows": counts["physical_rows"],
        "exact": counts["rows"] == counts["unique_ids"] == WARMUP_ITEMS + len(backlog),
        "stop_s": [round(x, 1) for x in stop_s],
        "exit_codes": [w.returncode for w in workers],
        "load_avg_start": load_start,
        "load_avg_end": load_average(),
    }


def run_scaleout(
    settings: Settings,
    worker_counts: list[int],
    items: int,
    model_dir: str | None,
    store_url: str | None,
    progress: Any = print,
) -> dict[str, Any]:
    from finsent.demo import load_tweets
    from finsent.stack import LocalStack
    from finsent.stream.kafka import quiet_client_logs

    quiet_client_logs(settings)
    tweets = [t["text"] for t in load_tweets()]
    texts = [tweets[i % len(tweets)] for i in range(items)]
    partitions = max(settings.kafka.partitions, max(worker_counts))
    rows = []
    # the topics, group and store of each N are its own (_one); the stack holds the broker and the server
    with LocalStack(
        settings,
        name="finsent-bench-scaleout",
        clickhouse_server=not store_url,
        open_store=False,
        declare_topics=False,
        model_dir=model_dir or settings.model.model_dir,
    ) as stack:
        run = stack.run_id
        for i, n in enumerate(worker_counts):
            url = store_url or stack.server.url(f"bench_scaleout_{run}_{i}")  # type: ignore[union-attr]
            rows.append(_one(stack, n, texts, partitions, url, f"{run}-{i}-n{n}", progress))
            r = rows[-1]
            progress(
                f"N={n}: {r['total_items_per_s']} items/s total, per worker {r['per_worker_items_per_s']}, "
                f"exact={r['exact']}"
            )
    return {
        "hardware": {"cpu": cpu_name(), "cores": os.cpu_count()},
        "store": "clickhouse-server (private, loopback)" if not store_url else store_url.split("@")[-1],
        "broker": "Tansu (embedded, in-memory)",
        "model_dir": model_dir or settings.model.model_dir or "shipped",
        "batch_max": settings.worker.batch_max,
        "runs": rows,
    }


def results_section(r: dict[str, Any], command: str, note: str | None = None) -> str:
    hw = r["hardware"]
    lines = [
        "## Scale-out",
        "",
        f"`{command}` on {hw['cpu']}, {hw['cores']} cores (busy machine: shared with other engineers' work, "
        "load averages below). Each row is N real `finsent worker` processes in one consumer group on one "
        f"{r['runs'][0]['partitions']}-partition topic (broker {r['broker']}, store {r['store']}, model "
        f"{r['model_dir']}, batch {r['batch_max']}), from a backlog, after every worker was ready and warm."
        + (f" {note}" if note else ""),
        "",
        "| workers | threads each | items | total items/s | per worker items/s | per worker items | exact | "
        "load avg (1 min) start / end |",
        "|---:|---:|---:|---:|---|---|---|---|",
    ]
    for row in r["runs"]:
        ls, le = row["load_avg_start"] or ("?",), row["load_avg_end"] or ("?",)
        lines.append(
            f"| {row['workers']} | {row['model_threads_per_worker']} | {row['items']} | {row['total_items_per_s']} | "
            f"{', '.join(str(x) for x in row['per_worker_items_per_s'])} | "
            f"{', '.join(str(x) for x in row['per_worker_items'])} | "
            f"{'yes' if row['exact'] else 'NO'} ({row['store_rows']} rows, {row['store_unique_ids']} ids) | "
            f"{ls[0]} / {le[0]} |"
        )
    lines += [
        "",
        "How: the total rate is the backlog over the time from the first to the last row stored (each worker's "
        "`finsent_items_stored_total`, polled every 50 ms); a worker's rate is its rows over that same window, so "
        "the per-worker rates add up to the total. `exact`: `count() FINAL` == `uniqExact(id)` == items published "
        "(warm-up included). A second worker adds a consumer, a model session and a store connection, not CPU: the "
        "total grows where one worker left cores idle (its stages waiting on each other) and, with more cores, up to "
        "the partition count.",
        "",
    ]
    return "\n".join(lines)


def parse_worker_counts(text: str) -> list[int]:
    counts = [int(p) for p in text.split(",") if p.strip()]
    if not counts or any(c < 1 for c in counts):
        raise ValueError("--workers takes counts >= 1, e.g. 2 or 1,2")
    return counts
