"""The store logic both engines share; subclasses only say how to run one statement.

``ClickHouseStore`` (server, native protocol) and ``ChdbStore`` (embedded) differ in how a query
travels and how parameters are bound, not in what is asked: keeping the queries here (and their
text in the per-feature modules of :mod:`finsent.stream.store.schema`) means the two cannot drift apart, and the
tests run the same assertions against both.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from finsent.core.errors import StoreDiskFull
from finsent.core.events import Alert, ScoredItem, format_time, utcnow
from finsent.core.store import LABEL_TASKS, Label, TopicCounts
from finsent.stream.store.schema import alerts as alert_sql
from finsent.stream.store.schema import ddl
from finsent.stream.store.schema import drift as drift_sql
from finsent.stream.store.schema import items as item_sql
from finsent.stream.store.schema import labels as label_sql
from finsent.stream.store.schema import mentions as mention_sql
from finsent.stream.store.schema import registry as registry_sql
from finsent.stream.store.schema import rows as encoding
from finsent.stream.store.schema import scores as score_sql

log = logging.getLogger(__name__)

#: Rows per INSERT statement: big enough to amortise the round trip, small enough to bound memory.
INSERT_BATCH_ROWS = 10_000
#: Ids per lookup query: the 18.16 driver binds them into the SQL text (max_query_size is 256 KiB).
ID_LOOKUP_CHUNK = 2_000


def _chunks(rows: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def since_epoch(since: timedelta | None, now: datetime | None = None) -> int:
    """Epoch seconds of ``now - since`` (``None`` = everything, i.e. 0)."""
    if since is None:
        return 0
    if since.total_seconds() < 0:
        raise ValueError("since must be a positive duration")
    return max(0, int(((now or utcnow()) - since).timestamp()))


def _epoch(ts: datetime) -> int:
    if ts.tzinfo is None:
        raise ValueError("naive datetime: finsent timestamps must be timezone-aware")
    return int(ts.timestamp())


def _series_row(d: dict[str, Any]) -> dict[str, Any]:
    """Counts as ints, net sentiment rounded, a bucket as an aware datetime."""
    for k in ("buzz", "negative", "neutral", "positive", "novel", "novel_negative", "sources"):
        d[k] = int(d[k])
    d["net_sentiment"] = round(float(d["net_sentiment"]), 4)
    if "bucket" in d:
        d["bucket"] = _as_utc(d["bucket"])
    return d


def _as_utc(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


#: What a ClickHouse error says when the disk is full (server and chdb word it the same way).
_DISK_FULL_MARKERS = ("NOT_ENOUGH_SPACE", "No space left on device", "Cannot reserve", "not enough space")


def is_disk_full(text: str) -> bool:
    """Whether a ClickHouse error message says the write failed for want of disk space."""
    return any(marker in text for marker in _DISK_FULL_MARKERS)


def check_written(where: str, table: str, sent: int, written: int | None) -> None:
    """Raise :class:`StoreDiskFull` when the engine reports fewer rows written than were sent.

    ``written`` counts every row the INSERT wrote, views included, so it may exceed ``sent``;
    ``None`` means the engine did not say (then its exception is the only evidence).
    """
    if written is not None and written < sent:
        raise StoreDiskFull(f"{where}: insert into {table} wrote {written} of {sent} rows; is the store's disk full?")


class SqlStore:
    """Everything in the :class:`~finsent.core.store.Store` protocol, over three backend hooks.

    Subclasses implement :meth:`_select`, :meth:`_command` and :meth:`_insert` (and may
    override :attr:`capabilities`). Every public method holds ``self._lock`` for its whole duration:
    one statement at a time per store object (the worker calls from one executor thread; the
    lock makes accidental sharing safe rather than fast).
    """

    url_redacted: str

    def __init__(
        self,
        database: str,
        retention_days: int = 0,
        insert_batch_rows: int = INSERT_BATCH_ROWS,
        cluster: str | None = None,
    ) -> None:
        self.database = ddl.check_database_name(database)
        #: cluster mode (schema module docstring): ON CLUSTER DDL, Distributed tables over *_local ones
        self.cluster = ddl.check_cluster_name(cluster) if cluster else None
        self.retention_days = int(retention_days)
        self.insert_batch_rows = max(1, int(insert_batch_rows))
        self._lock = threading.RLock()
        self._caps: ddl.Capabilities | None = None

    # --- backend hooks --------------------------------------------------------------------------
    def _select(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _command(self, sql: str) -> None:
        raise NotImplementedError

    def _insert(self, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    # --- helpers ----------------------------------------------------------------------------------
    @property
    def capabilities(self) -> ddl.Capabilities:
        with self._lock:
            if self._caps is None:
                self._caps = ddl.Capabilities.parse(str(self._select(ddl.SERVER_VERSION)[0][0]))
            return self._caps

    def _q(self, template: str) -> str:
        return ddl.render(template, self.database)

    # --- Store protocol ---------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Create the database, tables and view if missing; align TTL with ``retention_days``.

        Idempotent and cheap: safe to call on every start of every worker.
        """
        with self._lock:
            caps = self.capabilities
            for stmt in ddl.create_statements(self.database, caps, self.retention_days, self.cluster):
                self._command(stmt)
            # columns a newer finsent declares on a table an older one created (items.event_time, alerts.kind...)
            existing: dict[str, set[str]] = {}
            for table, column in self._select(ddl.TABLE_COLUMNS, {"db": self.database}):
                existing.setdefault(str(table), set()).add(str(column))
            for stmt in ddl.missing_column_statements(self.database, existing, self.cluster):
                log.info("store: %s", stmt)
                self._command(stmt)
            engines = dict(self._select(ddl.TABLE_ENGINES, {"db": self.database}))
            # every engine (18.16 too, which has no TTL): a table of an old layout is named, with the rebuild
            for warning in ddl.layout_warnings(self.database, engines, self.cluster):
                log.warning("store: %s", warning)
            if caps.ttl:
                for stmt in ddl.ttl_statements(self.database, caps, self.retention_days, engines, self.cluster):
                    log.info("store: %s", stmt)
                    self._command(stmt)
            elif self.retention_days > 0:
                log.warning(
                    "store: ClickHouse %s has no TTL (19.6+); retention_days=%d is not applied, "
                    "drop old monthly partitions by hand (ALTER TABLE %s.items DROP PARTITION YYYYMM)",
                    caps.version_text,
                    self.retention_days,
                    self.database,
                )

    def insert_scored(
        self,
        items: Sequence[ScoredItem],
        *,
        replace_mentions: bool = False,
        stories: dict[str, dict[str, tuple[int, str]]] | None = None,
    ) -> int:
        """Write scored items and their mentions (one row per (item, entity)); returns the number of items.

        Items in batches of ``insert_batch_rows``, then their mentions, each a verified insert (``_insert``
        raises unless every row was written), in this one call: the worker commits offsets only after it
        returns, so a batch is stored whole or redelivered whole (kill -9 included). Idempotent by item id
        and by (item id, entity key): a redelivered batch adds physical rows that ``FINAL`` collapses.
        ``replace_mentions`` (``finsent rescore``): entities stored for these items that the new score no longer
        finds get a tombstone. ``stories`` maps item id -> entity key -> (novelty, cluster id) where the caller
        computed them (default: novel, no cluster; see ``mentions`` in :mod:`finsent.stream.store.schema.ddl`).
        """
        if not items:
            return 0
        rows = [encoding.scored_row(s) for s in items]
        with self._lock:
            old: dict[str, set[str]] = {}
            if replace_mentions:
                for chunk in _chunks(list(dict.fromkeys(s.id for s in items)), ID_LOOKUP_CHUNK):
                    for item_id, key in self._select(self._q(mention_sql.KEYS_FOR_ITEMS), {"ids": list(chunk)}):
                        old.setdefault(str(item_id), set()).add(str(key))
            mention_rows = [
                r for s in items for r in encoding.mention_rows(s, (stories or {}).get(s.id), old.get(s.id, ()))
            ]
            for chunk in _chunks(rows, self.insert_batch_rows):
                self._insert(f"{self.database}.{ddl.ITEMS}", encoding.ITEM_COLUMNS, chunk)
            for chunk in _chunks(mention_rows, self.insert_batch_rows):
                self._insert(f"{self.database}.{ddl.MENTIONS}", encoding.MENTION_COLUMNS, chunk)
        return len(rows)

    def insert_alerts(self, alerts: Sequence[Alert]) -> int:
        """Write alerts; idempotent by alert id (a re-fired alert replaces its earlier row)."""
        if not alerts:
            return 0
        rows = [encoding.alert_row(a) for a in alerts]
        with self._lock:
            for chunk in _chunks(rows, self.insert_batch_rows):
                self._insert(f"{self.database}.{ddl.ALERTS}", encoding.ALERT_COLUMNS, chunk)
        return len(rows)

    def count(self, since: timedelta | None = None, physical: bool = False) -> dict[str, int]:
        """Items ingested in the last ``since`` (all when ``None``), as queries of this store see them.

        * ``rows``: rows a query of ``items FINAL`` returns (what every store query reads),
        * ``unique_ids``: distinct item ids among all physical rows (``uniqExact(id)``, no FINAL),
        * ``physical_rows`` (only with ``physical=True``): rows on disk before deduplication,
          i.e. including redelivered copies that background merges have not collapsed yet.

        ``rows - unique_ids`` is the number of duplicates a query could see: 0 when idempotency
        holds. ``physical_rows - unique_ids`` shows how many redelivered copies FINAL is hiding.
        """
        params = {"since": since_epoch(since)}
        with self._lock:
            out = {
                "rows": int(self._select(self._q(item_sql.COUNT_FINAL), params)[0][0]),
                "unique_ids": int(self._select(self._q(item_sql.COUNT_UNIQUE), params)[0][0]),
            }
            if physical:
                out["physical_rows"] = int(self._select(self._q(item_sql.COUNT_PHYSICAL), params)[0][0])
        return out

    def topic_counts(self, since: timedelta, bucket_s: int = 60, until: datetime | None = None) -> list[TopicCounts]:
        """Distinct items per topic per ``bucket_s`` bucket of ``ingested_at`` in [now-since, until).

        Reads ``items FINAL``: one row per id, the newest version, so counts are exact under
        redelivery and re-scoring. Buckets are aligned to multiples of ``bucket_s`` since the epoch.
        """
        if bucket_s < 1:
            raise ValueError("bucket_s must be >= 1")
        now = utcnow()
        until_ts = _epoch(until) if until is not None else int(now.timestamp()) + 1
        params = {"since": since_epoch(since, now), "until": until_ts, "bucket": int(bucket_s)}
        with self._lock:
            rows = self._select(self._q(item_sql.TOPIC_COUNTS), params)
        return [
            TopicCounts(
                bucket=_as_utc(b), topic=t, total=int(tot), negative=int(neg), neutral=int(neu), positive=int(pos)
            )
            for b, t, tot, neg, neu, pos in rows
        ]

    def topic_minute_counts(self, since: timedelta) -> list[TopicCounts]:
        """Per-topic per-minute distinct items from the pre-aggregated ``topic_minute`` table.

        Cheap for long ranges; exact under redelivery but not under re-scoring (see schema docs).
        """
        with self._lock:
            rows = self._select(self._q(item_sql.TOPIC_MINUTE_COUNTS), {"since": since_epoch(since)})
        return [
            TopicCounts(
                bucket=_as_utc(b), topic=t, total=int(tot), negative=int(neg), neutral=int(neu), positive=int(pos)
            )
            for b, t, tot, neg, neu, pos in rows
        ]

    def top_negative(
        self, since: timedelta | None = None, topic: str | None = None, limit: int = 10
    ) -> list[dict[str, Any]]:
        """The newest items whose current (newest-version) sentiment is negative, newest first."""
        params = {
            "since": since_epoch(since),
            "any_topic": 1 if topic is None else 0,
            "topic": topic or "",
            "limit": max(0, int(limit)),
        }
        with self._lock:
            rows = self._select(self._q(item_sql.TOP_NEGATIVE), params)
        out = []
        for row in rows:
            d = dict(zip(item_sql.NEGATIVE_COLUMNS, row, strict=True))
            d["event_time"] = _as_utc(d["event_time"])
            ms = int(d.pop("ingested_ms"))
            d["ingested_at"] = _as_utc(d["ingested_at"]) + timedelta(milliseconds=ms)
            d["tickers"] = list(d["tickers"])
            d["topic_prob"] = float(d["topic_prob"])
            d["p_negative"] = float(d["p_negative"])
            out.append(d)
        return out

    def alerts(self, since: timedelta | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """Alerts fired in the last ``since`` (all when ``None``), newest first, one row per alert id.

        ``kind``: only ``"entity"`` or only ``"topic"`` alerts. Each row also has ``at`` (the event time of the
        detection: the window's end), ``sentiment`` (``"negative"``: every detector watches negative news),
        ``entity_id``/``entity_name`` (None on topic alerts), ``topic`` (None on entity alerts) and
        ``evidence`` (a dict, None when the alert carries none). Alerts stored before issue 26 are topic alerts.
        """
        if kind not in (None, "entity", "topic"):
            raise ValueError(f"alert kind {kind!r}: use entity or topic")
        with self._lock:
            rows = self._select(self._q(alert_sql.ALERTS_SINCE), {"since": since_epoch(since)})
        out = []
        for row in rows:
            d = dict(zip(alert_sql.ALERT_SELECT_COLUMNS, row, strict=True))
            d["kind"] = str(d.get("kind") or "topic")
            if kind is not None and d["kind"] != kind:
                continue
            for k in ("fired_at", "window_start", "window_end"):
                d[k] = _as_utc(d[k])
            for k in ("negative", "total"):
                d[k] = int(d[k])
            d["at"] = d["window_end"]
            d["sentiment"] = "negative"
            entity = d["kind"] == "entity"
            d["entity_id"] = (d.get("entity_id") or None) if entity else None
            d["entity_name"] = (d.get("entity_name") or None) if entity else None
            d["topic"] = None if entity else d["topic"]
            try:
                d["evidence"] = json.loads(d["evidence"]) if d.get("evidence") else None
            except ValueError:
                d["evidence"] = {"unreadable": str(d["evidence"])[:200]}
            out.append(d)
        return out

    def topic_alert_evidence(self, topic: str, start: datetime, end: datetime, limit: int = 5) -> dict[str, Any]:
        """What a topic alert over ``[start, end)`` of ingested_at shows a reader (issue 25): ``headlines``, the
        ``limit`` most negative items of ``topic`` in the window (id, title -- the text's start when untitled --,
        url, source, at, p_negative), and ``model_versions``, {version: items of the topic in the window}, most
        first (two when a hot reload split the window)."""
        params = {"topic": topic, "start": _epoch(start), "end": _epoch(end), "limit": max(0, int(limit))}
        with self._lock:
            heads = self._select(self._q(alert_sql.TOPIC_ALERT_HEADLINES), params)
            versions = self._select(self._q(alert_sql.TOPIC_ALERT_VERSIONS), params)
        headlines = []
        for row in heads:
            d = dict(zip(alert_sql.TOPIC_ALERT_HEADLINE_COLUMNS, row, strict=True))
            headlines.append(
                {
                    "id": str(d["id"]),
                    "title": str(d["title"] or ""),
                    "url": str(d["url"] or "") or None,
                    "source": str(d["source"] or ""),
                    "at": format_time(_as_utc(d["event_time"])),
                    "p_negative": round(float(d["p_negative"]), 4),
                }
            )
        return {"headlines": headlines, "model_versions": {str(v): int(n) for v, n in versions}}

    # --- entities: mentions, series, top lists, listings (issue 26; queries in stream/store/schema/mentions.py) ---
    def _window(self, since: timedelta | datetime | None, until: datetime | None) -> dict[str, int]:
        now = utcnow()
        lo = _epoch(since) if isinstance(since, datetime) else since_epoch(since, now)
        hi = _epoch(until) if until is not None else min(int(now.timestamp()) + 1 + 300, encoding.MAX_DATETIME_S)
        return {"since": lo, "until": hi}

    def entity_exists(self, key: str) -> bool:
        """Whether any current mention carries this stored entity key."""
        with self._lock:
            return int(self._select(self._q(mention_sql.KEY_EXISTS), {"key": key})[0][0]) > 0

    def entity_series(
        self, key: str, since: timedelta | datetime | None = None, until: datetime | None = None, bucket_s: int = 3600
    ) -> list[dict[str, Any]]:
        """One entity's mentions per ``bucket_s`` bucket of event time: buzz (all), counts by sentiment,
        novel and novel negative counts (as stored), relevance-weighted net sentiment, distinct sources."""
        if bucket_s < 1:
            raise ValueError("bucket_s must be >= 1")
        params = {**self._window(since, until), "key": key, "bucket": int(bucket_s)}
        with self._lock:
            rows = self._select(self._q(mention_sql.ENTITY_SERIES), params)
        return [_series_row(dict(zip(mention_sql.SERIES_FIELDS, r, strict=True))) for r in rows]

    def top_entities(
        self,
        since: timedelta | datetime | None = None,
        until: datetime | None = None,
        limit: int = 20,
        sentiment: str | None = None,
    ) -> list[dict[str, Any]]:
        """The most mentioned entities in the window (most buzz first, ties by key), with their counts;
        ``sentiment`` counts only mentions of that sentiment (``negative``: the most talked-down names)."""
        params = {
            **self._window(since, until),
            "limit": max(1, int(limit)),
            "any_sentiment": int(sentiment is None),
            "sentiment": sentiment or "",
        }
        with self._lock:
            rows = self._select(self._q(mention_sql.TOP_ENTITIES), params)
        out = []
        for r in rows:
            d = _series_row(dict(zip(mention_sql.TOP_FIELDS, r, strict=True)))
            d["entity_id"] = d["entity_id"] or None
            out.append(d)
        return out

    def entity_stories(
        self, key: str, since: timedelta | datetime | None = None, until: datetime | None = None, limit: int = 10
    ) -> list[dict[str, Any]]:
        """The entity's most relevant stories in the window (relevance, then newest), with title and url."""
        params = {**self._window(since, until), "key": key, "limit": max(1, int(limit))}
        with self._lock:
            rows = [
                dict(zip(mention_sql.STORY_FIELDS, r, strict=True))
                for r in self._select(self._q(mention_sql.ENTITY_STORIES), params)
            ]
            heads = (
                {r[0]: r for r in self._select(self._q(item_sql.ITEM_HEADLINES), {"ids": [d["item_id"] for d in rows]})}
                if rows
                else {}
            )
        for d in rows:
            _, title, text, url = heads.get(d["item_id"], (None, None, "", None))
            d.update(
                event_time=_as_utc(d["event_time"]),
                relevance=int(d["relevance"]),
                novelty=int(d["novelty"]),
                entity_id=d["entity_id"] or None,
                title=title or (text or "")[:200],
                url=url,
            )
        return rows

    def list_items(
        self,
        since: timedelta | datetime | None = None,
        until: datetime | None = None,
        *,
        entity_key: str | None = None,
        topic: str | None = None,
        sentiment: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Stored items, newest event time first, filtered by entity (a stored key), topic and item sentiment."""
        params = {
            **self._window(since, until),
            "any_entity": int(entity_key is None),
            "key": entity_key or "",
            "any_topic": int(topic is None),
            "topic": topic or "",
            "any_sentiment": int(sentiment is None),
            "sentiment": sentiment or "",
            "limit": max(1, int(limit)),
        }
        with self._lock:
            rows = self._select(self._q(item_sql.ITEMS_LIST), params)
        out = []
        for r in rows:
            d = dict(zip(item_sql.LIST_FIELDS, r, strict=True))
            for k in ("event_time", "published_at", "ingested_at"):
                d[k] = _as_utc(d[k]) if d[k] is not None else None
            d["tickers"] = list(d["tickers"])
            for k in ("p_negative", "p_neutral", "p_positive", "topic_prob"):
                d[k] = round(float(d[k]), 6)
            out.append(d)
        return out

    def mention_history(self, since: datetime, until: datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(items, mentions) with event time in [since, until), oldest first: what the backtest replays."""
        params = {"since": _epoch(since), "until": _epoch(until)}
        with self._lock:
            items = [
                dict(zip(item_sql.ITEM_HISTORY_FIELDS, r, strict=True))
                for r in self._select(self._q(item_sql.ITEM_HISTORY), params)
            ]
            ments = [
                dict(zip(mention_sql.HISTORY_FIELDS, r, strict=True))
                for r in self._select(self._q(mention_sql.MENTION_HISTORY), params)
            ]
        for d in items:
            d["event_time"] = _as_utc(d["event_time"])
        for d in ments:
            d["event_time"] = _as_utc(d["event_time"])
            d["entity_id"] = d["entity_id"] or None
            d["relevance"] = int(d["relevance"])
            for k in ("p_negative", "p_neutral", "p_positive"):
                d[k] = float(d[k])
        return items, ments

    # --- re-scoring and the score history (finsent.stream.rescore, ``finsent query compare``) ----------
    def rescore_page(self, lo: int, hi: int, after: tuple[int, str], topic: str | None, limit: int) -> list[tuple]:
        """Up to ``limit`` newest-version ``items`` rows (:data:`encoding.ITEM_NAMES` order) ingested in
        [lo, hi) (epoch seconds) after the cursor ``after`` = (ingested_at seconds, id), in that order."""
        params = {
            "lo": int(lo),
            "hi": int(hi),
            "after_at": int(after[0]),
            "after_id": after[1],
            "any_topic": 1 if topic is None else 0,
            "topic": topic or "",
            "limit": max(1, int(limit)),
        }
        with self._lock:
            return self._select(self._q(score_sql.RESCORE_PAGE), params)

    def rescore_total(self, lo: int, hi: int, topic: str | None) -> int:
        params = {"lo": int(lo), "hi": int(hi), "any_topic": 1 if topic is None else 0, "topic": topic or ""}
        with self._lock:
            return int(self._select(self._q(score_sql.RESCORE_TOTAL), params)[0][0])

    def insert_score_history(self, rows: Sequence[tuple[Any, ...]]) -> int:
        """Write ``scores`` rows (:data:`encoding.SCORE_COLUMNS` order): the score history ``rescore`` keeps
        (an item's score before and after); idempotent per (id, model_version)."""
        with self._lock:
            for chunk in _chunks(rows, self.insert_batch_rows):
                self._insert(f"{self.database}.{ddl.SCORES}", encoding.SCORE_COLUMNS, chunk)
        return len(rows)

    def compare_versions(self, a: str, b: str, since: timedelta | None = None) -> list[dict[str, Any]]:
        """Per topic (as version ``a`` assigned it): items scored by both versions, negatives under each."""
        params = {"a": a, "b": b, "since": since_epoch(since)}
        with self._lock:
            rows = self._select(self._q(score_sql.COMPARE_VERSIONS), params)
        return [
            {"topic": t, "items": int(n), "negative_a": int(na), "negative_b": int(nb), "topic_changed": int(tc)}
            for t, n, na, nb, tc in rows
        ]

    def score_versions(self, since: timedelta | None = None) -> dict[str, int]:
        """Items in the score history per model version."""
        with self._lock:
            rows = self._select(self._q(score_sql.SCORE_VERSIONS), {"since": since_epoch(since)})
        return {str(v): int(n) for v, n in rows}

    # --- human labels, the annotation queue, drift ------------------------------------------------
    def insert_labels(self, labels: Sequence[Label]) -> int:
        """Write corrections; the newest per (task, id) is what :meth:`labels` returns afterwards."""
        if not labels:
            return 0
        bad = sorted({lbl.task for lbl in labels} - set(LABEL_TASKS))
        if bad:
            raise ValueError(f"label task(s) {', '.join(bad)}: use one of {', '.join(LABEL_TASKS)}")
        rows = [encoding.label_row(lbl) for lbl in labels]
        with self._lock:
            for chunk in _chunks(rows, self.insert_batch_rows):
                self._insert(f"{self.database}.{ddl.LABELS}", encoding.LABEL_COLUMNS, chunk)
        return len(rows)

    def labels(self, task: str | None = None, ids: Sequence[str] | None = None) -> list[Label]:
        """The current label of every (task, id) -- what training reads -- ordered by task and id.

        ``task`` keeps one task; ``ids`` only those item ids (for the CLI's idempotency check).
        """
        with self._lock:
            if ids is not None:
                rows = [
                    r
                    for chunk in _chunks(list(dict.fromkeys(ids)), ID_LOOKUP_CHUNK)
                    for r in self._select(self._q(label_sql.LABELS_FOR_IDS), {"ids": list(chunk)})
                ]
            else:
                rows = self._select(
                    self._q(label_sql.LABELS_CURRENT), {"any_task": 1 if task is None else 0, "task": task or ""}
                )
        out = []
        for row in rows:
            d = dict(zip(label_sql.LABEL_SELECT, row, strict=True))
            if task is not None and d["task"] != task:
                continue
            at = _as_utc(d["labelled_at"]) + timedelta(milliseconds=int(d["labelled_ms"]))
            out.append(
                Label(
                    id=d["id"],
                    task=d["task"],
                    label=d["label"],
                    text=d["text"],
                    old_label=d["old_label"],
                    by=d["labelled_by"],
                    at=at,
                    note=d["note"],
                    origin=d["origin"],
                )
            )
        return sorted(out, key=lambda lbl: (lbl.task, lbl.id))

    def items_by_id(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The current row (id, sentiment, topic, text, model_version) of each stored id; unknown ids are absent."""
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            for chunk in _chunks(list(dict.fromkeys(ids)), ID_LOOKUP_CHUNK):
                for row in self._select(self._q(item_sql.ITEMS_BY_ID), {"ids": list(chunk)}):
                    out[row[0]] = dict(zip(("id", "sentiment", "topic", "text", "model_version"), row, strict=True))
        return out

    def label_queue(
        self,
        limit: int,
        since: timedelta | None = None,
        task: str = "sentiment",
        strategy: str = "uncertain",
        seed: int = 0,
    ) -> list[dict[str, Any]]:
        """Stored items (ingested in the last ``since``) that have no ``task`` label, most in need first.

        ``uncertain``: least confident first, uncertainty = 1 - the top probability of the task's head
        (``priority`` in each row; ties by id). ``random``: a sample ordered by a hash of the id and
        ``seed``, the same on every run and engine for the same seed and store.
        """
        if (strategy, task) not in label_sql.QUEUE_ORDER:
            raise ValueError(f"queue strategy {strategy!r} / task {task!r}: use uncertain|random and sentiment|topic")
        params: dict[str, Any] = {"since": since_epoch(since), "task": task, "limit": max(0, int(limit))}
        if strategy == "random":
            params["seed"] = str(int(seed))
        with self._lock:
            rows = self._select(self._q(label_sql.label_queue_query(strategy, task)), params)
        out = []
        for row in rows:
            d = dict(zip((*label_sql.QUEUE_COLUMNS, "priority"), row, strict=True))
            d["ingested_at"] = _as_utc(d["ingested_at"])
            for k in ("p_negative", "p_neutral", "p_positive", "topic_prob"):
                d[k] = round(float(d[k]), 6)
            d["priority"] = round(float(d["priority"]), 6) if strategy == "uncertain" else int(d["priority"])
            out.append(d)
        return out

    def model_version_counts(self, since: datetime, until: datetime) -> list[tuple[str, int]]:
        """(model_version, items) of the items ingested in [since, until), as they are scored now; most first."""
        with self._lock:
            rows = self._select(
                self._q(drift_sql.MODEL_VERSION_COUNTS), {"since": _epoch(since), "until": _epoch(until)}
            )
        return [(str(v), int(n)) for v, n in rows]

    def prediction_stats(
        self, since: datetime, split: datetime, until: datetime, model_version: str, low_confidence: float
    ) -> list[dict[str, Any]]:
        """Counts of ``model_version``'s current predictions per (period, sentiment, topic).

        ``recent`` is True for [split, until) and False for [since, split); ``confidence`` sums the top
        sentiment probabilities, ``low`` counts those below ``low_confidence``.
        """
        params = {
            "since": _epoch(since),
            "split": _epoch(split),
            "until": _epoch(until),
            "version": model_version,
            "low": float(low_confidence),
        }
        with self._lock:
            rows = self._select(self._q(drift_sql.PREDICTION_STATS), params)
        return [
            {"recent": bool(int(r)), "sentiment": s, "topic": t, "n": int(n), "confidence": float(c), "low": int(lo)}
            for r, s, t, n, c, lo in rows
        ]

    # --- the model registry's mirror (finsent models / retrain) ----------------------------------
    def sync_model_versions(self, rows: Sequence[dict[str, Any]]) -> int:
        """Rewrite ``model_versions`` from the registry's rows (one per version; newest sync wins)."""
        synced = datetime.now(UTC)
        encoded = [encoding.model_version_row(r, synced) for r in rows]
        with self._lock:
            for chunk in _chunks(encoded, self.insert_batch_rows):
                self._insert(f"{self.database}.{ddl.MODEL_VERSIONS}", encoding.MODEL_VERSION_COLUMNS, chunk)
        return len(encoded)

    def model_versions(self) -> list[dict[str, Any]]:
        """The mirrored registry: one dict per version (latest sync), ordered by version."""
        with self._lock:
            rows = self._select(self._q(registry_sql.MODEL_VERSIONS_SELECT))
        names = [name for name, _ in encoding.MODEL_VERSION_COLUMNS]
        return [{**dict(zip(names, row, strict=True)), "aliases": list(row[names.index("aliases")])} for row in rows]

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one read query. Parameters are ClickHouse ``{name:Type}`` placeholders on both engines.

        Values are bound by the engine/driver, never formatted into the text. Times come back as
        aware UTC datetimes for ``DateTime('UTC')`` columns on both engines.
        """
        with self._lock:
            return self._select(sql, params or None)

    def close(self) -> None:  # pragma: no cover - overridden
        pass

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
