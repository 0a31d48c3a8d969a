"""Prometheus metrics of the ingesters, labelled per source.

One module so that every ingest command exposes the same names; ``source`` is the RawItem's
source string (e.g. ``rss:www.cnbc.com``, ``mastodon:mastodon.social#stocks``), which is bounded
by the configured feeds/accounts, never by item content.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

log = logging.getLogger(__name__)


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = registry if registry is not None else REGISTRY
        self.registry = reg
        self.fetched = Counter(
            "finsent_ingest_items_fetched", "items read from a source (before dedup)", ["source"], registry=reg
        )
        self.published = Counter(
            "finsent_ingest_items_published", "items acknowledged by the broker", ["source"], registry=reg
        )
        self.duplicates = Counter(
            "finsent_ingest_duplicates", "items dropped as already published (GUID/URL/id)", ["source"], registry=reg
        )
        self.skipped = Counter(
            "finsent_ingest_items_skipped",
            "items not publishable (empty text, bad fields)",
            ["source", "reason"],
            registry=reg,
        )
        self.truncated = Counter(
            "finsent_ingest_items_truncated", "items whose text was cut to max_text_chars", ["source"], registry=reg
        )
        self.errors = Counter(
            "finsent_ingest_errors", "failed fetches/publishes by kind", ["source", "kind"], registry=reg
        )
        self.unparsed_dates = Counter(
            "finsent_ingest_unparsed_dates",
            "items kept with an unreadable publication time (event time = ingested_at); fix the source's dates",
            ["source"],
            registry=reg,
        )
        self.fetch_seconds = Histogram(
            "finsent_ingest_fetch_seconds",
            "latency of one fetch of a source",
            ["source"],
            registry=reg,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
        )


_default: IngestMetrics | None = None


def default_metrics() -> IngestMetrics:
    """Process-wide metrics on the default registry (created once: Prometheus forbids duplicates)."""
    global _default
    if _default is None:
        _default = IngestMetrics()
    return _default


#: at most one WARNING per source per this many seconds about unreadable dates (a feed with a broken date
#: field would otherwise log every item of every poll)
UNPARSED_LOG_EVERY_S = 60.0
_unparsed_lock = threading.Lock()
_unparsed_log: dict[str, tuple[float, int]] = {}  # source -> (last WARNING, items not logged since)


def unparsed_date_hook(
    metrics: IngestMetrics, source: str, clock: Callable[[], float] = time.monotonic
) -> Callable[[str], None]:
    """What an ingester passes as ``make_item(on_unparsed_date=...)``: counts the item in
    ``finsent_ingest_unparsed_dates_total{source}`` and logs a WARNING with the reason, at most one per
    :data:`UNPARSED_LOG_EVERY_S` per source (the next one says how many were not logged)."""

    def note(why: str) -> None:
        metrics.unparsed_dates.labels(source).inc()
        now = clock()
        with _unparsed_lock:
            seen = _unparsed_log.get(source)
            quiet = seen[1] if seen is not None else 0
            if seen is not None and now - seen[0] < UNPARSED_LOG_EVERY_S:
                last = seen[0]
                _unparsed_log[source] = (last, quiet + 1)
                return
            _unparsed_log[source] = (now, 0)
        log.warning(
            "%s: an item's publication time is unreadable (%s); kept with event time = ingest time%s. Fix the "
            "source's date field; finsent_ingest_unparsed_dates_total{source=%r} counts them",
            source,
            why,
            f" ({quiet} more since the last warning)" if quiet else "",
            source,
        )

    return note
