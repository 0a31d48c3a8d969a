"""``finsent bench store``: insert throughput and the cost of deduplicated reads, on both engines.

What it measures, per engine (a private clickhouse-server 18.16 started in a temp dir unless
``--clickhouse-url`` is given, and chdb in a temp dir unless ``--chdb-path`` is given):

* insert rate (rows/s) of ``insert_scored`` with batches of 1k and 10k realistic rows, into a
  fresh database each time (what the worker does, end to end through the Python client);
* then, on a table holding ``--rows`` items of which ``--dup-share`` were inserted twice (a
  redelivery), the median latency of the ways to count distinct items:
  ``count() FINAL`` (what the store reads), ``uniqExact(id)`` without FINAL, a plain ``count()``
  (wrong under duplicates: the floor), ``topic_counts`` (FINAL + GROUP BY, 1-min buckets), and the
  ``topic_minute`` materialized view (``uniqExactMerge``).

``--write-results`` replaces the "Store" section of bench/RESULTS.md with the tables printed.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from finsent.bench.common import hardware, plain_help, write_section
from finsent.core.events import RawItem, ScoredItem, utcnow

WORDS = (
    "shares",
    "fell",
    "after",
    "the",
    "company",
    "cut",
    "its",
    "guidance",
    "amid",
    "weak",
    "demand",
    "and",
    "rising",
    "costs",
    "analysts",
    "expect",
    "margins",
    "to",
    "recover",
    "as",
    "inflation",
    "eases",
    "and",
    "the",
    "central",
    "bank",
    "holds",
    "rates",
    "steady",
)
TOPICS = ("macro", "earnings", "m&a", "markets", "crypto", "energy", "tech", "banks")
SENTIMENTS = ("negative", "neutral", "positive")


def synthetic_items(n: int, seed: int = 0, spread_s: int = 3600, prefix: str = "b") -> list[ScoredItem]:
    """``n`` realistic scored items (~150-char texts, 8 topics) ingested over the last ``spread_s`` s."""
    rng = random.Random(seed)
    now = utcnow()
    out = []
    for i in range(n):
        s = rng.choice(SENTIMENTS)
        p = {k: 0.1 for k in SENTIMENTS}
        p[s] = 0.8
        out.append(
            ScoredItem(
                item=RawItem(
                    id=f"{prefix}{seed}-{i}",
                    source=rng.choice(("reuters", "stocktwits", "sec-8k")),
                    source_type=rng.choice(("news", "social")),
                    text=" ".join(rng.choices(WORDS, k=22)),
                    ingested_at=now - timedelta(milliseconds=rng.randrange(spread_s * 1000)),
                    title=None,
                    url=f"https://example.com/{i}",
                    tickers=("AAPL",) if i % 3 == 0 else (),
                ),
                sentiment=s,
                sentiment_probs=p,
                topic=rng.choice(TOPICS),
                topic_prob=0.9,
                model_version="bench",
            )
        )
    return out


def _median_ms(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm-up (caches, first-use compilation)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def read_queries(store: Any) -> dict[str, Callable[[], Any]]:
    """The ways to count distinct stored items whose latency the bench compares."""
    db = store.database
    since = {"s": 0}
    return {
        "count() FINAL": lambda: store.query(f"SELECT count() FROM {db}.items FINAL"),
        "uniqExact(id)": lambda: store.query(f"SELECT uniqExact(id) FROM {db}.items"),
        "count() (no dedup)": lambda: store.query(f"SELECT count() FROM {db}.items"),
        "topic_counts (FINAL, 1m)": lambda: store.topic_counts(timedelta(days=1), 60),
        "topic_minute MV": lambda: store.topic_minute_counts(timedelta(days=1)),
        "uniqExact per topic+minute": lambda: store.query(
            f"SELECT toStartOfMinute(ingested_at) AS m, topic, uniqExact(id) FROM {db}.items "
            "WHERE ingested_at >= toDateTime({s:UInt32}, 'UTC') GROUP BY m, topic",
            since,
        ),
    }


def bench_engine(
    name: str, url_for: Callable[[str], str], rows: int, dup_share: float, repeat: int, progress: Callable[[str], None]
) -> dict[str, Any]:
    from finsent.stream.store import open_store

    result: dict[str, Any] = {"engine": name, "insert": {}, "read": {}}
    for batch in (1_000, 10_000):
        total = max(batch, (rows // batch) * batch)
        items = synthetic_items(total, seed=batch)
        store = open_store(url_for(f"bench_ins_{batch}"))
        try:
            store.query(f"DROP DATABASE IF EXISTS {store.database}")  # type: ignore[attr-defined]
            store.ensure_schema()
            result["version"] = store.capabilities.version_text  # type: ignore[attr-defined]
            t0 = time.perf_counter()
            for i in range(0, total, batch):
                store.insert_scored(items[i : i + batch])
            elapsed = time.perf_counter() - t0
            result["insert"][batch] = total / elapsed
            progress(f"{name}: {total} rows in batches of {batch}: {total / elapsed:,.0f} rows/s")
            if batch == 10_000:
                dups = items[: int(total * dup_share)]
                for i in range(0, len(dups), batch):
                    store.insert_scored(dups[i : i + batch])  # redelivered copies
                queries = read_queries(store)
                result["table_rows"] = store.count(physical=True)  # type: ignore[call-arg]
                for label, fn in queries.items():
                    result["read"][label] = _median_ms(fn, repeat)
                    progress(f"{name}: {label}: {result['read'][label]:.1f} ms")
        finally:
            try:
                store.query(f"DROP DATABASE IF EXISTS {store.database}")  # type: ignore[attr-defined]
            finally:
                store.close()
    return result


def bench_rescore(name: str, url: str, rows: int, rescore_share: float, progress: Callable[[str], None]) -> dict:
    """Which distinct count is *right* after re-scoring: re-score a share of the items with a
    newer model that flips their sentiment, then count negative items each way."""
    from dataclasses import replace

    from finsent.stream.store import open_store

    items = synthetic_items(rows, seed=7, prefix="r")
    flip = {"negative": "positive", "neutral": "negative", "positive": "neutral"}
    later = utcnow() + timedelta(seconds=5)
    rescored = [
        replace(s, sentiment=flip[s.sentiment], model_version="bench-v2", scored_at=later)
        for s in items[: int(rows * rescore_share)]
    ]
    truth = sum(1 for s in rescored + items[len(rescored) :] if s.sentiment == "negative")
    store = open_store(url)
    try:
        store.query(f"DROP DATABASE IF EXISTS {store.database}")  # type: ignore[attr-defined]
        store.ensure_schema()
        store.insert_scored(items)
        store.insert_scored(rescored)
        db = store.database  # type: ignore[attr-defined]
        out = {
            "truth": truth,
            "items FINAL (topic_counts)": sum(t.negative for t in store.topic_counts(timedelta(days=1), 3600)),
            "topic_minute MV": sum(t.negative for t in store.topic_minute_counts(timedelta(days=1))),  # type: ignore[attr-defined]
            "uniqExactIf(id) no FINAL": int(
                store.query(f"SELECT uniqExactIf(id, sentiment = 'negative') FROM {db}.items")[0][0]
            ),
        }
        progress(f"{name}: negative items after re-scoring {len(rescored)} of {rows}: {out}")
        return out
    finally:
        try:
            store.query(f"DROP DATABASE IF EXISTS {store.database}")  # type: ignore[attr-defined]
        finally:
            store.close()


LAYOUT_QUERIES = {
    "count() FINAL, last 1h": "SELECT count() FROM {t} FINAL WHERE ingested_at >= now() - 3600",
    "per topic+minute FINAL, last 6h": (
        "SELECT toStartOfMinute(ingested_at) AS m, topic, count() FROM "
        "(SELECT ingested_at, topic FROM {t} FINAL WHERE ingested_at >= now() - 21600) GROUP BY m, topic"
    ),
    "count() FINAL, all 30 days": "SELECT count() FROM {t} FINAL",
}


def bench_key_layout(name: str, url: str, rows: int, repeat: int, progress: Callable[[str], None]) -> dict:
    """Sorting key ``id`` vs ``(toStartOfDay(ingested_at), id)`` for time-window FINAL queries, on
    ``rows`` items spread over 30 days (+10% redelivered), generated server-side."""
    from finsent.stream.store import open_store

    store = open_store(url)
    out: dict[str, dict[str, float]] = {}
    try:
        db = store.database  # type: ignore[attr-defined]
        store.query(f"DROP DATABASE IF EXISTS {db}")
        store.query(f"CREATE DATABASE {db}")
        for key in ("id", "(toStartOfDay(ingested_at), id)"):
            t = f"{db}.layout_{len(out)}"
            store.query(
                f"CREATE TABLE {t} (id String, ingested_at DateTime('UTC'), topic String, version UInt64) "
                f"ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(ingested_at) ORDER BY {key}"
            )
            for version, n in ((1, rows), (2, rows // 10)):
                store.query(
                    f"INSERT INTO {t} SELECT toString(number), "
                    f"toDateTime(toUInt32(now()) - intDiv(number * 2592000, {int(rows)}), 'UTC'), "
                    f"toString(number % 8), {version} FROM system.numbers LIMIT {int(n)}"
                )
            out[key] = {
                label: _median_ms(lambda q=q, t=t: store.query(q.format(t=t)), repeat)
                for label, q in LAYOUT_QUERIES.items()
            }
            progress(f"{name}: ORDER BY {key}: {out[key]}")
        return out
    finally:
        try:
            store.query(f"DROP DATABASE IF EXISTS {store.database}")  # type: ignore[attr-defined]
        finally:
            store.close()


CONCLUSIONS = """\
What the store does with this: reads go through `items FINAL` (ReplacingMergeTree on the item id, version =
`scored_at` in ms). It is the only count above that stays equal to the truth when a newer model re-scores
items: `uniqExact(id)`-style counting (and the `topic_minute` materialized view built on it) is exact under
*redelivery* but counts a re-scored item under both its old and new label. Its price is a merge at read time
(compare `count() FINAL` with `uniqExact(id)` above), which the sorting key keeps small for dashboards: with
`ORDER BY (toStartOfDay(ingested_at), id)` a time-window query reads only the days it asks for. The
materialized view stays in the schema as the cheap source for long-range dashboards that can live with the
re-scoring caveat. `insert_scored` writes batches of up to 10k rows; on both engines 10k-row batches are
clearly faster per row than 1k-row batches (per-statement overhead and one new part per insert)."""


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    cmd = (
        f"finsent bench store --rows {args.rows} --dup-share {args.dup_share} --repeat {args.repeat} "
        f"--layout-rows {args.layout_rows}"
    )
    lines = [
        "## Store",
        "",
        f"`{cmd}` on {hardware()}." + (f" {args.note}" if args.note else ""),
        "",
        "Insert rate (`insert_scored`, end to end through the Python client, fresh database):",
        "",
        "| engine | version | batch 1k rows/s | batch 10k rows/s |",
        "|---|---|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['engine']} | {r.get('version', '?')} | {r['insert'].get(1000, 0):,.0f} | "
            f"{r['insert'].get(10000, 0):,.0f} |"
        )
    engines = " | ".join(r["engine"] for r in results)
    if results:
        tr = results[0]["table_rows"]
        lines += [
            "",
            f"Cost of reading distinct items: median ms, table of {tr['unique_ids']:,} items in "
            f"{tr['physical_rows']:,} physical rows (a {args.dup_share:.0%} redelivery, not yet merged):",
            "",
            f"| query | {engines} |",
            "|---|" + "---:|" * len(results),
        ]
        for label in results[0]["read"]:
            lines.append(f"| {label} | " + " | ".join(f"{r['read'][label]:.1f}" for r in results) + " |")
    if results and "rescore" in results[0]:
        lines += [
            "",
            f"Which count is right: negative items after re-scoring {args.rescore_share:.0%} of {args.rows:,} "
            "items with a newer model that changes their sentiment:",
            "",
            f"| count | {engines} |",
            "|---|" + "---:|" * len(results),
        ]
        for label in results[0]["rescore"]:
            lines.append(f"| {label} | " + " | ".join(f"{r['rescore'][label]:,}" for r in results) + " |")
    if results and "layout" in results[0]:
        keys = list(results[0]["layout"])
        lines += [
            "",
            f"Sorting key and time windows: median ms, {args.layout_rows:,} items over 30 days (+10% redelivered):",
            "",
            "| query | " + " | ".join(f"{r['engine']} ORDER BY {k}" for r in results for k in keys) + " |",
            "|---|" + "---:|" * (len(results) * len(keys)),
        ]
        for label in LAYOUT_QUERIES:
            lines.append(
                f"| {label} | " + " | ".join(f"{r['layout'][k][label]:.1f}" for r in results for k in keys) + " |"
            )
    lines += ["", CONCLUSIONS, ""]
    return "\n".join(lines)


def _bench_all(
    name: str, url_for: Callable[[str], str], args: argparse.Namespace, progress: Callable[[str], None]
) -> dict[str, Any]:
    result = bench_engine(name, url_for, args.rows, args.dup_share, args.repeat, progress)
    result["rescore"] = bench_rescore(name, url_for("bench_rescore"), args.rows, args.rescore_share, progress)
    if args.layout_rows > 0:
        result["layout"] = bench_key_layout(name, url_for("bench_layout"), args.layout_rows, args.repeat, progress)
    return result


def run_store(args: argparse.Namespace, settings: Any) -> int:
    from rich.console import Console

    from finsent.bench.clickhouse_server import ClickHouseServer, ServerNotInstalled

    console = Console(stderr=True)
    results = []
    server = None
    with tempfile.TemporaryDirectory(prefix="finsent-bench-store-") as tmp:
        try:
            if "clickhouse" in args.engines:
                ch_url = args.clickhouse_url
                if not ch_url:
                    server = ClickHouseServer(Path(tmp) / "server")
                    console.print(f"started clickhouse-server in {server.start():.2f}s")
                    ch_url = server.url()
                base = ch_url.split("?")[0].rsplit("/", 1)[0] if ch_url.count("/") > 2 else ch_url
                results.append(_bench_all("clickhouse-server", lambda db: f"{base}/{db}", args, console.print))
            if "chdb" in args.engines:
                path = args.chdb_path or str(Path(tmp) / "chdb")
                results.append(_bench_all("chdb", lambda db: f"chdb://{path}?database={db}", args, console.print))
        except ServerNotInstalled as exc:
            console.print(f"[red]{exc}[/red] (or pass --clickhouse-url, or --engines chdb)")
            return 1
        finally:
            if server is not None:
                server.stop()
    md = markdown(results, args)
    print(md)
    if args.write_results:
        write_section(Path(args.write_results), md, "## Store")
        console.print(f"wrote the Store section of {args.write_results}")
    return 0


def register(bench_subparsers: Any) -> None:
    p = bench_subparsers.add_parser(
        "store",
        help="store insert rate and the cost of FINAL vs uniqExact reads (clickhouse-server 18.16 and chdb)",
        description=plain_help(__doc__),
        epilog="examples:\n"
        "  finsent bench store --engines chdb --rows 20000 --layout-rows 0      quick, embedded store only\n"
        "  finsent bench store --rows 50000 --dup-share 0.1 --repeat 7 --write-results bench/RESULTS.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rows", type=int, default=50_000, help="rows per insert run and in the read table (default 50000)")
    p.add_argument("--dup-share", type=float, default=0.1, help="share of rows inserted twice (default 0.1)")
    p.add_argument(
        "--rescore-share",
        type=float,
        default=0.1,
        help="share of items re-scored with flipped sentiment in the correctness check (default 0.1)",
    )
    p.add_argument(
        "--layout-rows",
        type=int,
        default=1_000_000,
        help="items over 30 days for the sorting-key comparison; 0 skips it (default 1000000)",
    )
    p.add_argument("--repeat", type=int, default=5, help="timed repetitions per read query (median; default 5)")
    p.add_argument("--engines", default="clickhouse,chdb", help="comma-separated: clickhouse, chdb (default both)")
    p.add_argument("--clickhouse-url", default=None, help="use this server instead of starting a private 18.16")
    p.add_argument("--chdb-path", default=None, help="chdb data directory (default: a temp dir)")
    p.add_argument("--note", default="", help="free text added to the results (e.g. machine load)")
    p.add_argument(
        "--write-results",
        metavar="FILE",
        default=None,
        help="replace the '## Store' section of FILE (e.g. bench/RESULTS.md)",
    )
    p.set_defaults(func=run_store)
