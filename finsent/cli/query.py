"""``finsent query ...``: read what the pipeline stored (counts, newest negative items, alerts).

Tables for people (rich), ``--json`` for scripts and the demo. Every command works against the
store in ``settings.storage.store`` (``--store URL`` / ``FINSENT_STORE``) and creates the schema if the
store is empty, so a fresh store answers with zeros instead of "table does not exist". While a
worker holds the embedded store, the same reports come from its read-only data API
(:mod:`finsent.stream.store.reports` computes them in both places).

Entities (issue 26): ``query entity NAME|TICKER|ID``, ``query top --by entity``, ``query items`` (listing and
CSV export) and ``query alerts --kind entity|topic`` read the ``mentions`` and ``items`` tables on event time.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from datetime import datetime, timedelta
from typing import Any

from finsent.cli.tree import Leaf, Subcommands
from finsent.core.argtypes import DURATION_HELP, parse_duration, positive_int
from finsent.core.errors import InputError, StoreInUse
from finsent.core.events import SENTIMENTS, format_time, utcnow
from finsent.core.jsonout import add_json_option, emit_json, to_stdout
from finsent.core.settings import Settings
from finsent.stream.store.reports import (
    DEFAULT_ENTITY_WINDOW,
    _iso_time,
    _jsonable,
    _looks_like_date,
    alerts_report,
    compare_report,
    count_report,
    entity_report,
    items_report,
    series_report,
    top_entities_report,
    top_report,
)

_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def format_duration(td: timedelta) -> str:
    """A duration for display: ``7d``, ``2h``, ``90s`` (weeks shown as days)."""
    s = int(td.total_seconds())
    for unit in ("d", "h", "m"):
        if s and s % _UNIT_S[unit] == 0:
            return f"{s // _UNIT_S[unit]}{unit}"
    return f"{s}s"


def _open(settings: Settings):  # type: ignore[no-untyped-def]
    from finsent.stream.store import store_from_settings

    store = store_from_settings(settings)
    try:
        store.ensure_schema()
    except Exception:
        store.close()
        raise
    return store


def _from_worker(settings: Settings, path: str, params: dict[str, Any], cause: Exception) -> Any:
    """Ask the worker that holds the embedded store (its API is on FINSENT_METRICS_HOST:PORT)."""
    import urllib.error
    import urllib.parse
    import urllib.request

    host = "127.0.0.1" if settings.worker.metrics_host in ("0.0.0.0", "") else settings.worker.metrics_host
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    url = f"http://{host}:{settings.worker.metrics_port}{path}?{query}"
    token = settings.worker.api_token.get_secret_value() if settings.worker.api_token else None
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code not in (401, 403):
            raise StoreInUse(
                f"{cause}; and the worker at {url.split('?')[0]} answered HTTP {exc.code}", hint="see the worker's log"
            ) from None
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
        wire = {
            k: (
                int(v.total_seconds())
                if isinstance(v, timedelta)
                else format_time(v)
                if isinstance(v, datetime)
                else (1 if v is True else v)
            )
            for k, v in params.items()
            if v not in (None, False)
        }
        path = f"/v1/{name}"
        if name == "entity":  # /v1/entity/{id}
            import urllib.parse

            path = f"/v1/entity/{urllib.parse.quote(str(wire.pop('entity')), safe='')}"
        return _from_worker(settings, path, wire, exc), "the worker holding the store"
    except Exception:
        if store is not None:
            store.close()
        raise
    try:
        fn = {
            "count": count_report,
            "top": top_report,
            "alerts": alerts_report,
            "series": series_report,
            "compare": compare_report,
            "entities": top_entities_report,
            "entity": entity_report,
            "items": items_report,
        }[name]
        return _jsonable(fn(store, **params)), store.url_redacted
    finally:
        store.close()


def _ts(value: Any) -> str:
    """A timestamp for a table: the JSON's ISO string, shown as ``YYYY-mm-dd HH:MM:SS``."""
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return text.replace("T", " ")[:19]


def _warn(data: dict[str, Any]) -> None:
    """Print a report's ``warnings`` on stderr and drop them from its data: ``--json`` stays the report alone,
    and an empty entity answer over a store without mentions is not mistaken for quiet news (issue 26)."""
    for line in data.pop("warnings", None) or []:
        print(f"warning: {line}", file=sys.stderr)


