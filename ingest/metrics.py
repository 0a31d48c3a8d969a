"""Prometheus metrics of the ingesters, labelled per source.

One module so that every ingest command exposes the same names; ``source`` is the RawItem's
source string (e.g. ``rss:www.cnbc.com``, ``mastodon:mastodon.social#stocks``), which is bounded
by the configured feeds/accounts, never by item content.
"""

from __future__ import annotations

import logging

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
