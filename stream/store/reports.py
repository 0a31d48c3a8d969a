"""The reports of ``finsent query`` and of the worker's read-only data API, as JSON-ready data.

Each report takes an open store and returns plain data: ``count``, ``top`` (per-topic totals and the
newest negative items), ``alerts``, ``series``, ``compare`` (two model versions on the same items), and
on event time the entity reports (issue 26): ``entity`` (one entity's series and top stories),
``entities`` (the most mentioned) and ``items`` (a filtered listing). ``finsent query``
(:mod:`finsent.cli.query`) renders them as tables or ``--json``; a running worker serves them.

The worker's data API serves the same reports (:data:`API_ROUTES`; every parameter of every route is in
:data:`API_PARAMS`, served at ``GET /v1``): ``/v1/count``, ``/v1/top``, ``/v1/alerts`` (``kind``),
``/v1/series``, ``/v1/compare``, ``/v1/entities`` (``since``, ``until``, ``limit``, ``sentiment``),
``/v1/entity/{id}`` (``since``, ``until``, ``bucket_s``, ``limit``), ``/v1/items`` (``since``, ``until``,
``entity``, ``topic``, ``sentiment``, ``limit``). Durations are written the CLI's way (``30d``; bare seconds are
still read); ``since``/``until`` of the entity routes also take ISO 8601 times. An unknown parameter, a bad
duration or a limit below 1 is a 400 that names the route's parameters. ``entity`` and ``entities`` (and so
``/v1/entity/{id}`` and ``/v1/entities``) add ``warnings``, a list of lines, only when their answer is empty because
the window has stored items but no mentions (:func:`mention_gap`); ``finsent query`` prints them on stderr and
leaves them out of ``--json``.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from finsent.core.argtypes import DURATION_HELP, MAX_DURATION_S, parse_duration
from finsent.core.events import SENTIMENTS, utcnow


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# -- reports: the same JSON from the store or from a running worker's read-only API ---------------


def topic_totals(store: Any, since: timedelta) -> list[dict[str, Any]]:
    """Distinct items per topic over the whole window (sums of the store's bucketed counts)."""
    totals: dict[str, dict[str, int]] = defaultdict(lambda: {"total": 0, "negative": 0, "neutral": 0, "positive": 0})
    bucket = max(60, int(since.total_seconds()))
    for tc in store.topic_counts(since, bucket_s=bucket):
        t = totals[tc.topic]
        for k in ("total", "negative", "neutral", "positive"):
            t[k] += getattr(tc, k)
    rows = [
        {"topic": topic, **t, "negative_share": round(t["negative"] / t["total"], 4) if t["total"] else 0.0}
        for topic, t in totals.items()
    ]
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


def alerts_report(store: Any, since: timedelta | None = None, kind: str | None = None) -> list[dict[str, Any]]:
    """Every stored alert (``kind``: only entity or only topic alerts), newest first: ``kind``, ``entity_id`` and
    ``entity_name`` (entity alerts), ``topic`` (topic alerts), ``at`` (event time of the detection),
    ``sentiment`` (``negative``), ``evidence``, and the detector's counts."""
    return list(store.alerts(since, kind=kind)) if kind else list(store.alerts(since))


# -- entities (issue 26): the stored mentions, resolved through the linker -------------------------------------

#: the window an entity, the top list and the items listing read when no --since is given
DEFAULT_ENTITY_WINDOW = timedelta(days=7)


def resolve_entity(store: Any, text: str) -> dict[str, Any]:
    """The stored entity key a user's NAME, TICKER or ID means: a stored key as written (``AAPL``, ``X:BTC``,
    ``name:ftx``), else what the linker makes of it (``Apple``, ``$AAPL``, ``NASDAQ:AAPL`` -> ``AAPL``), else the
    unlinked name's key (``Zorblax Capital Ltd.`` -> ``name:zorblax capital``); a linked id with no mentions
    falls back to the name's key when that one has some."""
    from finsent.models.linking import default_linker
    from finsent.stream.store.schema.rows import NAME_PREFIX, entity_key

    query = text.strip()
    if not query:
        raise ValueError("entity: give a name, ticker or id")
    if query.startswith(NAME_PREFIX) or store.entity_exists(query):
        key = query
        eid, name = (None, query[len(NAME_PREFIX) :]) if query.startswith(NAME_PREFIX) else (query, query)
    else:
        eid, name = default_linker().link_span(query, 0, len(query))
        key = entity_key(eid, name)
        unlinked = entity_key(None, query)
        # mentions stored before the linker knew the name (an older table, a user file added later) keep the
        # name's key: use it when the linked id has no mentions and the name has
        if eid and not store.entity_exists(key) and store.entity_exists(unlinked):
            key, eid, name = unlinked, None, unlinked[len(NAME_PREFIX) :]
    return {"query": text, "entity_key": key, "entity_id": eid, "name": name}


def _window_args(since: timedelta | datetime | None, until: datetime | None) -> dict[str, Any]:
    return {"since": since if since is not None else DEFAULT_ENTITY_WINDOW, "until": until}


#: items of a window :func:`rescore_hint` reads to find how far back ``finsent rescore --since`` must reach
HINT_ITEMS = 10_000


def rescore_hint(store: Any, since: timedelta | datetime, until: datetime | None) -> str:
    """The command that writes the mentions of the window's items: ``finsent rescore --since Nd``.

    Why a computed N: rescore's window is *ingestion* time while entity answers are on event time (a replay of
    2022 ingested yesterday), so the hint reads the window's items (at most :data:`HINT_ITEMS`, newest event
    time first) and counts whole days back to the oldest one's ``ingested_at``."""
    import math

    items = store.list_items(since, until, limit=HINT_ITEMS)
    oldest = min((it["ingested_at"] for it in items if it.get("ingested_at")), default=None)
    days = max(1, math.ceil((utcnow() - oldest).total_seconds() / 86400)) if oldest else 30
    return (
        f"`finsent rescore --since {days}d` scores again the items ingested in the last {days} days (this window's "
        "included) and writes their mentions"
    )


def mention_gap(store: Any, since: timedelta | datetime, until: datetime | None) -> str | None:
    """Why an entity answer over the window is empty when the store is not: the window holds stored items but not
    one mention (items stored before the entity layer, or by a worker that wrote none). ``None`` when the window
    has mentions, or nothing at all. Issue 26: such a store answered with silence, indistinguishable from quiet
    news; the message says what happened and the command that fixes it."""
    if store.top_entities(since, until, limit=1) or not store.list_items(since, until, limit=1):
        return None
    return (
        "this window has stored items but no entity mentions (items stored before the entity layer, or by a "
        f"worker that wrote none), so its entity answers are empty; {rescore_hint(store, since, until)}"
    )


def entity_report(
    store: Any,
    entity: str,
    since: timedelta | datetime | None = None,
    until: datetime | None = None,
    bucket_s: int = 3600,
    limit: int = 10,
) -> dict[str, Any]:
    """One entity: how it was resolved, its series per bucket of event time, totals and its top stories."""
    who = resolve_entity(store, entity)
    win = _window_args(since, until)
    series = store.entity_series(who["entity_key"], win["since"], win["until"], bucket_s=bucket_s)
    totals = {
        k: sum(b[k] for b in series) for k in ("buzz", "negative", "neutral", "positive", "novel", "novel_negative")
    }
    stories = store.entity_stories(who["entity_key"], win["since"], win["until"], limit=limit)
    if stories and who["entity_id"] is None and stories[0].get("entity_id"):
        who["entity_id"] = stories[0]["entity_id"]
    if stories:
        who["name"] = stories[0]["name"]
    out = {**who, "bucket_s": bucket_s, "totals": totals, "series": series, "stories": stories}
    gap = None if series else mention_gap(store, win["since"], win["until"])
    return {**out, "warnings": [gap]} if gap else out


def top_entities_report(
    store: Any,
    since: timedelta | datetime | None = None,
    until: datetime | None = None,
    limit: int = 20,
    sentiment: str | None = None,
) -> dict[str, Any]:
    """The most mentioned entities in the window with their counts and net sentiment."""
    win = _window_args(since, until)
    entities = store.top_entities(win["since"], win["until"], limit=limit, sentiment=sentiment)
    out = {"by": "entity", "sentiment": sentiment, "entities": entities}
    gap = None if entities else mention_gap(store, win["since"], win["until"])
    return {**out, "warnings": [gap]} if gap else out


def items_report(
    store: Any,
    since: timedelta | datetime | None = None,
    until: datetime | None = None,
    entity: str | None = None,
    topic: str | None = None,
    sentiment: str | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    """Stored items, newest event time first, filtered by entity (resolved like ``query entity``), topic and
    item sentiment."""
    if sentiment is not None and sentiment not in SENTIMENTS:
        raise ValueError(f"sentiment {sentiment!r}: use one of {', '.join(SENTIMENTS)}")
    who = resolve_entity(store, entity) if entity else None
    win = _window_args(since, until)
    items = store.list_items(
        win["since"],
        win["until"],
        entity_key=who["entity_key"] if who else None,
        topic=topic,
        sentiment=sentiment,
        limit=limit,
    )
    return {"entity": who, "topic": topic, "sentiment": sentiment, "items": items}


def series_report(store: Any, since: timedelta, bucket_s: int = 60) -> list[dict[str, Any]]:
    """Per-topic counts per time bucket (what dashboards and plots draw)."""
    return [
        {
            "bucket": tc.bucket,
            "topic": tc.topic,
            "total": tc.total,
            "negative": tc.negative,
            "neutral": tc.neutral,
            "positive": tc.positive,
        }
        for tc in store.topic_counts(since, bucket_s=bucket_s)
    ]


def compare_report(store: Any, a: str, b: str, since: timedelta | None = None) -> dict[str, Any]:
    """Per-topic negative share of the same items under versions ``a`` and ``b`` (the ``scores`` history).

    Only items scored by both versions count; a row's topic is the one version ``a`` gave them, so
    both shares of a row are over the same items (``topic_changed``: how many ``b`` moved elsewhere).
    """
    rows = store.compare_versions(a, b, since)
    topics = [
        {
            **r,
            "negative_share_a": round(r["negative_a"] / r["items"], 4) if r["items"] else 0.0,
            "negative_share_b": round(r["negative_b"] / r["items"], 4) if r["items"] else 0.0,
        }
        for r in rows
    ]
    return {
        "a": a,
        "b": b,
        "since_s": int(since.total_seconds()) if since else None,
        "items": sum(r["items"] for r in rows),
        "topics": topics,
        "versions": store.score_versions(since),
    }


def _api_duration(value: str, name: str) -> timedelta:
    """A duration the CLI's way (``30d``, ``2h``); bare seconds (``3600``) are still read, as older clients and
    ``finsent query`` delegating to a worker send them."""
    text = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
        if not 0 < seconds <= MAX_DURATION_S:
            raise ValueError(f"{name}={value!r}: seconds must be more than 0 and at most 100 years")
        return timedelta(seconds=seconds)
    try:
        return parse_duration(text)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _api_time(value: str, name: str) -> timedelta | datetime:
    """A duration back from now (``30d``) or an ISO 8601 time (``2023-01-19``, ``2023-01-19T22:00:00Z``)."""
    return _api_duration(value, name) if not _looks_like_date(value) else _iso_time(value, name)


def _looks_like_date(value: str) -> bool:
    return bool(re.match(r"^\s*\d{4}-\d{2}-\d{2}", value))


def _iso_time(value: str, name: str) -> datetime:
    from finsent.core.events import InvalidEvent, parse_time

    try:
        return parse_time(value, name)
    except InvalidEvent as exc:
        raise ValueError(
            f"{name}: {value[:40]!r} is not an ISO 8601 time such as 2023-01-19T22:00:00Z ({exc.reason})"
        ) from None


def _opt(params: dict[str, str], name: str, conv: Callable[[str, str], Any]) -> Any:
    return conv(params[name], name) if params.get(name) else None


def _limit(params: dict[str, str], default: int, name: str = "limit") -> int:
    text = params.get(name)
    if not text:
        return default
    try:
        v = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a whole number") from None
    if not 1 <= v <= 100_000:
        raise ValueError(f"{name}={text!r}: use a whole number from 1 to 100000")
    return v


def _choice(params: dict[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    value = params.get(name) or None
    if value is not None and value not in choices:
        raise ValueError(f"{name}={value!r}: use one of {', '.join(choices)}")
    return value


def _until(params: dict[str, str]) -> datetime | None:
    value = _opt(params, "until", _api_time)
    return utcnow() - value if isinstance(value, timedelta) else value


_SINCE = "window start: a duration back from now (30s, 15m, 2h, 7d, 1w; bare seconds also read) or an ISO 8601 time"
_UNTIL = "window end: a duration back from now or an ISO 8601 time (default: now)"

#: every parameter of every route of the worker's data API, with what it means (served at ``GET /v1``; an
#: unknown parameter is refused with 400 and this list)
API_PARAMS: dict[str, dict[str, str]] = {
    "/v1/count": {
        "since": "only items ingested in the last DURATION (default: all)",
        "physical": "1: also physical_rows (before deduplication)",
    },
    "/v1/top": {
        "since": "window of event time, a duration (default 1h)",
        "topic": "only this topic",
        "limit": "newest negative items, 1..100000 (default 10)",
    },
    "/v1/alerts": {
        "since": "only alerts fired in the last DURATION (default: all)",
        "kind": "entity or topic (default: both)",
    },
    "/v1/series": {"since": "window of event time, a duration (default 1h)", "bucket_s": "bucket seconds (default 60)"},
    "/v1/compare": {
        "a": "model version A (required)",
        "b": "model version B (required)",
        "since": "only items ingested in the last DURATION",
    },
    "/v1/entities": {
        "since": _SINCE + " (default 7d)",
        "until": _UNTIL,
        "limit": "entities, 1..100000 (default 20)",
        "sentiment": "count only negative, neutral or positive mentions",
    },
    "/v1/entity/{id}": {
        "{id}": "the entity: a stored id (AAPL, X:BTC), name:<name>, a ticker or a name "
        "(resolved by the linker; URL-encode it)",
        "since": _SINCE + " (default 7d)",
        "until": _UNTIL,
        "bucket_s": "series bucket in seconds (default 3600)",
        "limit": "top stories, 1..100000 (default 10)",
    },
    "/v1/items": {
        "since": _SINCE + " (default 7d)",
        "until": _UNTIL,
        "entity": "only items mentioning this entity (as /v1/entity/{id})",
        "topic": "only this topic",
        "sentiment": "only items of this sentiment: negative, neutral or positive",
        "limit": "items, newest event time first, 1..100000 (default 100)",
    },
}


def _bucket(params: dict[str, str], default: int) -> int:
    return _limit(params, default, "bucket_s")


#: the worker's read-only API (``GET /v1/<name>?since=30d&...``, parameters in :data:`API_PARAMS`): each answers
#: the JSON of the ``finsent query`` report of the same name
API_ROUTES: dict[str, Callable[[Any, dict[str, str]], Any]] = {
    "/v1/count": lambda st, q: count_report(st, _opt(q, "since", _api_duration), q.get("physical") == "1"),
    "/v1/top": lambda st, q: top_report(
        st, _opt(q, "since", _api_duration) or timedelta(hours=1), q.get("topic") or None, _limit(q, 10)
    ),
    "/v1/alerts": lambda st, q: alerts_report(
        st, _opt(q, "since", _api_duration), _choice(q, "kind", ("entity", "topic"))
    ),
    "/v1/series": lambda st, q: series_report(
        st, _opt(q, "since", _api_duration) or timedelta(hours=1), _bucket(q, 60)
    ),
    "/v1/compare": lambda st, q: compare_report(st, q["a"], q["b"], _opt(q, "since", _api_duration)),
    "/v1/entities": lambda st, q: top_entities_report(
        st, _opt(q, "since", _api_time), _until(q), _limit(q, 20), _choice(q, "sentiment", SENTIMENTS)
    ),
    "/v1/entity/{id}": lambda st, q: entity_report(
        st, q.get("{id}", ""), _opt(q, "since", _api_time), _until(q), _bucket(q, 3600), _limit(q, 10)
    ),
    "/v1/items": lambda st, q: items_report(
        st,
        _opt(q, "since", _api_time),
        _until(q),
        q.get("entity") or None,
        q.get("topic") or None,
        _choice(q, "sentiment", SENTIMENTS),
        _limit(q, 100),
    ),
}


def api_help() -> dict[str, Any]:
    """``GET /v1``: every route and its parameters (what the 400 of an unknown parameter points to)."""
    return {
        "routes": API_PARAMS,
        "durations": DURATION_HELP + " (bare seconds are also read)",
        "auth": "Authorization: Bearer <FINSENT_API_TOKEN> (required beyond loopback)",
    }


def api_handlers(store_getter: Callable[[], Any]) -> dict[str, Callable[[dict[str, str]], tuple[int, Any]]]:
    """The routes a running worker serves next to ``/metrics``, reading through its own store.

    A path template ``/v1/entity/{id}`` is served as the prefix ``/v1/entity/``: the server
    (:mod:`finsent.stream.metrics`) passes the rest of the path as the ``{id}`` parameter. A parameter the route
    does not know is refused with 400 and the route's parameters, so a typo (``?limt=5``) never silently reads
    a default.
    """

    def handler(path: str, fn: Callable[[Any, dict[str, str]], Any]) -> Callable[[dict[str, str]], tuple[int, Any]]:
        known = API_PARAMS[path]

        def run(params: dict[str, str]) -> tuple[int, Any]:
            unknown = sorted(set(params) - set(known))
            if unknown:
                return 400, {
                    "error": f"unknown query parameter(s) {', '.join(unknown)} for {path}; known: "
                    f"{', '.join(k for k in known if k != '{id}') or 'none'}",
                    "parameters": known,
                }
            store = store_getter()
            if store is None:
                return 503, {"error": "the worker has not opened its store yet; retry in a few seconds"}
            try:
                return 200, _jsonable(fn(store, params))
            except (ValueError, KeyError) as exc:
                return 400, {"error": f"bad query parameter: {exc}", "parameters": known}

        return run

    routes = {path.replace("{id}", ""): handler(path, fn) for path, fn in API_ROUTES.items()}
    routes["/v1"] = lambda params: (200, api_help())
    return routes
