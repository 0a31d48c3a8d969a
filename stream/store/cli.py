"""``finsent query ...``: read what the pipeline stored (counts, newest negative items, alerts).

Tables for people (rich), ``--json`` for scripts and the demo. Every command works against the
store in ``settings.store`` (``--store URL`` / ``FINSENT_STORE``) and creates the schema if the
store is empty, so a fresh store answers with zeros instead of "table does not exist".
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from finsent.core.settings import Settings

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """``30s``, ``15m``, ``2h``, ``7d``, ``1w`` (argparse ``type=``)."""
    m = _DURATION.match(text)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30s, 15m, 2h, 7d or 1w")
    return timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2).lower()])


def format_duration(td: timedelta) -> str:
    """A duration for display: ``7d``, ``2h``, ``90s`` (weeks shown as days)."""
    s = int(td.total_seconds())
    for unit in ("d", "h", "m"):
        if s and s % _UNIT_S[unit] == 0:
            return f"{s // _UNIT_S[unit]}{unit}"
    return f"{s}s"


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _print_json(obj: Any) -> None:
    print(json.dumps(_jsonable(obj), ensure_ascii=False, sort_keys=False))


def _open(settings: Settings):  # type: ignore[no-untyped-def]
    from finsent.stream.store import store_from_settings

    store = store_from_settings(settings)
    try:
        store.ensure_schema()
    except Exception:
        store.close()
        raise
    return store


def _count(args: argparse.Namespace, settings: Settings) -> int:
    store = _open(settings)
    try:
        counts = store.count(args.since, physical=args.physical)  # type: ignore[call-arg]
    finally:
        store.close()
    if args.json:
        _print_json(counts)
        return 0
    window = f"last {format_duration(args.since)}" if args.since else "all time"
    print(f"{store.url_redacted} ({window}): {counts['rows']} items, {counts['unique_ids']} unique ids"
          + (f", {counts['physical_rows']} physical rows" if "physical_rows" in counts else "")
          + f", {counts['rows'] - counts['unique_ids']} duplicates")
    return 0


def topic_totals(store: Any, since: timedelta) -> list[dict[str, Any]]:
    """Distinct items per topic over the whole window (sums of the store's bucketed counts)."""
    totals: dict[str, dict[str, int]] = defaultdict(lambda: {"total": 0, "negative": 0, "neutral": 0, "positive": 0})
    bucket = max(60, int(since.total_seconds()))
    for tc in store.topic_counts(since, bucket_s=bucket):
        t = totals[tc.topic]
        for k in ("total", "negative", "neutral", "positive"):
            t[k] += getattr(tc, k)
    rows = [{"topic": topic, **t, "negative_share": round(t["negative"] / t["total"], 4) if t["total"] else 0.0}
            for topic, t in totals.items()]
    return sorted(rows, key=lambda r: (-r["negative"], -r["total"], r["topic"]))


def _top(args: argparse.Namespace, settings: Settings) -> int:
    store = _open(settings)
    try:
        topics = topic_totals(store, args.since)
        if args.topic:
            topics = [t for t in topics if t["topic"] == args.topic]
        items = store.top_negative(args.since, args.topic, args.limit)
    finally:
        store.close()
    if args.json:
        _print_json({"since_s": int(args.since.total_seconds()), "topic": args.topic, "topics": topics,
                     "negative": items})
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"Items per topic, last {format_duration(args.since)}", title_justify="left")
    for col, just in (("topic", "left"), ("total", "right"), ("negative", "right"), ("neutral", "right"),
                      ("positive", "right"), ("neg share", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in topics:
        t.add_row(r["topic"], str(r["total"]), str(r["negative"]), str(r["neutral"]), str(r["positive"]),
                  f"{r['negative_share']:.0%}")
    console.print(t)
    n = Table(title=f"Newest negative items{' in ' + args.topic if args.topic else ''}", title_justify="left")
    for col in ("ingested (UTC)", "topic", "p(neg)", "source", "text"):
        n.add_column(col, overflow="fold" if col == "text" else "ellipsis")
    for it in items:
        text = (it.get("title") or it["text"]).replace("\n", " ")
        n.add_row(it["ingested_at"].strftime("%Y-%m-%d %H:%M:%S"), it["topic"], f"{it['p_negative']:.2f}",
                  it["source"], text[:160])
    console.print(n)
    if not topics:
        console.print(f"[dim]nothing stored in the last {format_duration(args.since)} ({store.url_redacted})[/dim]")
    return 0


def _alerts(args: argparse.Namespace, settings: Settings) -> int:
    store = _open(settings)
    try:
        rows = store.alerts(args.since)
    finally:
        store.close()
    if args.json:
        _print_json(rows)
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Alerts, last {format_duration(args.since)}" if args.since else "Alerts", title_justify="left")
    for col in ("fired (UTC)", "topic", "severity", "negative/total", "share", "baseline", "score", "detector"):
        t.add_column(col)
    for a in rows:
        t.add_row(a["fired_at"].strftime("%Y-%m-%d %H:%M:%S"), a["topic"], a["severity"],
                  f"{a['negative']}/{a['total']}", f"{a['negative_share']:.0%}", f"{a['baseline_share']:.0%}",
                  f"{a['score']:.2f}", a["detector"])
    Console().print(t)
    return 0


def _schema(args: argparse.Namespace, settings: Settings) -> int:
    from finsent.stream.store import schema

    store = _open(settings)
    try:
        caps = store.capabilities  # type: ignore[attr-defined]
        db = store.database  # type: ignore[attr-defined]
    finally:
        store.close()
    print(f"-- finsent schema for ClickHouse {caps.version_text} ({store.url_redacted}); "
          f"TTL {'supported' if caps.ttl else 'not supported'}, retention_days={settings.retention_days}")
    for stmt in schema.create_statements(db, caps, settings.retention_days):
        print(stmt + ";\n")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "query",
        help="read the store: item counts, newest negative items, alerts",
        description="Read what finsent stored (FINSENT_STORE / --store). DURATION is like 30s, 15m, 2h, 7d, 1w.",
    )
    sub = p.add_subparsers(dest="query_command", metavar="QUERY", required=True)

    c = sub.add_parser(
        "count",
        help="stored items: rows and unique ids",
        description=(
            "Count stored items ingested in the window. rows: items a query sees (items FINAL, one row per id); "
            "unique_ids: distinct ids among all physical rows. rows - unique_ids is the number of duplicates a "
            "query could see, 0 when storage is idempotent. --physical adds physical_rows: rows on disk "
            "including redelivered copies that FINAL hides until background merges remove them."
        ),
    )
    c.add_argument("--since", type=parse_duration, default=None, metavar="DURATION",
                   help="only items ingested in the last DURATION (default: all)")
    c.add_argument("--physical", action="store_true", help="also report physical_rows (before deduplication)")
    c.add_argument("--json", action="store_true", help='print {"rows": N, "unique_ids": N} as JSON')
    c.set_defaults(func=_count)

    t = sub.add_parser(
        "top",
        help="per-topic counts and the newest negative items",
        description="Per-topic distinct item counts by sentiment and the newest items whose sentiment is negative.",
    )
    t.add_argument("--since", type=parse_duration, default=timedelta(hours=1), metavar="DURATION",
                   help="window of ingestion time (default: 1h)")
    t.add_argument("--topic", default=None, help="only this topic (exact label)")
    t.add_argument("--limit", type=int, default=10, help="newest negative items to show (default: 10)")
    t.add_argument("--json", action="store_true", help="print JSON: {since_s, topic, topics: [...], negative: [...]}")
    t.set_defaults(func=_top)

    a = sub.add_parser("alerts", help="alerts stored by the detectors", description="Stored alerts, newest first.")
    a.add_argument("--since", type=parse_duration, default=None, metavar="DURATION",
                   help="only alerts fired in the last DURATION (default: all)")
    a.add_argument("--json", action="store_true", help="print a JSON list")
    a.set_defaults(func=_alerts)

    s = sub.add_parser(
        "schema",
        help="create the schema if missing and print its DDL for this server",
        description="Create the tables if missing (idempotent) and print the DDL finsent uses on this server "
        "version (what a DBA or a Grafana author needs to know). Column meanings: pydoc stream.store.schema.",
    )
    s.set_defaults(func=_schema)
