"""The path every ingested item takes: normalise -> drop duplicates -> publish (or print) -> mark.

Sources (feeds, social APIs, replay, HTTP push) only turn their native records into keyword
arguments for :func:`ingest.normalize.make_item`; this module owns what happens next, so the
dedup and "mark only after the broker acked" rules exist exactly once.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from finsent.core.events import RawItem
from finsent.ingest.dedup import DedupStore
from finsent.ingest.metrics import IngestMetrics, default_metrics
from finsent.ingest.normalize import Skip, dedup_keys, make_item, to_output
from finsent.ingest.publisher import Publisher

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Entry:
    """A normalised item and the dedup keys it is known under (id, canonical URL, source GUID)."""

    item: RawItem
    keys: tuple[str, ...]


@dataclass
class SubmitResult:
    published: list[RawItem] = field(default_factory=list)
    duplicates: list[RawItem] = field(default_factory=list)
    oversize: list[RawItem] = field(default_factory=list)


class Pipeline:
    """Shared by all sources of one process. ``publisher=None`` means dry-run: print JSON lines."""

    def __init__(
        self,
        *,
        publisher: Publisher | None,
        dedup: DedupStore | None,
        metrics: IngestMetrics | None = None,
        max_text_chars: int = 20_000,
        out: TextIO | None = None,
        use_dedup: bool = True,
    ) -> None:
        self.publisher = publisher
        self.dedup = dedup if dedup is not None else DedupStore(None)
        self.use_dedup = use_dedup
        self.metrics = metrics or default_metrics()
        self.max_text_chars = max_text_chars
        self.out = out
        self._out_lock = threading.Lock()
        self._submit_lock = threading.Lock()
        self.skipped = 0
        self.produced = 0

    @property
    def dry_run(self) -> bool:
        return self.publisher is None

    # -- normalisation with counting -------------------------------------------------------------

    def normalize(self, metric_source: str, *, guid: Any = None, **fields: Any) -> Entry | None:
        """``make_item`` + keys; a :class:`Skip` is counted (metrics + ``skipped``) and gives ``None``."""
        try:
            item = make_item(guid=guid, max_text_chars=self.max_text_chars, **fields)
        except Skip as exc:
            self.skipped += 1
            self.metrics.skipped.labels(metric_source, exc.reason).inc()
            log.debug("skipped an item from %s: %s", metric_source, exc)
            return None
        if item.truncated:
            self.metrics.truncated.labels(metric_source).inc()
        g = str(guid).strip() if guid not in (None, "") else None
        return Entry(item, tuple(dedup_keys(item, g)))

    def count_fetched(self, metric_source: str, n: int) -> None:
        self.metrics.fetched.labels(metric_source).inc(n)

    def count_skipped(self, metric_source: str, reason: str, n: int = 1) -> None:
        self.skipped += n
        self.metrics.skipped.labels(metric_source, reason).inc(n)

    # -- dedup + publish -------------------------------------------------------------------------

    def split_new(self, entries: Sequence[Entry]) -> tuple[list[Entry], list[Entry]]:
        """(new, duplicates): against the persisted state and within the batch itself."""
        if not self.use_dedup:
            return list(entries), []
        known = self.dedup.known(k for e in entries for k in e.keys)
        new: list[Entry] = []
        dups: list[Entry] = []
        batch_keys: set[str] = set()
        for e in entries:
            if any(k in known or k in batch_keys for k in e.keys):
                dups.append(e)
            else:
                new.append(e)
            batch_keys.update(e.keys)
        return new, dups

    def submit(
        self, metric_source: str, entries: Sequence[Entry], *, give_up_after_s: float | None = None
    ) -> SubmitResult:
        """Publish the new entries; marks dedup keys only for acked items. May raise PublishError.

        Serialised: two threads submitting the same story must not both find it new.
        """
        with self._submit_lock:
            return self._submit(metric_source, entries, give_up_after_s)

    def _submit(self, metric_source: str, entries: Sequence[Entry], give_up_after_s: float | None) -> SubmitResult:
        result = SubmitResult()
        new, dups = self.split_new(entries)
        result.duplicates = [e.item for e in dups]
        if dups:
            self.metrics.duplicates.labels(metric_source).inc(len(dups))
        if not new:
            return result
        keys_by_id: dict[str, list[str]] = {}
        for e in new:
            keys_by_id.setdefault(e.item.id, []).extend(e.keys)

        def mark(acked: list[RawItem]) -> None:
            if self.use_dedup:
                self.dedup.mark(k for it in acked for k in keys_by_id.get(it.id, ()))
            self.metrics.published.labels(metric_source).inc(len(acked))
            self.produced += len(acked)

        if self.publisher is None:
            items = [e.item for e in new]
            self._print(items)
            mark(items)
            result.published = items
            return result
        try:
            res = self.publisher.publish_detailed([e.item for e in new], give_up_after_s=give_up_after_s, on_acked=mark)
        except Exception:
            self.metrics.errors.labels(metric_source, "publish").inc()
            raise
        result.published = res.acked
        result.oversize = res.oversize
        if res.oversize:
            self.count_skipped(metric_source, "oversize", len(res.oversize))
        return result

    def _print(self, items: Sequence[RawItem]) -> None:
        out = self.out or sys.stdout
        with self._out_lock:
            for it in items:
                out.write(json.dumps(to_output(it), ensure_ascii=False) + "\n")
            out.flush()
