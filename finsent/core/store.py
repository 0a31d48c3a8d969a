"""The store interface: what the worker, the CLI, the alerting and the demo need from ClickHouse.

Two implementations sit behind it (in :mod:`finsent.stream.store`), sharing one schema module:
``ClickHouseStore`` (a server over the native protocol, clickhouse-driver) and ``ChdbStore``
(embedded, in-process ClickHouse). ``open_store(url)`` picks one from the settings URL.

Contract:
* ``insert_scored`` is idempotent by item id: inserting the same batch twice (a redelivery after
  a crash between store and offset commit) never makes an item show twice in query results.
* Every method is blocking; the Faust agent calls them from an executor thread. Implementations
  must be safe to call from one thread at a time (they hold a lock), not lock-free.
* Only parameterised SQL reaches the server: values are never formatted into query text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from finsent.core.events import Alert, ScoredItem, utcnow


@dataclass(frozen=True, slots=True)
class TopicCounts:
    """Distinct items of one topic in one time bucket (of ``ingested_at``), split by sentiment."""

    bucket: datetime
    topic: str
    total: int
    negative: int
    neutral: int
    positive: int


#: The tasks a human label can correct (the two heads of the classifier).
LABEL_TASKS: tuple[str, ...] = ("sentiment", "topic")


@dataclass(frozen=True, slots=True)
class Label:
    """One human correction: item ``id``'s ``task`` label is ``label`` (was ``old_label``, '' if unknown).

    ``text`` is the text labelled (copied from the stored item, or given with it for text that was
    never stored), so training never depends on the item still being in ``items``. The store keeps
    the newest correction per (task, id): re-importing the same file changes nothing.
    """

    id: str
    task: str
    label: str
    text: str = ""
    old_label: str = ""
    by: str = ""
    at: datetime = field(default_factory=utcnow)
    note: str = ""
    origin: str = ""


__all__ = ["LABEL_TASKS", "Label", "Store", "TopicCounts"]


class Store(Protocol):
    url_redacted: str

    def ensure_schema(self) -> None: ...
    def insert_scored(self, items: Sequence[ScoredItem]) -> int: ...
    def insert_alerts(self, alerts: Sequence[Alert]) -> int: ...
    def count(self, since: timedelta | None = None) -> dict[str, int]: ...
    def topic_counts(
        self, since: timedelta, bucket_s: int = 60, until: datetime | None = None
    ) -> list[TopicCounts]: ...
    def top_negative(
        self, since: timedelta | None = None, topic: str | None = None, limit: int = 10
    ) -> list[dict[str, Any]]: ...
    def alerts(self, since: timedelta | None = None) -> list[dict[str, Any]]: ...
    def topic_alert_evidence(self, topic: str, start: datetime, end: datetime, limit: int = 5) -> dict[str, Any]: ...
    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]: ...
    # human labels (finsent label ...) and what the annotators and the drift report read
    def insert_labels(self, labels: Sequence[Label]) -> int: ...
    def labels(self, task: str | None = None, ids: Sequence[str] | None = None) -> list[Label]: ...
    def items_by_id(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]: ...
    def label_queue(
        self,
        limit: int,
        since: timedelta | None = None,
        task: str = "sentiment",
        strategy: str = "uncertain",
        seed: int = 0,
    ) -> list[dict[str, Any]]: ...
    def model_version_counts(self, since: datetime, until: datetime) -> list[tuple[str, int]]: ...
    def prediction_stats(
        self, since: datetime, split: datetime, until: datetime, model_version: str, low_confidence: float
    ) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...
