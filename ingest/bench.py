"""``finsent bench ingest``: how fast the ingest path is, stage by stage, on this machine.

Stages, each timed separately so a regression points at its cause:
normalise (HTML feed-like items -> RawItem), dedup (sqlite lookups + marks per item), and
publish (items acked by a real broker per second: an embedded Tansu unless ``--use-brokers``).
Prints a table on stderr and one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stream.settings import Settings


def _raw_fields(n: int) -> list[dict[str, Any]]:
    """Feed-like entries: HTML with entities, tracking URLs, RFC 822 dates, cashtags."""
    return [
        {
            "source": "rss:bench.example.com",
            "source_type": "news",
            "title": f"Company {i} &amp; peers: shares move on results",
            "text": f"<p>Shares of <b>$AB{i % 97:02d}</b> rose&nbsp;{i % 9}% after (NASDAQ: XY{i % 13}) said "
            f"quarterly revenue beat estimates &#8212; analysts cited demand.</p><p>More text {i}.</p>",
            "url": f"https://bench.example.com/markets/story-{i}?utm_source=rss&utm_medium=feed&id={i}",
            "published": f"Mon, 04 Mar 2024 {i % 24:02d}:{i % 60:02d}:00 -0500",
            "guid": f"bench-{i}",
        }
        for i in range(n)
    ]


def bench_command(args: argparse.Namespace, settings: Settings) -> int:
    from prometheus_client import CollectorRegistry

    from ingest.dedup import DedupStore
    from ingest.metrics import IngestMetrics
    from ingest.pipeline import Pipeline
    from ingest.publisher import Publisher
    from stream.kafka import quiet_client_logs

    quiet_client_logs(settings)
    n = args.items
    fields = _raw_fields(n)
    results: dict[str, Any] = {"items": n, "cpu": platform.processor() or platform.machine(),
                               "python": platform.python_version()}
    metrics = IngestMetrics(CollectorRegistry())
    with tempfile.TemporaryDirectory() as tmp:
        pipe = Pipeline(publisher=None, dedup=DedupStore(Path(tmp) / "d.sqlite3"), metrics=metrics)
        t0 = time.perf_counter()
        entries = [pipe.normalize("bench", **f) for f in fields]
        results["normalize_items_per_s"] = round(n / (time.perf_counter() - t0))
        entries = [e for e in entries if e is not None]

        t0 = time.perf_counter()
        for i in range(0, len(entries), args.batch):
            batch = entries[i : i + args.batch]
            new, _ = pipe.split_new(batch)
            pipe.dedup.mark(k for e in new for k in e.keys)
        results["dedup_items_per_s"] = round(len(entries) / (time.perf_counter() - t0))
        pipe.dedup.close()

        broker = None
        if not args.use_brokers:
            from stream.broker import EmbeddedBroker

            broker = EmbeddedBroker(start_timeout_s=30).start()
            settings = settings.model_copy(update={"brokers": broker.bootstrap})
        try:
            settings = settings.model_copy(update={"topic_raw": f"{settings.topic_raw}.bench.{int(time.time())}"})
            with Publisher(settings) as pub:
                pub.publish([entries[0].item])  # connect + create the topic outside the timing
                items = [e.item for e in entries]
                t0 = time.perf_counter()
                acked = 0
                for i in range(0, len(items), args.batch):
                    acked += pub.publish(items[i : i + args.batch])
                elapsed = time.perf_counter() - t0
            results["publish_items_per_s"] = round(acked / elapsed)
            results["publish_batch"] = args.batch
            results["broker"] = "embedded tansu" if broker else settings.brokers
        finally:
            if broker is not None:
                broker.stop()
    print(f"ingest bench ({n} items, batch {args.batch}, {results['broker']}):", file=sys.stderr)
    for key in ("normalize_items_per_s", "dedup_items_per_s", "publish_items_per_s"):
        print(f"  {key:<24} {results[key]:>10,}", file=sys.stderr)
    print(json.dumps(results))
    return 0


def register_bench(bench_sub: Any) -> None:
    b = bench_sub.add_parser(
        "ingest",
        help="ingest throughput: normalise, dedup (sqlite) and acked publish items/s",
        description="Items/s of each ingest stage on synthetic feed-like items. Publishing goes to an embedded "
        "Tansu broker unless --use-brokers (then --brokers / FINSENT_BROKERS).",
    )
    b.add_argument("--items", type=int, default=20_000, help="number of items (default 20000)")
    b.add_argument("--batch", type=int, default=500, help="publish/dedup batch size (default 500)")
    b.add_argument("--use-brokers", action="store_true", help="publish to the configured brokers, not an embedded one")
    b.set_defaults(func=bench_command)