def run_count(args: argparse.Namespace, settings: Settings) -> int:
    counts, where = report(settings, "count", since=args.since, physical=args.physical)
    if args.json:
        emit_json(args.json, _jsonable(counts))
        if to_stdout(args.json):
            return 0
    window = f"last {format_duration(args.since)}" if args.since else "all time"
    print(
        f"{where} ({window}): {counts['rows']} items, {counts['unique_ids']} unique ids"
        + (f", {counts['physical_rows']} physical rows" if "physical_rows" in counts else "")
        + f", {counts['rows'] - counts['unique_ids']} duplicates"
    )
    return 0


def run_top(args: argparse.Namespace, settings: Settings) -> int:
    if args.by == "entity":
        return _top_entities(args, settings)
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
    for col, just in (
        ("topic", "left"),
        ("total", "right"),
        ("neg", "right"),
        ("neu", "right"),
        ("pos", "right"),
        ("neg %", "right"),
    ):
        t.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
    for r in topics:
        t.add_row(
            r["topic"],
            str(r["total"]),
            str(r["negative"]),
            str(r["neutral"]),
            str(r["positive"]),
            f"{r['negative_share']:.0%}",
        )
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


def time_or_duration(text: str) -> timedelta | datetime:
    """argparse type of ``--since``/``--until`` on entity commands: a duration back from now (``30d``) or an ISO
    8601 time (``2023-01-19``, ``2023-01-19T22:00:00Z``), so a backtest or a listing can name past days."""
    if _looks_like_date(text):
        try:
            return _iso_time(text, "time")
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse_duration(text)


def _until_arg(value: timedelta | datetime | None) -> datetime | None:
    return utcnow() - value if isinstance(value, timedelta) else value


def _window_text(since: Any, until: Any) -> str:
    start = f"last {format_duration(since)}" if isinstance(since, timedelta) else f"since {_ts(since)}"
    return start + (f" until {_ts(until)}" if until is not None else "")


def _top_entities(args: argparse.Namespace, settings: Settings) -> int:
    data, where = report(settings, "entities", since=args.since, until=None, limit=args.limit, sentiment=args.sentiment)
    _warn(data)
    if args.json:
        emit_json(args.json, _jsonable(data))
        if to_stdout(args.json):
            return 0
    from rich.console import Console
    from rich.table import Table

    rows = data["entities"]
    if not rows:
        Console().print(f"no entity mentions in the last {format_duration(args.since)} ({where})")
        return 0
    t = Table(title=f"Most mentioned entities, last {format_duration(args.since)}", title_justify="left")
    for col, just in (
        ("entity", "left"),
        ("key", "left"),
        ("buzz", "right"),
        ("neg", "right"),
        ("neu", "right"),
        ("pos", "right"),
        ("net", "right"),
        ("sources", "right"),
    ):
        t.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
    for r in rows:
        t.add_row(
            r["name"],
            r["entity_key"],
            str(r["buzz"]),
            str(r["negative"]),
            str(r["neutral"]),
            str(r["positive"]),
            f"{r['net_sentiment']:+.2f}",
            str(r["sources"]),
        )
    Console().print(t)
    return 0


def run_entity(args: argparse.Namespace, settings: Settings) -> int:
    data, where = report(
        settings,
        "entity",
        entity=args.entity,
        since=args.since,
        until=_until_arg(args.until),
        bucket_s=int(args.bucket.total_seconds()),
        limit=args.limit,
    )
    _warn(data)
    if args.json:
        emit_json(args.json, _jsonable(data))
        if to_stdout(args.json):
            return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    who = f"{data['name']} ({data['entity_key']})"
    window = _window_text(args.since, _until_arg(args.until))
    if not data["series"]:
        console.print(
            f"no mentions of {who} in the {window} ({where}); `finsent query top --by entity --since 30d` "
            "lists the entities that have some"
        )
        return 0
    tot = data["totals"]
    console.print(
        f"{who}, {window}: {tot['buzz']} mentions, {tot['negative']} negative, {tot['neutral']} neutral, "
        f"{tot['positive']} positive"
    )
    t = Table(title=f"Per {format_duration(args.bucket)} of event time", title_justify="left")
    for col in ("bucket (UTC)", "buzz", "neg", "neu", "pos", "net", "sources"):
        t.add_column(col, justify="left" if col.startswith("bucket") else "right")
    for b in data["series"]:
        t.add_row(
            _ts(b["bucket"]),
            str(b["buzz"]),
            str(b["negative"]),
            str(b["neutral"]),
            str(b["positive"]),
            f"{b['net_sentiment']:+.2f}",
            str(b["sources"]),
        )
    console.print(t)
    n = Table(title="Top stories (most relevant, newest first)", title_justify="left")
    for col in ("event time (UTC)", "sentiment", "rel", "source", "title"):
        n.add_column(col, overflow="fold")
    for st in data["stories"]:
        n.add_row(
            _ts(st["event_time"]),
            st["sentiment"],
            str(st["relevance"]),
            st["source"],
            f"{(st['title'] or '')[:140]}" + (f" {st['url']}" if st.get("url") else ""),
        )
    console.print(n)
    return 0


