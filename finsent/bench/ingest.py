"""``finsent bench ingest``: how fast the ingest path is, stage by stage, on this machine.

Stages, each timed separately so a regression points at its cause:
normalise (HTML feed-like items -> RawItem), dedup (sqlite lookups + marks per item), publish
(items acked by a real broker per second: an embedded Tansu unless ``--use-brokers``) and the
HTTP endpoint (202-answered single-item requests per second from concurrent clients).
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

from finsent.core.settings import Settings


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


def _bench_http(settings: Settings, requests: int, concurrency: int) -> dict[str, Any]:
    """POST /v1/items requests/s (one item each, 202 = acked) from ``concurrency`` client threads."""
    import asyncio
    import threading
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from finsent.ingest.dedup import DedupStore
    from finsent.ingest.http_push import create_app
    from finsent.ingest.metrics import IngestMetrics
    from finsent.ingest.pipeline import Pipeline
    from finsent.ingest.publisher import Publisher
    from finsent.stream.broker import free_port

    pub = Publisher(settings, client_id="finsent-bench-http")
    pub.connect()
    app = create_app(
        Pipeline(publisher=pub, dedup=DedupStore(None), metrics=IngestMetrics(CollectorRegistry())), token=None
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = web.AppRunner(app, access_log=None)
    asyncio.run_coroutine_threadsafe(runner.setup(), loop).result(10)
    port = free_port()
    asyncio.run_coroutine_threadsafe(web.TCPSite(runner, "127.0.0.1", port).start(), loop).result(10)
    stamp = time.time_ns()

    def post(n: int) -> int:
        body = json.dumps({"text": f"bench push {n}", "id": f"bench-{stamp}-{n}"}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/items", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status

    try:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            statuses = list(pool.map(post, range(requests)))
        elapsed = time.perf_counter() - t0
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        pub.close()
    ok = sum(1 for s in statuses if s == 202)
    return {"http_requests_per_s": round(ok / elapsed), "http_concurrency": concurrency, "http_202": ok}


def run_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from prometheus_client import CollectorRegistry

    from finsent.ingest.dedup import DedupStore
    from finsent.ingest.metrics import IngestMetrics
    from finsent.ingest.pipeline import Pipeline
    from finsent.ingest.publisher import Publisher
    from finsent.stream.kafka import quiet_client_logs

    quiet_client_logs(settings)
    n = args.items
    fields = _raw_fields(n)
    results: dict[str, Any] = {
        "items": n,
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
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
            from finsent.stream.broker import EmbeddedBroker

            broker = EmbeddedBroker(start_timeout_s=30).start()
            settings = settings.model_copy(update={"brokers": broker.bootstrap})
        try:
            settings = settings.model_copy(update={"topic_raw": f"{settings.kafka.topic_raw}.bench.{int(time.time())}"})
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
            if args.http_requests:
                results.update(_bench_http(settings, args.http_requests, args.http_concurrency))
            results["broker"] = "embedded tansu" if broker else settings.kafka.brokers
        finally:
            if broker is not None:
                broker.stop()
    print(f"ingest bench ({n} items, batch {args.batch}, {results['broker']}):", file=sys.stderr)
    for key in ("normalize_items_per_s", "dedup_items_per_s", "publish_items_per_s", "http_requests_per_s"):
        if key in results:
            print(f"  {key:<24} {results[key]:>10,}", file=sys.stderr)
    print(json.dumps(results))
    return 0


def register(bench_sub: Any) -> None:
    b = bench_sub.add_parser(
        "ingest",
        help="ingest throughput: normalise, dedup (sqlite) and acked publish items/s",
        description="Items/s of each ingest stage on synthetic feed-like items. Publishing goes to an embedded\n"
        "Tansu broker unless --use-brokers (then --brokers / FINSENT_BROKERS).",
        epilog="examples:\n"
        "  finsent bench ingest --items 20000 --http-requests 3000\n"
        "  finsent bench ingest --http-requests 0 --use-brokers --brokers kafka-1:9092   against a real Kafka",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("--items", type=int, default=20_000, help="number of items (default 20000)")
    b.add_argument("--batch", type=int, default=500, help="publish/dedup batch size (default 500)")
    b.add_argument(
        "--http-requests",
        type=int,
        default=1000,
        metavar="N",
        help="POST /v1/items requests for the HTTP stage, one item each (0 = skip; default 1000)",
    )
    b.add_argument("--http-concurrency", type=int, default=16, metavar="N", help="client threads (default 16)")
    b.add_argument("--use-brokers", action="store_true", help="publish to the configured brokers, not an embedded one")
    b.set_defaults(func=run_ingest)
