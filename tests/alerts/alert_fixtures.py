"""What the alert and query tests store: one topic spike and one entity surge relative to ``now``, and scored items.

Several tests seed a store with "a topic alert and an entity alert a few minutes old" (the Grafana dashboards'
queries, ``finsent query alerts`` at 80 columns): they build them here, overriding only what their assertions
are about, so the shape of a stored alert is written once. :func:`store_scored` writes scored items (and their
mentions) into a store the command under test then opens itself (chdb: one process per path at a time).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from finsent.core.events import Alert, ScoredItem
from finsent.stream.store import open_store


def topic_alert(now: datetime, **overrides: Any) -> Alert:
    """A warning spike on "banking" by ``ewma_z`` over the five minutes to three minutes ago: 30 of 50 negative
    against a 10 % baseline. ``overrides`` replace any field."""
    fields: dict[str, Any] = {
        "topic": "banking",
        "fired_at": now - timedelta(minutes=3),
        "window_start": now - timedelta(minutes=8),
        "window_end": now - timedelta(minutes=3),
        "negative": 30,
        "total": 50,
        "negative_share": 0.6,
        "baseline_share": 0.1,
        "score": 9.1,
        "detector": "ewma_z",
        "severity": "warning",
    }
    return Alert(**(fields | overrides))


def entity_alert(now: datetime, **overrides: Any) -> Alert:
    """A warning surge about JPMorgan Chase (``JPM``) by ``entity_surge`` over the 18 minutes to two minutes ago:
    12 novel negative stories of 20 against a quiet baseline. ``overrides`` replace any field."""
    fields: dict[str, Any] = {
        "topic": "",
        "fired_at": now - timedelta(minutes=2),
        "window_start": now - timedelta(minutes=20),
        "window_end": now - timedelta(minutes=2),
        "negative": 12,
        "total": 20,
        "negative_share": 0.6,
        "baseline_share": 0.0,
        "score": 7.9,
        "detector": "entity_surge",
        "kind": "entity",
        "entity_id": "JPM",
        "entity_name": "JPMorgan Chase",
        "evidence": {"sources": ["a", "b"], "headlines": []},
    }
    return Alert(**(fields | overrides))


def store_scored(url: str, items: Sequence[ScoredItem]) -> None:
    """Store ``items`` with their mentions at ``url`` (schema created if missing), then close the store."""
    store = open_store(url)
    try:
        store.ensure_schema()
        store.insert_scored(items)
    finally:
        store.close()
