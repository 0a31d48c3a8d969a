"""``finsent bench pipeline``: is the streaming machinery a tax on the model?

Two rates with the same classifier object, the same batch size, the same texts, on the same
machine, in one run, measured in interleaved rounds (a model-only pass, then as many new items
through the pipeline) so that load drift on a shared machine affects both sides alike:

* **model-only**: ``classifier.predict`` over the texts in batches of ``batch_max``, ``model_calls`` at a
  time as the worker runs them (after a warm-up);
* **pipeline**: a backlog of the same items on the raw topic of a real broker (embedded Tansu),
  consumed by the real scoring worker (Faust, decode, model in its executor, store insert,
  publish to the scored topic, offset commit), from the first batch received to the last one
  stored.

Their ratio is the efficiency of the pipeline (target >= 0.95). Then latency: items are offered
at a fixed rate (``--load`` x the measured pipeline capacity, default 0.5) for ``--latency-seconds``
and each item's ``ingested_at`` -> stored time is taken; p50/p99 are reported (target p99 <= 0.5 s
at half capacity). ``--write-results`` replaces the "Pipeline" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

from finsent.bench.common import cpu_name, percentile, plain_help, write_section
from finsent.core.events import RawItem, stable_id, utcnow
from finsent.core.jsonout import add_json_option, emit_json, to_stdout
from finsent.core.settings import Settings
from finsent.core.wait import wait_until


def model_only_seconds(classifier: Any, texts: list[str], batch: int, calls: int = 1) -> float:
    """Seconds ``classifier.predict`` alone takes over ``texts`` in batches of ``batch``, ``calls`` at a time.

    The worker runs up to ``model_calls`` batches at once (``Settings.model_calls``), so the model-only
    side does the same: the ratio then measures the plumbing, not a different way of running the model.
    """
    from finsent.models.runtime import predict_at_once

    t0 = time.perf_counter()
    predict_at_once(classifier, [texts[i : i + batch] for i in range(0, len(texts), batch)], calls)
    return time.perf_counter() - t0


def _items(texts: list[str], run: str, prefix: str) -> list[RawItem]:
    now = utcnow()
    return [
        RawItem(
            id=stable_id("bench", run, prefix, str(i)), source="bench", source_type="social", text=t, ingested_at=now
        )
        for i, t in enumerate(texts)
    ]


def _produce(settings: Settings, items: list[RawItem]) -> None:
    from finsent.stream.kafka import make_producer

    producer = make_producer(settings.kafka, client_id="finsent-bench")
    try:
        for it in items:
            producer.send(settings.kafka.topic_raw, key=it.id.encode(), value=it.to_json())
        producer.flush(timeout=120)
    finally:
        producer.close()


def _paced_producer(
    settings: Settings, texts: list[str], rate: float, seconds: float, run: str, sent: list[int]
) -> threading.Thread:
    """Publish at ``rate`` items/s for ``seconds``, stamping ``ingested_at`` at send time."""
    from finsent.stream.kafka import make_producer

    def loop() -> None:
        producer = make_producer(settings.kafka, client_id="finsent-bench-paced", linger_ms=0)
        t0 = time.monotonic()
        i = 0
        try:
            while True:
                el = time.monotonic() - t0
                if el >= seconds:
                    break
                due = int(el * rate)
                while i < due:
                    it = RawItem(
                        id=stable_id("bench-lat", run, str(i)),
                        source="bench",
                        source_type="social",
                        text=texts[i % len(texts)],
                        ingested_at=utcnow(),
                    )
                    producer.send(settings.kafka.topic_raw, key=it.id.encode(), value=it.to_json())
                    i += 1
                producer.flush()
                time.sleep(0.005)
            producer.flush(timeout=60)
        finally:
            producer.close()
            sent.append(i)

    th = threading.Thread(target=loop, name="finsent-bench-producer", daemon=True)
    th.start()
    return th


def _rounds(
    s: Settings, clf: Any, stats: Any, texts: list[str], chunk: int, rounds: int, run: str, progress: Any
) -> dict[str, Any]:
    """The interleaved rounds: a model-only pass over a chunk, then the same number of new items through the
    pipeline; per-round rates and the overall rates (total items over total time) of both sides."""
    batch = s.worker.batch_max
    model_only: list[float] = []
    pipeline: list[float] = []
    model_t = pipe_t = 0.0
    done = 0  # items through each side: the last round is short when --items is not rounds x chunk
    for r in range(rounds):
        part = texts[r * chunk : (r + 1) * chunk] or texts[:chunk]
        done += len(part)
        dt = model_only_seconds(clf, part, batch, s.model.model_calls)
        model_t += dt
        model_only.append(len(part) / dt)
        target = stats.snapshot()["stored"] + len(part)
        stats.first_batch_t = None
        _produce(s, _items(part, run, f"round{r}"))
        wait_until(lambda target=target: stats.snapshot()["stored"] >= target, 120 + len(part), 0.05, what=f"round {r}")
        assert stats.first_batch_t is not None and stats.last_stored_t is not None
        pt = stats.last_stored_t - stats.first_batch_t
        pipe_t += pt
        pipeline.append(len(part) / pt)
        progress(
            f"round {r + 1}/{rounds}: model-only {model_only[-1]:.1f} items/s, pipeline {pipeline[-1]:.1f} items/s"
        )
    return {
        "model_only": model_only,
        "pipeline": pipeline,
        "model_rate": done / model_t,
        "pipe_rate": done / pipe_t,
    }


def _paced_latencies(s: Settings, stats: Any, texts: list[str], rate: float, seconds: float, run: str) -> list[float]:
    """ingested_at -> stored of every item a paced producer offers at ``rate`` for ``seconds``."""
    with stats.lock:
        stats.latencies.clear()
    stored_before = stats.snapshot()["stored"]
    sent: list[int] = []
    th = _paced_producer(s, texts, rate, seconds, run, sent)
    th.join(seconds + 120)
    wait_until(
        lambda: bool(sent) and stats.snapshot()["stored"] - stored_before >= sent[0], 120, 0.05, what="paced items"
    )
    with stats.lock:
        return list(stats.latencies)


def run_bench(
    settings: Settings,
    items: int,
    load: float,
    latency_seconds: float,
    model_dir: str | None,
    store_url: str | None,
    progress: Any = print,
    rounds: int = 3,
) -> dict[str, Any]:
    from finsent.demo import load_tweets
    from finsent.models.runtime import Classifier
    from finsent.stack import LocalStack
    from finsent.stream.kafka import quiet_client_logs

    quiet_client_logs(settings)
    tweets = [t["text"] for t in load_tweets()]
    texts = [tweets[i % len(tweets)] for i in range(items)]
    progress("loading the model")
    clf = Classifier.load(
        model_dir or settings.model.model_dir,
        variant=settings.model.model_variant,
        threads=settings.model.call_threads,
        cache_dir=settings.model.cache_dir,
    )
    batch = settings.worker.batch_max
    # Rounds: model-only on a chunk, then the pipeline on a chunk of the same size, repeated. On a machine
    # whose load drifts (shared CPUs) interleaving keeps the drift out of the ratio.
    chunk = max(batch, (items // rounds) // batch * batch)
    load_before = os.getloadavg()
    with LocalStack(settings, name="finsent-bench", store=store_url) as stack:
        run = stack.run_id
        s = stack.settings
        stats = stack.start_worker(classifier=clf).scorer.stats
        progress("warm-up: one batch through the pipeline (group join, model, store)")
        _produce(s, _items(texts[:batch], run, "warmup"))
        wait_until(lambda: stats.snapshot()["stored"] >= batch, 120 + batch, 0.05, what="the warm-up batch")
        model_only_seconds(
            clf, texts[: batch * settings.model.model_calls], batch, settings.model.model_calls
        )  # warm-up here too
        rates = _rounds(s, clf, stats, texts, chunk, rounds, run, progress)
        model_rate, pipe_rate = rates["model_rate"], rates["pipe_rate"]
        st = stats.snapshot()
        progress(f"pipeline/model-only {pipe_rate / model_rate:.0%}")
        offered = max(1.0, load * pipe_rate)
        progress(f"latency: offering {offered:.1f} items/s for {latency_seconds:.0f}s")
        lat = _paced_latencies(s, stats, tweets, offered, latency_seconds, run)
        counts = stack.store.count()
    return {
        "hardware": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_at_start": [round(x, 2) for x in load_before],
        },
        "model": {
            "version": clf.version,
            "variant": clf.variant,
            "provider": clf.provider,
            "threads_per_call": settings.model.call_threads,
            "calls": settings.model.model_calls,
        },
        "store": "chdb (embedded)" if store_url is None else store_url.split("://", 1)[0],
        "broker": "Tansu (embedded, in-memory)",
        "items": items,
        "batch_max": batch,
        "batch_within_s": settings.worker.batch_within_s,
        "model_only_msgs_per_s": round(model_rate, 1),
        "rounds": rounds,
        "items_per_round": chunk,
        "model_only_per_round_msgs_per_s": [round(x, 1) for x in rates["model_only"]],
        "pipeline_per_round_msgs_per_s": [round(x, 1) for x in rates["pipeline"]],
        "pipeline_msgs_per_s": round(pipe_rate, 1),
        "ratio": round(pipe_rate / model_rate, 3),
        "pipeline_batches": st["batches"],  # includes the warm-up batch
        "pipeline_inference_s": round(st["inference_s"], 3),
        "pipeline_store_s": round(st["store_s"], 3),
        "latency": {
            "offered_msgs_per_s": round(offered, 1),
            "load_fraction": load,
            "seconds": latency_seconds,
            "samples": len(lat),
            "p50_ms": round(percentile(lat, 0.50) * 1000, 1),
            "p99_ms": round(percentile(lat, 0.99) * 1000, 1),
            "max_ms": round(max(lat) * 1000, 1) if lat else None,
        },
        "store_rows": counts["rows"],
        "store_duplicates": counts["rows"] - counts["unique_ids"],
    }


def results_section(r: dict[str, Any], command: str, note: str | None = None) -> str:
    hw = r["hardware"]
    lat = r["latency"]
    return "\n".join(
        [
            "## Pipeline",
            "",
            f"`{command}` on {hw['cpu']}, {hw['cores']} cores, Python {hw['python']} (load average "
            f"{hw['load_avg_at_start'][0]} at start: the machine is shared with a training run, so absolute "
            "numbers are pessimistic; the ratio is what this benchmark is for).",
            "",
            f"Model {r['model']['version']} ({r['model']['variant']}, {r['model']['provider']}), batch "
            f"{r['batch_max']}, {r['items']} items, store {r['store']}, broker {r['broker']}."
            + (f" {note}" if note else ""),
            "",
            "| measure | value |",
            "|---|---:|",
            f"| model-only (predict in batches of {r['batch_max']}, {r['model'].get('calls', 1)} at a time; per round "
            f"{', '.join(str(x) for x in r['model_only_per_round_msgs_per_s'])}) | "
            f"{r['model_only_msgs_per_s']:,} items/s |",
            f"| pipeline (Kafka -> Faust -> model -> store -> scored topic, from a backlog; per round "
            f"{', '.join(str(x) for x in r['pipeline_per_round_msgs_per_s'])}) | "
            f"{r['pipeline_msgs_per_s']:,} items/s |",
            f"| pipeline / model-only | {r['ratio']:.0%} (target >= 95%) |",
            f"| offered load for latency | {lat['offered_msgs_per_s']} items/s ({lat['load_fraction']:.0%} of pipeline "
            f"capacity, {lat['seconds']:.0f} s, {lat['samples']} items) |",
            f"| ingested_at -> stored p50 | {lat['p50_ms']} ms |",
            f"| ingested_at -> stored p99 | {lat['p99_ms']} ms (target <= 500 ms) |",
            f"| duplicates in the store | {r['store_duplicates']} |",
            "",
            f"How: {r['rounds']} rounds of {r['items_per_round']} items, each a model-only pass then the same "
            "number of new items through the pipeline (interleaved so that load drift on a shared machine hits both "
            "sides); rates are total items over total time. A round's pipeline time runs from the first batch the "
            "worker received to the last batch it stored, so it includes decoding, the model in its executor "
            "thread, the store insert (overlapped with scoring the next batch), publishing to the scored topic "
            "and waiting for its acks; it excludes the consumer group join. Latency is each item's "
            "`ingested_at` (stamped at send) to the moment its batch was stored, under a paced producer "
            "in the same process.",
            "",
        ]
    )


def scaleout_command(args: argparse.Namespace, settings: Settings) -> int:
    """``--workers``: N worker processes in one group (finsent.bench.scaleout)."""
    from finsent.bench.scaleout import parse_worker_counts, results_section, run_scaleout

    try:
        counts = parse_worker_counts(args.workers)
    except ValueError as exc:
        print(f"finsent bench pipeline: {exc}")
        return 2
    r = run_scaleout(settings, counts, args.items, args.model_dir, args.store)
    print(json.dumps(r, indent=2))
    if not to_stdout(args.json):
        emit_json(args.json, r)
    if args.write_results:
        cmd = f"finsent bench pipeline --workers {args.workers} --items {args.items}"
        write_section(Path(args.write_results), results_section(r, cmd, args.note), "## Scale-out")
        print(f"wrote the Scale-out section of {args.write_results}")
    return 0


def run_pipeline(args: argparse.Namespace, settings: Settings) -> int:
    if args.items < settings.worker.batch_max:
        print(f"finsent bench pipeline: --items must be at least the batch size ({settings.worker.batch_max})")
        return 2
    if not 0 < args.load <= 1:
        print("finsent bench pipeline: --load must be in (0, 1]")
        return 2
    if args.rounds < 1:
        print("finsent bench pipeline: --rounds must be >= 1")
        return 2
    if args.plumbing:
        from finsent.bench.plumbing import run_plumbing

        r = run_plumbing(
            settings,
            args.items,
            args.rounds,
            args.load,
            args.latency_seconds,
            args.store,
            clickhouse_server=args.clickhouse_server,
        )
        print(json.dumps(r, indent=2))
        if not to_stdout(args.json):
            emit_json(args.json, r)
        return 0
    if args.workers:
        return scaleout_command(args, settings)
    r = run_bench(settings, args.items, args.load, args.latency_seconds, args.model_dir, args.store, rounds=args.rounds)
    print(json.dumps(r, indent=2))
    if not to_stdout(args.json):
        emit_json(args.json, r)
    if args.write_results:
        cmd = (
            f"finsent bench pipeline --items {args.items} --rounds {args.rounds} --load {args.load} "
            f"--latency-seconds {args.latency_seconds:g}"
        )
        write_section(Path(args.write_results), results_section(r, cmd, args.note), "## Pipeline")
        print(f"wrote the Pipeline section of {args.write_results}")
    return 0


def register(bench_sub: Any) -> None:
    p = bench_sub.add_parser(
        "pipeline",
        help="end-to-end rate vs model-only rate, and ingest->stored latency at a fixed load",
        description=plain_help(__doc__),
        epilog="examples:\n"
        "  finsent bench pipeline --items 3072 --rounds 3 --latency-seconds 30    rate, ratio, latency\n"
        "  finsent bench pipeline --plumbing --items 30000 --rounds 3 --latency-seconds 20\n"
        "  finsent bench pipeline --workers 1,2 --items 1920                       one worker, then two",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--items", type=int, default=1536, help="items through each side, over all rounds (default 1536)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved model-only/pipeline rounds (default 3)")
    p.add_argument("--load", type=float, default=0.5, help="offered load for latency, as a fraction of capacity")
    p.add_argument("--latency-seconds", type=float, default=20.0, help="length of the latency run (default 20)")
    p.add_argument("--model-dir", help="model directory (default: the shipped model)")
    add_json_option(p, "the results (also printed)")
    p.add_argument("--write-results", metavar="FILE", help="replace the '## Pipeline' section of FILE")
    p.add_argument("--note", help="a sentence added to the RESULTS.md section (e.g. which model this was)")
    p.add_argument(
        "--plumbing",
        action="store_true",
        help="the pipeline with a classifier that costs nothing: the plumbing's own rate and CPU per item",
    )
    p.add_argument(
        "--clickhouse-server",
        action="store_true",
        help="with --plumbing: store in a private clickhouse-server on loopback instead of embedded chdb",
    )
    p.add_argument(
        "--workers",
        metavar="N[,M...]",
        help="run N finsent worker processes in one consumer group (clickhouse-server store) and report "
        "total and per-worker throughput; 1,2 runs N=1 then N=2",
    )
    p.set_defaults(func=run_pipeline)
