"""``finsent query ...``: read what the pipeline stored (counts, newest negative items, alerts).

Tables for people (rich), ``--json`` for scripts and the demo. Every command works against the
store in ``settings.store`` (``--store URL`` / ``FINSENT_STORE``) and creates the schema if the
store is empty, so a fresh store answers with zeros instead of "table does not exist".
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from finsent.core.argtypes import DURATION_HELP, parse_duration, positive_int
from finsent.core.errors import InputError, StoreInUse
from finsent.core.jsonout import add_json_option, emit_json, to_stdout
from finsent.core.settings import Settings

_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


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


def _open(settings: Settings):  # type: ignore[no-untyped-def]
    from finsent.stream.store import store_from_settings

    store = store_from_settings(settings)
    try:
        store.ensure_schema()
    except Exception:
        store.close()
        raise
    return store


# -- reports: the same JSON from the store or from a running worker's read-only API ---------------


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


def count_report(store: Any, since: timedelta | None = None, physical: bool = False) -> dict[str, Any]:
    return dict(store.count(since, physical=physical))


def top_report(store: Any, since: timedelta, topic: str | None = None, limit: int = 10) -> dict[str, Any]:
    """Per-topic totals and the newest negative items; ``topic`` matches a stored topic case-insensitively."""
    topics = topic_totals(store, since)
    if topic:
        matches = [t for t in topics if t["topic"].casefold() == topic.casefold()]
        topic = matches[0]["topic"] if matches else topic
        topics = matches
    items = store.top_negative(since, topic, limit)
    return {"since_s": int(since.total_seconds()), "topic": topic, "topics": topics, "negative": items}


def alerts_report(store: Any, since: timedelta | None = None) -> list[dict[str, Any]]:
    return list(store.alerts(since))


def series_report(store: Any, since: timedelta, bucket_s: int = 60) -> list[dict[str, Any]]:
    """Per-topic counts per time bucket (what dashboards and plots draw)."""
    return [
        {"bucket": tc.bucket, "topic": tc.topic, "total": tc.total, "negative": tc.negative, "neutral": tc.neutral,
         "positive": tc.positive}
        for tc in store.topic_counts(since, bucket_s=bucket_s)
    ]


def compare_report(store: Any, a: str, b: str, since: timedelta | None = None) -> dict[str, Any]:
    """Per-topic negative share of the same items under versions ``a`` and ``b`` (the ``scores`` history).

    Only items scored by both versions count; a row's topic is the one version ``a`` gave them, so
    both shares of a row are over the same items (``topic_changed``: how many ``b`` moved elsewhere).
    """
    rows = store.compare_versions(a, b, since)
    topics = [{**r, "negative_share_a": round(r["negative_a"] / r["items"], 4) if r["items"] else 0.0,
               "negative_share_b": round(r["negative_b"] / r["items"], 4) if r["items"] else 0.0} for r in rows]
    return {"a": a, "b": b, "since_s": int(since.total_seconds()) if since else None,
            "items": sum(r["items"] for r in rows), "topics": topics, "versions": store.score_versions(since)}


def _seconds(params: dict[str, str], name: str) -> timedelta | None:
    return timedelta(seconds=float(params[name])) if params.get(name) else None


#: the worker's read-only API (``GET /v1/<name>?since=SECONDS&...``): each answers a report's JSON
API_ROUTES: dict[str, Callable[[Any, dict[str, str]], Any]] = {
    "/v1/count": lambda st, q: count_report(st, _seconds(q, "since"), q.get("physical") == "1"),
    "/v1/top": lambda st, q: top_report(st, _seconds(q, "since") or timedelta(hours=1), q.get("topic") or None,
                                        int(q.get("limit") or 10)),
    "/v1/alerts": lambda st, q: alerts_report(st, _seconds(q, "since")),
    "/v1/series": lambda st, q: series_report(st, _seconds(q, "since") or timedelta(hours=1),
                                              int(q.get("bucket_s") or 60)),
    "/v1/compare": lambda st, q: compare_report(st, q["a"], q["b"], _seconds(q, "since")),
}


def api_handlers(store_getter: Callable[[], Any]) -> dict[str, Callable[[dict[str, str]], tuple[int, Any]]]:
    """The routes a running worker serves next to ``/metrics``, reading through its own store."""

    def handler(fn: Callable[[Any, dict[str, str]], Any]) -> Callable[[dict[str, str]], tuple[int, Any]]:
        def run(params: dict[str, str]) -> tuple[int, Any]:
            store = store_getter()
            if store is None:
                return 503, {"error": "the worker has not opened its store yet; retry in a few seconds"}
            try:
                return 200, _jsonable(fn(store, params))
            except (ValueError, KeyError) as exc:
                return 400, {"error": f"bad query parameter: {exc}"}
        return run

    return {path: handler(fn) for path, fn in API_ROUTES.items()}


def _from_worker(settings: Settings, path: str, params: dict[str, Any], cause: Exception) -> Any:
    """Ask the worker that holds the embedded store (its API is on FINSENT_METRICS_HOST:PORT)."""
    import urllib.error
    import urllib.parse
    import urllib.request

    host = "127.0.0.1" if settings.metrics_host in ("0.0.0.0", "") else settings.metrics_host
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    url = f"http://{host}:{settings.metrics_port}{path}?{query}"
    token = settings.api_token.get_secret_value() if settings.api_token else None
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code not in (401, 403):
            raise StoreInUse(f"{cause}; and the worker at {url.split('?')[0]} answered HTTP {exc.code}",
                             hint="see the worker's log") from None
        raise StoreInUse(
            f"{cause}; and the worker at {url.split('?')[0]} refused its data API (HTTP {exc.code})",
            hint="set FINSENT_API_TOKEN to the worker's token" + ("" if token else " (none is set here)"),
        ) from None
    except (OSError, ValueError) as exc:
        raise StoreInUse(
            f"{cause}; and no worker answered at {url.split('?')[0]} ({getattr(exc, 'reason', exc)})",
            hint="query while the worker runs through its API (FINSENT_METRICS_PORT must match the worker's), "
                 "or stop the process that holds the store",
        ) from None


def report(settings: Settings, name: str, **params: Any) -> tuple[Any, str]:
    """(a report's JSON-ready data, where it came from): the store, or the running worker that holds it."""
    from finsent.stream.store import store_from_settings

    store = None
    try:
        store = store_from_settings(settings)
        store.ensure_schema()
    except StoreInUse as exc:
        if store is not None:
            store.close()
        wire = {k: (int(v.total_seconds()) if isinstance(v, timedelta) else (1 if v is True else v))
                for k, v in params.items() if v not in (None, False)}
        return _from_worker(settings, f"/v1/{name}", wire, exc), "the worker holding the store"
    except Exception:
        if store is not None:
            store.close()
        raise
    try:
        fn = {"count": count_report, "top": top_report, "alerts": alerts_report, "series": series_report,
              "compare": compare_report}[name]
        return _jsonable(fn(store, **params)), store.url_redacted
    finally:
        store.close()


def _ts(value: Any) -> str:
    """A timestamp for a table: the JSON's ISO string, shown as ``YYYY-mm-dd HH:MM:SS``."""
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return text.replace("T", " ")[:19]


def _count(args: argparse.Namespace, settings: Settings) -> int:
    counts, where = report(settings, "count", since=args.since, physical=args.physical)
    if args.json:
        emit_json(args.json, _jsonable(counts))
        if to_stdout(args.json):
            return 0
    window = f"last {format_duration(args.since)}" if args.since else "all time"
    print(f"{where} ({window}): {counts['rows']} items, {counts['unique_ids']} unique ids"
          + (f", {counts['physical_rows']} physical rows" if "physical_rows" in counts else "")
          + f", {counts['rows'] - counts['unique_ids']} duplicates")
    return 0


def _top(args: argparse.Namespace, settings: Settings) -> int:
    data, where = report(settings, "top", since=args.since, topic=args.topic, limit=args.limit)
    if args.json:
        emit_json(args.json, _jsonable(data))
        if to_stdout(args.json):
            return 0
    from rich.console import Console
    from rich.table import Table

    topics, items = data["topics"], data["negative"]
    console = Console()
    if not topics:
        what = f"no items on topic {args.topic!r} (matched case-insensitively)" if args.topic else "no items"
        console.print(f"{what} in the last {format_duration(args.since)} ({where})")
        return 0
    t = Table(title=f"Items per topic, last {format_duration(args.since)}", title_justify="left")
    for col, just in (("topic", "left"), ("total", "right"), ("neg", "right"), ("neu", "right"),
                      ("pos", "right"), ("neg %", "right")):
        t.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
    for r in topics:
        t.add_row(r["topic"], str(r["total"]), str(r["negative"]), str(r["neutral"]), str(r["positive"]),
                  f"{r['negative_share']:.0%}")
    console.print(t)
    if not items:
        console.print("no negative items in the window")
        return 0
    n = Table(title=f"Newest negative items{' in ' + data['topic'] if data['topic'] else ''}", title_justify="left")
    n.add_column("ingested (UTC)", no_wrap=True)
    n.add_column("topic", overflow="fold", max_width=16)
    n.add_column("p(neg)", justify="right", no_wrap=True)
    n.add_column("text", overflow="fold", ratio=1)
    for it in items:
        text = (it.get("title") or it["text"]).replace("\n", " ")
        n.add_row(_ts(it["ingested_at"]), it["topic"], f"{it['p_negative']:.2f}", f"{text[:160]} [{it['source']}]")
    console.print(n)
    return 0


def _alerts(args: argparse.Namespace, settings: Settings) -> int:
    rows, where = report(settings, "alerts", since=args.since)
    if args.json:
        emit_json(args.json, _jsonable(rows))
        if to_stdout(args.json):
            return 0
    from rich.console import Console
    from rich.table import Table

    if not rows:
        window = f"in the last {format_duration(args.since)}" if args.since else "stored"
        Console().print(f"no alerts {window} ({where})")
        return 0
    t = Table(title=f"Alerts, last {format_duration(args.since)}" if args.since else "Alerts", title_justify="left")
    for col in ("fired (UTC)", "topic", "severity", "neg/total", "share", "base", "score", "detector"):
        t.add_column(col, overflow="fold")
    for a in rows:
        t.add_row(_ts(a["fired_at"]), a["topic"], a["severity"],
                  f"{a['negative']}/{a['total']}", f"{a['negative_share']:.0%}", f"{a['baseline_share']:.0%}",
                  f"{a['score']:.2f}", a["detector"])
    Console().print(t)
    return 0


def _compare(args: argparse.Namespace, settings: Settings) -> int:
    a, b = args.versions
    if a == b:
        raise InputError(f"--versions {a} {a}: compare needs two different versions",
                         hint="`finsent models list` shows the versions")
    data, where = report(settings, "compare", a=a, b=b, since=args.since)
    if args.json:
        emit_json(args.json, _jsonable(data))
        if to_stdout(args.json):
            return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not data["items"]:
        known = ", ".join(f"{v} ({n})" for v, n in data["versions"].items()) or "none"
        console.print(f"no items scored by both {a} and {b} ({where}); versions in the score history: {known}. "
                      "`finsent rescore --version V` scores stored items with another version")
        return 0
    t = Table(title=f"Negative share of the same {data['items']} items: {a} vs {b}", title_justify="left")
    for col, just in (("topic (as A)", "left"), ("items", "right"), ("neg % A", "right"), ("neg % B", "right"),
                      ("change", "right"), ("topic moved", "right")):
        t.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
    for r in data["topics"]:
        delta = r["negative_share_b"] - r["negative_share_a"]
        t.add_row(r["topic"], str(r["items"]), f"{r['negative_share_a']:.1%}", f"{r['negative_share_b']:.1%}",
                  f"{delta:+.1%}", str(r["topic_changed"]))
    console.print(t)
    console.print(f"{data['items']} items compared (scored by both versions)")
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
    for stmt in schema.create_statements(db, caps, settings.retention_days, settings.clickhouse_cluster):
        print(stmt + ";\n")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "query",
        help="read the store: item counts, newest negative items, alerts",
        description=f"Read what finsent stored (FINSENT_STORE / --store). DURATION is {DURATION_HELP}.",
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
    add_json_option(c, '{"rows": N, "unique_ids": N}')
    c.set_defaults(func=_count)

    t = sub.add_parser(
        "top",
        help="per-topic counts and the newest negative items",
        description="Per-topic distinct item counts by sentiment and the newest items whose sentiment is negative.",
    )
    t.add_argument("--since", type=parse_duration, default=timedelta(hours=1), metavar="DURATION",
                   help="window of ingestion time (default: 1h)")
    t.add_argument("--topic", default=None, help="only this topic (matched case-insensitively)")
    t.add_argument("--limit", type=positive_int, default=10, help="newest negative items to show, >= 1 (default: 10)")
    add_json_option(t, "{since_s, topic, topics: [...], negative: [...]}")
    t.set_defaults(func=_top)

    a = sub.add_parser("alerts", help="alerts stored by the detectors", description="Stored alerts, newest first.")
    a.add_argument("--since", type=parse_duration, default=None, metavar="DURATION",
                   help="only alerts fired in the last DURATION (default: all)")
    add_json_option(a, "the alerts (a list)")
    a.set_defaults(func=_alerts)

    cmp = sub.add_parser(
        "compare",
        help="per-topic negative share of the same items under two model versions",
        description=(
            "Join the score history (the scores table) of two model versions on the same item ids and show, per "
            "topic (as version A assigned it), the negative share under A and under B and the number of items "
            "compared. Items get a second version's score from `finsent rescore` or from a worker that "
            "hot-reloaded while they were redelivered.\n\n"
            "examples:\n"
            "  finsent query compare --versions v0001-1a2b3c4d v0002-5e6f7a8b\n"
            "  finsent query compare --versions v0001-1a2b3c4d v0002-5e6f7a8b --since 7d --json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmp.add_argument("--versions", nargs=2, required=True, metavar=("A", "B"), help="the two model versions")
    cmp.add_argument("--since", type=parse_duration, default=None, metavar="DURATION",
                     help="only items ingested in the last DURATION (default: all)")
    add_json_option(cmp, "{a, b, since_s, items, topics: [...], versions: {version: items}}")
    cmp.set_defaults(func=_compare)

    s = sub.add_parser(
        "schema",
        help="create the schema if missing and print its DDL for this server",
        description="Create the tables if missing (idempotent) and print the DDL finsent uses on this server "
        "version (what a DBA or a Grafana author needs to know). Column meanings: pydoc stream.store.schema.",
    )
    s.set_defaults(func=_schema)