#: CSV columns of ``query items --csv`` (tickers joined with spaces)
ITEM_CSV_COLUMNS = (
    "id",
    "event_time",
    "published_at",
    "ingested_at",
    "source",
    "source_type",
    "sentiment",
    "p_negative",
    "p_neutral",
    "p_positive",
    "topic",
    "topic_prob",
    "model_version",
    "title",
    "text",
    "url",
    "tickers",
)


def _csv_cell(value: Any) -> Any:
    """A cell a spreadsheet shows as text: a leading = + - @ gets a quote (CSV formula injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def run_items(args: argparse.Namespace, settings: Settings) -> int:
    data, where = report(
        settings,
        "items",
        since=args.since,
        until=_until_arg(args.until),
        entity=args.entity,
        topic=args.topic,
        sentiment=args.sentiment,
        limit=args.limit,
    )
    if args.csv:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(ITEM_CSV_COLUMNS)
        for it in data["items"]:
            it = {**it, "tickers": " ".join(it["tickers"])}
            w.writerow([_csv_cell(it.get(c)) if it.get(c) is not None else "" for c in ITEM_CSV_COLUMNS])
        return 0
    if args.json:
        emit_json(args.json, _jsonable(data))
        if to_stdout(args.json):
            return 0
    from rich.console import Console
    from rich.table import Table

    items = data["items"]
    filters = ", ".join(
        f"{k} {v}"
        for k, v in (
            ("entity", (data["entity"] or {}).get("entity_key")),
            ("topic", args.topic),
            ("sentiment", args.sentiment),
        )
        if v
    )
    if not items:
        Console().print(
            f"no items{' with ' + filters if filters else ''} in the {_window_text(args.since, args.until)} ({where})"
        )
        return 0
    t = Table(title=f"Items, newest event time first{' (' + filters + ')' if filters else ''}", title_justify="left")
    for col in ("event time (UTC)", "sentiment", "topic", "source", "text"):
        t.add_column(col, overflow="fold")
    for it in items:
        text = (it.get("title") or it["text"]).replace("\n", " ")
        t.add_row(_ts(it["event_time"]), it["sentiment"], it["topic"], it["source"], text[:160])
    Console().print(t)
    return 0


#: what a terminal line of untrusted text may not carry: control, line/paragraph separators, bidi overrides
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]+")
#: headlines shown under each alert (``--json`` has them all, with links)
ALERT_HEADLINES = 3


def fit(text: str, width: int) -> str:
    """``text`` as one terminal line of at most ``width`` cells: unprintable characters become spaces, runs of
    space one, and a line too long is cut with ``…`` (wide characters count two cells)."""
    from rich.cells import cell_len

    line = " ".join(_UNPRINTABLE.sub(" ", text).split())
    if cell_len(line) <= width:
        return line
    out, used = [], 0
    for ch in line:
        w = cell_len(ch)
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out).rstrip() + "…"


def alert_lines(a: dict[str, Any], width: int) -> list[str]:
    """One stored alert for a terminal of ``width`` columns (issue 25: the table wrapped badly at 80): when and
    what, the numbers with the detector and model version, then its top headlines; every line fits ``width``."""
    if a.get("kind", "topic") == "topic":
        what = str(a.get("topic") or "")
    else:
        what = f"{a.get('entity_name') or '?'} ({a.get('entity_id') or '-'})"
    head = f"{_ts(a.get('at') or a['fired_at'])}  {fit(str(a['severity']), 8):<8}  "
    lines = [head + fit(what, width - len(head))]
    numbers = (
        f"{a['negative']}/{a['total']} negative ({a['negative_share']:.0%}, baseline {a['baseline_share']:.0%}), "
        f"score {a['score']:.2f}, {a['detector']}"
    )
    lines.append("  " + fit(numbers, width - 2))
    if a.get("model_version"):
        lines.append("  " + fit(f"model {a['model_version']}", width - 2))
    evidence = a.get("evidence") if isinstance(a.get("evidence"), dict) else {}
    heads = [h for h in (evidence.get("headlines") or []) if isinstance(h, dict)][:ALERT_HEADLINES]
    for h in heads:
        source = f" ({h['source']})" if h.get("source") else ""
        lines.append("  - " + fit(f"{h.get('title') or ''}{source}", width - 4))
    return lines


def run_alerts(args: argparse.Namespace, settings: Settings) -> int:
    rows, where = report(settings, "alerts", since=args.since, kind=args.kind)
    if args.json:
        emit_json(args.json, _jsonable(rows))
        if to_stdout(args.json):
            return 0
    import shutil

    if not rows:
        window = f"in the last {format_duration(args.since)}" if args.since else "stored"
        print(f"no alerts {window} ({where})")
        return 0
    width = max(40, shutil.get_terminal_size((80, 24)).columns)
    title = f"Alerts, last {format_duration(args.since)}" if args.since else "Alerts"
    print(fit(f"{title}: {len(rows)}, newest first (UTC; --json for every headline and its link)", width))
    for a in rows:
        print()
        for line in alert_lines(a, width):
            print(line)
    return 0


def run_compare(args: argparse.Namespace, settings: Settings) -> int:
    a, b = args.versions
    if a == b:
        raise InputError(
            f"--versions {a} {a}: compare needs two different versions", hint="`finsent models list` shows the versions"
        )
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
        console.print(
            f"no items scored by both {a} and {b} ({where}); versions in the score history: {known}. "
            "`finsent rescore --version V` scores stored items with another version"
        )
        return 0
    t = Table(title=f"Negative share of the same {data['items']} items: {a} vs {b}", title_justify="left")
    for col, just in (
        ("topic (as A)", "left"),
        ("items", "right"),
        ("neg % A", "right"),
        ("neg % B", "right"),
        ("change", "right"),
        ("topic moved", "right"),
    ):
        t.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
    for r in data["topics"]:
        delta = r["negative_share_b"] - r["negative_share_a"]
        t.add_row(
            r["topic"],
            str(r["items"]),
            f"{r['negative_share_a']:.1%}",
            f"{r['negative_share_b']:.1%}",
            f"{delta:+.1%}",
            str(r["topic_changed"]),
        )
    console.print(t)
    console.print(f"{data['items']} items compared (scored by both versions)")
    return 0


def run_schema(args: argparse.Namespace, settings: Settings) -> int:
    from finsent.stream.store import schema

    store = _open(settings)
    try:
        caps = store.capabilities  # type: ignore[attr-defined]
        db = store.database  # type: ignore[attr-defined]
    finally:
        store.close()
    print(
        f"-- finsent schema for ClickHouse {caps.version_text} ({store.url_redacted}); "
        f"TTL {'supported' if caps.ttl else 'not supported'}, retention_days={settings.storage.retention_days}"
    )
    for stmt in schema.create_statements(
        db, caps, settings.storage.retention_days, settings.storage.clickhouse_cluster
    ):
        print(stmt + ";\n")
    return 0


QUERY_DESCRIPTION = (
    f"Read what finsent stored (FINSENT_STORE / --store). DURATION is {DURATION_HELP}. Series, "
    "top lists and listings are on event time (published_at, else ingested_at)."
)
COUNT_DESCRIPTION = (
    "Count stored items ingested in the window. rows: items a query sees (items FINAL, one row per id);\n"
    "unique_ids: distinct ids among all physical rows. rows - unique_ids is the number of duplicates a\n"
    "query could see, 0 when storage is idempotent. --physical adds physical_rows: rows on disk\n"
    "including redelivered copies that FINAL hides until background merges remove them.\n\n"
    "examples:\n"
    "  finsent query count\n"
    "  finsent query count --since 1h --json\n"
    "  finsent query count --physical --store clickhouse://u:p@ch:9000/finsent"
)
TOP_DESCRIPTION = (
    "Per-topic distinct item counts by sentiment and the newest items whose sentiment is negative.\n\n"
    "examples:\n"
    "  finsent query top --since 1h\n"
    "  finsent query top --since 1d --topic Earnings --limit 20\n"
    "  finsent query top --by entity --sentiment negative --since 7d --json"
)
ENTITY_DESCRIPTION = (
    "What the stored news says about one entity, on event time (published_at, else ingested_at): mentions "
    "per bucket by sentiment, relevance-weighted net sentiment (-1..1), distinct sources, and its most "
    "relevant stories with links. ENTITY is a stored id (AAPL, X:BTC), a ticker or cashtag ($AAPL, "
    "NASDAQ:AAPL), a name the linker knows (Apple) or any other name (FTX: an unlinked entity, keyed "
    "name:ftx). The alert index (-log10 p of the negative surge) is `finsent alerts backtest`'s.\n\n"
    "examples:\n"
    "  finsent query entity AAPL --since 30d\n"
    "  finsent query entity 'FTX' --since 2022-11-01 --until 2022-11-30 --bucket 1d --json"
)
ITEMS_DESCRIPTION = (
    "Stored items, newest event time first (event time: published_at, else ingested_at), each with its "
    "current score. --entity keeps the items that mention an entity (resolved like `query entity`); "
    "--sentiment filters on the item's sentiment. --csv writes every column as CSV on stdout (a cell "
    "starting with = + - @ is prefixed with ' so a spreadsheet does not run it).\n\n"
    "examples:\n"
    "  finsent query items --entity AAPL --sentiment negative --since 7d\n"
    "  finsent query items --topic earnings --since 2023-01-01 --until 2023-01-31 --limit 5000 --csv > jan.csv"
)
ALERTS_DESCRIPTION = (
    "Stored alerts, newest first. --json gives each alert's kind (entity or topic), entity_id and\n"
    "entity_name (entity alerts), topic (topic alerts), at (the event time of the detection, ISO\n"
    "8601 UTC), sentiment (negative) and evidence (counts, index, top headlines with links), with\n"
    "the detector's numbers.\n\n"
    "examples:\n"
    "  finsent query alerts --since 1d\n"
    "  finsent query alerts --kind entity --since 7d --json"
)
COMPARE_DESCRIPTION = (
    "Join the score history (the scores table) of two model versions on the same item ids and show, per "
    "topic (as version A assigned it), the negative share under A and under B and the number of items "
    "compared. Items get a second version's score from `finsent rescore` or from a worker that "
    "hot-reloaded while they were redelivered.\n\n"
    "examples:\n"
    "  finsent query compare --versions v0001-1a2b3c4d v0002-5e6f7a8b\n"
    "  finsent query compare --versions v0001-1a2b3c4d v0002-5e6f7a8b --since 7d --json"
)
SCHEMA_DESCRIPTION = (
    "Create the tables if missing (idempotent) and print the DDL finsent uses on this server\n"
    "version (what a DBA or a Grafana author needs to know).\n"
    "Column meanings: pydoc finsent.stream.store.schema.\n\n"
    "examples:\n"
    "  finsent query schema\n"
    "  finsent query schema --store clickhouse://u:p@ch:9000/finsent > finsent-ddl.sql"
)


def register(sub: Subcommands) -> None:
    query = sub.group(
        "query",
        dest="query_command",
        metavar="QUERY",
        help="read the store: counts, entities, items, newest negative items, alerts",
        description=QUERY_DESCRIPTION,
    )
    query.leaves(
        Leaf("count", run_count, "stored items: rows and unique ids", COUNT_DESCRIPTION, _add_count),
        Leaf("top", run_top, "per-topic counts and the newest negative items", TOP_DESCRIPTION, _add_top),
        Leaf(
            "entity",
            run_entity,
            "one entity: series per bucket of event time, totals, top stories",
            ENTITY_DESCRIPTION,
            _add_entity,
        ),
        Leaf(
            "items",
            run_items,
            "list or export stored items (filter by entity, topic, sentiment, time)",
            ITEMS_DESCRIPTION,
            _add_items,
        ),
        Leaf(
            "alerts",
            run_alerts,
            "alerts stored by the detectors (topic and entity alerts)",
            ALERTS_DESCRIPTION,
            _add_alerts,
        ),
        Leaf(
            "compare",
            run_compare,
            "per-topic negative share of the same items under two model versions",
            COMPARE_DESCRIPTION,
            _add_compare,
        ),
        Leaf(
            "schema", run_schema, "create the schema if missing and print its DDL for this server", SCHEMA_DESCRIPTION
        ),
    )


def _add_window(p: argparse.ArgumentParser) -> None:
    """``--since``/``--until WHEN`` of the event-time commands (entity, items): a duration or an ISO 8601 time."""
    p.add_argument(
        "--since",
        type=time_or_duration,
        default=DEFAULT_ENTITY_WINDOW,
        metavar="WHEN",
        help=f"window start: {DURATION_HELP}, or an ISO 8601 time (default: 7d)",
    )
    p.add_argument(
        "--until",
        type=time_or_duration,
        default=None,
        metavar="WHEN",
        help="window end: a duration back from now or an ISO 8601 time (default: now)",
    )


def _add_count(c: argparse.ArgumentParser) -> None:
    c.add_argument(
        "--since",
        type=parse_duration,
        default=None,
        metavar="DURATION",
        help="only items ingested in the last DURATION (default: all)",
    )
    c.add_argument("--physical", action="store_true", help="also report physical_rows (before deduplication)")
    add_json_option(c, '{"rows": N, "unique_ids": N}')


def _add_top(t: argparse.ArgumentParser) -> None:
    t.add_argument(
        "--since",
        type=parse_duration,
        default=timedelta(hours=1),
        metavar="DURATION",
        help="window of ingestion time (default: 1h)",
    )
    t.add_argument("--topic", default=None, help="only this topic (matched case-insensitively)")
    t.add_argument(
        "--limit",
        type=positive_int,
        default=10,
        help="newest negative items (or entities with --by entity) to show, >= 1 (default: 10)",
    )
    t.add_argument(
        "--by",
        choices=("topic", "entity"),
        default="topic",
        help="topic: per-topic counts and newest negative items (default); entity: the most mentioned "
        "entities with their sentiment counts and relevance-weighted net sentiment",
    )
    t.add_argument(
        "--sentiment",
        choices=SENTIMENTS,
        default=None,
        help="with --by entity: rank by mentions of this sentiment only (negative: most talked down)",
    )
    add_json_option(t, "{since_s, topic, topics: [...], negative: [...]} (--by entity: {by, entities: [...]})")


def _add_entity(e: argparse.ArgumentParser) -> None:
    e.add_argument("entity", metavar="NAME|TICKER|ID", help="the entity (resolved with the linker)")
    _add_window(e)
    e.add_argument(
        "--bucket",
        type=parse_duration,
        default=timedelta(hours=1),
        metavar="DURATION",
        help="series bucket (default: 1h)",
    )
    e.add_argument("--limit", type=positive_int, default=10, help="top stories to show, >= 1 (default: 10)")
    add_json_option(e, "{query, entity_key, entity_id, name, bucket_s, totals, series: [...], stories: [...]}")


def _add_items(i: argparse.ArgumentParser) -> None:
    i.add_argument("--entity", default=None, metavar="NAME|TICKER|ID", help="only items mentioning this entity")
    i.add_argument("--topic", default=None, help="only this topic (exact)")
    i.add_argument("--sentiment", choices=SENTIMENTS, default=None, help="only items of this sentiment")
    _add_window(i)
    i.add_argument("--limit", type=positive_int, default=100, help="items to list, >= 1 (default: 100)")
    out = i.add_mutually_exclusive_group()
    add_json_option(out, "{entity, topic, sentiment, items: [...]}")
    out.add_argument("--csv", action="store_true", help="the items as CSV on stdout (for a spreadsheet)")


def _add_alerts(a: argparse.ArgumentParser) -> None:
    a.add_argument(
        "--since",
        type=parse_duration,
        default=None,
        metavar="DURATION",
        help="only alerts fired in the last DURATION (default: all)",
    )
    a.add_argument("--kind", choices=("entity", "topic"), default=None, help="only entity or only topic alerts")
    add_json_option(a, "the alerts (a list)")


def _add_compare(cmp: argparse.ArgumentParser) -> None:
    cmp.add_argument("--versions", nargs=2, required=True, metavar=("A", "B"), help="the two model versions")
    cmp.add_argument(
        "--since",
        type=parse_duration,
        default=None,
        metavar="DURATION",
        help="only items ingested in the last DURATION (default: all)",
    )
    add_json_option(cmp, "{a, b, since_s, items, topics: [...], versions: {version: items}}")
