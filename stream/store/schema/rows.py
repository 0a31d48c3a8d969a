"""Row encoding: every table's columns, each documented where it is declared, and the functions that turn
finsent's events into rows of them.

A column tuple is ``(name, ClickHouse type)`` in insert order: the DDL (:mod:`.ddl`) creates the table from it
and the store inserts the encoder's tuples in the same order, so one declaration serves both. The comment on a
column says what it holds; why a table is laid out as it is (engine, key, partitions) is next to its
declaration in :mod:`.ddl`.

Encoding rules, the same for every table (both engines take the values as they are):

* **Times** are epoch seconds (``DateTime('UTC')``), with a ``UInt16`` millisecond part where a table keeps
  milliseconds (18.16 has no ``DateTime64``): exact time = seconds + ms/1000. A time outside what a DateTime
  holds (1970 .. 2106) is clamped to that range, not refused (:func:`_split_ms`): a year-1900 timestamp must
  not become a poison pill that blocks the worker forever.
* **Text** that UTF-8 cannot carry (a lone UTF-16 surrogate) becomes U+FFFD (:func:`_text`).
* **Probabilities and scores** that are NaN or infinite (a model or detector bug) become 0.0 (:func:`_prob`).
* **Versions** (the ReplacingMergeTree's) are a time in epoch milliseconds: the newest write wins.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from finsent.core.events import Alert, EntityMention, ScoredItem
from finsent.core.store import Label
from finsent.models.linking import normalise_name

# --- items: one row per scored item ------------------------------------------------------------------------

#: (name, type) of ``items`` columns the store writes, in insert order. Two more columns are DEFAULTs the store
#: computes at insert (declared in :mod:`.ddl`): ``stored_at`` (now(): when the store accepted the row) and
#: ``event_time`` (ifNull(published_at, ingested_at): THE time axis of series, top lists, listings, entity
#: queries, the backtest and retention, issue 26).
ITEM_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "String"),  # stable item id (finsent.core.events.stable_id)
    ("source", "LowCardinality(String)"),  # feed / account / file the item came from
    ("source_type", "LowCardinality(String)"),  # 'news' or 'social'
    ("title", "Nullable(String)"),
    ("text", "String"),  # the (possibly truncated) text that was scored
    ("url", "Nullable(String)"),
    ("author", "Nullable(String)"),
    ("tickers", "Array(String)"),  # cashtags found in the item
    ("truncated", "UInt8"),  # 1 when text was cut to max_text_chars
    ("published_at", "Nullable(DateTime('UTC'))"),  # when the source says it was published (seconds)
    ("ingested_at", "DateTime('UTC')"),  # when finsent first saw it (seconds): counts, rescore and drift windows
    ("ingested_ms", "UInt16"),  # millisecond part of ingested_at (0..999)
    ("sentiment", "LowCardinality(String)"),  # 'negative' | 'neutral' | 'positive'
    ("p_negative", "Float32"),  # the classifier's sentiment probabilities
    ("p_neutral", "Float32"),
    ("p_positive", "Float32"),
    ("topic", "LowCardinality(String)"),  # the classifier's topic label
    ("topic_prob", "Float32"),  # its probability
    ("model_version", "LowCardinality(String)"),  # version of the model that produced this row
    ("scored_at", "DateTime('UTC')"),  # when the row was scored (seconds)
    ("scored_ms", "UInt16"),  # millisecond part of scored_at
    ("version", "UInt64"),  # scored_at in epoch milliseconds: the replacing version (the newest score wins)
)
ITEM_NAMES = tuple(name for name, _ in ITEM_COLUMNS)

#: the sentiment labels, in the order topic_minute keeps a state per label
SENTIMENTS = ("negative", "neutral", "positive")

# --- topic_minute: per-topic per-minute distinct-id counts, written only by the view topic_minute_mv ---------

#: (name, type) of ``topic_minute`` columns. clickhouse-driver cannot decode ``AggregateFunction`` columns:
#: read them through the ``...Merge`` functions only.
TOPIC_MINUTE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("minute", "DateTime('UTC')"),  # toStartOfMinute(ingested_at)
    ("topic", "LowCardinality(String)"),
    # the model that scored the rows counted here; merging states across versions is a set union, so
    # ``GROUP BY minute, topic`` still counts each id once
    ("model_version", "LowCardinality(String)"),
    ("items", "AggregateFunction(uniqExact, String)"),  # read with uniqExactMerge(items)
    # negative, neutral, positive: read with uniqExactIfMerge(negative) etc.
    *((s, "AggregateFunction(uniqExactIf, String, UInt8)") for s in SENTIMENTS),
)

# --- alerts: one row per alert ------------------------------------------------------------------------------

#: (name, type) of ``alerts`` columns, in insert order.
ALERT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "String"),  # the alert's id: a re-fired alert replaces its earlier row
    ("topic", "LowCardinality(String)"),  # '' on entity alerts
    ("fired_at", "DateTime('UTC')"),
    ("window_start", "DateTime('UTC')"),
    ("window_end", "DateTime('UTC')"),
    ("negative", "UInt32"),  # negative items in the window
    ("total", "UInt32"),  # all items in the window
    ("negative_share", "Float64"),
    ("baseline_share", "Float64"),
    ("score", "Float64"),  # the detector's statistic
    ("detector", "LowCardinality(String)"),
    ("severity", "LowCardinality(String)"),
    ("model_version", "LowCardinality(String)"),  # '' unless the Alert event carries ``model_version``
    # issue 26: entity alerts (kind 'entity', topic ''); evidence is the alert's evidence dict as JSON ('' if none)
    ("kind", "LowCardinality(String)"),  # 'topic' | 'entity'
    ("entity_id", "String"),
    ("entity_name", "String"),
    ("evidence", "String"),
    ("version", "UInt64"),  # fired_at in epoch ms
)

# --- scores: the score history (finsent rescore), one row per (item, model version) --------------------------

#: (name, type) of ``scores`` columns: the score part of an ``items`` row plus what locates the item (each has
#: the meaning it has in :data:`ITEM_COLUMNS`; no text).
SCORE_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (name, dict(ITEM_COLUMNS)[name])
    for name in (
        "id",
        "ingested_at",
        "model_version",
        "sentiment",
        "p_negative",
        "p_neutral",
        "p_positive",
        "topic",
        "topic_prob",
        "scored_at",
        "version",
    )
)

# --- labels: human corrections, the newest per (task, id) ---------------------------------------------------

#: (name, type) of ``labels`` columns, in insert order.
LABEL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "String"),  # the item id, or stable_id(text) for text that is not in the store
    ("task", "LowCardinality(String)"),  # 'sentiment' | 'topic'
    ("label", "String"),  # the human's label (the new one)
    ("old_label", "String"),  # what the model had said ('' when the item is not in the store)
    ("text", "String"),  # the text labelled, copied: labels outlive the items they were made on
    ("labelled_by", "LowCardinality(String)"),
    ("labelled_at", "DateTime('UTC')"),
    ("labelled_ms", "UInt16"),  # millisecond part of labelled_at
    ("note", "String"),
    ("origin", "LowCardinality(String)"),  # 'cli' or 'import:<file name>'
    ("version", "UInt64"),  # labelled_at in epoch ms: the newest correction wins
)

# --- model_versions: the model registry's mirror ------------------------------------------------------------

#: (name, type) of ``model_versions`` columns, in insert order.
MODEL_VERSION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("version", "String"),  # v0003-1a2b3c4d
    ("parent", "String"),  # the production it was fine-tuned from ('' for the first)
    ("created_at", "DateTime('UTC')"),
    ("source", "String"),  # 'retrain', 'register (path)', 'initial (path)'
    ("data_fingerprint", "String"),
    ("gate_decision", "String"),  # 'promote' | 'reject' | '' (registered by hand)
    ("gate", "String"),  # the gate's JSON: per frozen set numbers, reasons, thresholds
    ("metrics", "String"),  # frozen-set metrics JSON
    ("aliases", "Array(String)"),  # ['production'], ['candidate'], both or none, as of `synced`
    ("export_version", "String"),  # the name the exporter gave the model before registration
    ("registry", "String"),  # the registry directory
    ("synced", "UInt64"),  # epoch ms of the sync that wrote the row: the newest wins
)

# --- mentions: one row per (item, entity) -------------------------------------------------------------------

#: a stored key of an unlinked entity: ``name:`` + its normalised name
NAME_PREFIX = "name:"
#: what a mention gets when nobody computed its novelty: a first telling
DEFAULT_NOVELTY = 100

#: (name, type) of ``mentions`` columns, in insert order, with what each means.
MENTION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("item_id", "String"),  # the item's stable id (items.id)
    ("entity_key", "String"),  # entity_id, else 'name:<normalised name>' (entity_key())
    ("entity_id", "String"),  # the linker's canonical id, '' when unlinked
    ("name", "String"),  # canonical name when linked, else the normalised surface name
    ("surface", "String"),  # the span's text as it appears in the scored text (first mention)
    ("sentiment", "LowCardinality(String)"),  # the span's sentiment: negative | neutral | positive
    ("p_negative", "Float32"),  # the span's probabilities
    ("p_neutral", "Float32"),
    ("p_positive", "Float32"),
    ("relevance", "UInt8"),  # 0-100: where and how often the entity appears (models/README)
    ("novelty", "UInt8"),  # 0-100: 100 = first telling of the story for this entity (caller's; default 100)
    ("cluster_id", "String"),  # story cluster id (caller's; '' = not computed)
    ("event_time", "DateTime('UTC')"),  # the item's event time: published_at, else ingested_at
    ("ingested_at", "DateTime('UTC')"),  # when finsent first saw the item
    ("source", "LowCardinality(String)"),  # the item's source
    ("topic", "LowCardinality(String)"),  # the item's topic (as scored with this version)
    ("model_version", "LowCardinality(String)"),  # the model that found the span
    ("deleted", "UInt8"),  # 1: a rescore no longer finds this entity in the item (a tombstone)
    ("version", "UInt64"),  # scored_at in epoch ms: the newest score of the (item, entity) wins
)
MENTION_NAMES = tuple(name for name, _ in MENTION_COLUMNS)


# --- value encoding -----------------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: DateTime is a UInt32 of epoch seconds: 1970-01-01 .. 2106-02-07.
MAX_DATETIME_S = 2**32 - 1


def _split_ms(ts: datetime) -> tuple[int, int, int]:
    """(epoch seconds, millisecond part, epoch milliseconds), in exact integer arithmetic.

    DateTime columns are written as epoch seconds: both clickhouse-driver and chdb's JSON input
    take them as-is, with no time-zone conversion to get wrong (and no per-value cost). Times
    outside what a DateTime holds are clamped to its range (1970 .. 2106) rather than failing the
    whole batch: a message with a year-1900 timestamp must not become a poison pill that blocks
    the worker forever.
    """
    if ts.tzinfo is None:
        raise ValueError("naive datetime: finsent timestamps must be timezone-aware")
    delta = ts - _EPOCH
    seconds = delta.days * 86_400 + delta.seconds
    ms = delta.microseconds // 1000
    if not 0 <= seconds <= MAX_DATETIME_S:
        seconds, ms = min(max(seconds, 0), MAX_DATETIME_S), 0
    return seconds, ms, seconds * 1000 + ms


def _text(value: str | None) -> str | None:
    """Text both engines can carry: lone UTF-16 surrogates (valid in JSON escapes, invalid in UTF-8)
    become U+FFFD instead of failing the batch with UnicodeEncodeError."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def _prob(value: Any) -> float:
    """A float the store can hold in every engine: NaN/inf (a model or detector bug) become 0.0."""
    f = float(value)
    return f if math.isfinite(f) else 0.0


# --- rows ---------------------------------------------------------------------------------------------------


def scored_row(s: ScoredItem) -> tuple[Any, ...]:
    """One ``items`` row (in :data:`ITEM_COLUMNS` order) from a scored item; times as epoch seconds."""
    it = s.item
    ingested, ingested_ms, _ = _split_ms(it.ingested_at)
    scored, scored_ms, version = _split_ms(s.scored_at)
    published = _split_ms(it.published_at)[0] if it.published_at is not None else None
    probs = s.sentiment_probs
    return (
        _text(it.id),
        _text(it.source),
        it.source_type,
        _text(it.title),
        _text(it.text),
        _text(it.url),
        _text(it.author),
        [_text(t) for t in it.tickers],
        1 if it.truncated else 0,
        published,
        ingested,
        ingested_ms,
        _text(s.sentiment),
        _prob(probs.get("negative", 0.0)),
        _prob(probs.get("neutral", 0.0)),
        _prob(probs.get("positive", 0.0)),
        _text(s.topic),
        _prob(s.topic_prob),
        _text(s.model_version),
        scored,
        scored_ms,
        version,
    )


def alert_row(a: Alert) -> tuple[Any, ...]:
    """One ``alerts`` row (in :data:`ALERT_COLUMNS` order)."""
    fired, _, version = _split_ms(a.fired_at)
    return (
        _text(a.id),
        _text(a.topic),
        fired,
        _split_ms(a.window_start)[0],
        _split_ms(a.window_end)[0],
        min(max(0, int(a.negative)), 2**32 - 1),
        min(max(0, int(a.total)), 2**32 - 1),
        _prob(a.negative_share),
        _prob(a.baseline_share),
        _prob(a.score),
        _text(a.detector),
        _text(a.severity),
        _text(str(getattr(a, "model_version", "") or "")),
        _text(a.kind or "topic"),
        _text(a.entity_id or ""),
        _text(a.entity_name or ""),
        # default=str and NaN allowed: an odd value in the evidence must not fail the batch (Python reads NaN back)
        _text(json.dumps(a.evidence, ensure_ascii=False, default=str) if a.evidence else ""),
        version,
    )


def score_history_row(item_row: Sequence[Any]) -> tuple[Any, ...]:
    """The ``scores`` row (in :data:`SCORE_COLUMNS` order) of an ``items`` row (:data:`ITEM_NAMES` order),
    as read back (times as datetimes) or as :func:`scored_row` encodes it: how ``rescore`` records scores."""
    d = dict(zip(ITEM_NAMES, item_row, strict=True))
    return tuple(_split_ms(v)[0] if isinstance(v, datetime) else v for v in (d[name] for name, _ in SCORE_COLUMNS))


def score_row(s: ScoredItem) -> tuple[Any, ...]:
    """The ``scores`` row of a scored item."""
    return score_history_row(scored_row(s))


def label_row(lbl: Label) -> tuple[Any, ...]:
    """One ``labels`` row (in :data:`LABEL_COLUMNS` order)."""
    at, ms, version = _split_ms(lbl.at)
    return (
        _text(lbl.id),
        lbl.task,
        _text(lbl.label),
        _text(lbl.old_label),
        _text(lbl.text),
        _text(lbl.by),
        at,
        ms,
        _text(lbl.note),
        _text(lbl.origin),
        version,
    )


def model_version_row(row: dict[str, Any], synced: datetime) -> tuple[Any, ...]:
    """One ``model_versions`` row (:data:`MODEL_VERSION_COLUMNS` order) from a registry mirror dict."""
    try:
        created = datetime.fromisoformat(row.get("created_at") or "").astimezone(UTC)
    except ValueError:
        created = synced
    values = {**row, "created_at": _split_ms(created)[0], "synced": _split_ms(synced)[2]}
    return tuple(
        values[name] if name in ("created_at", "synced", "aliases") else _text(str(values.get(name) or ""))
        for name, _ in MODEL_VERSION_COLUMNS
    )


def entity_key(entity_id: str | None, name: str) -> str:
    """The stored key of an entity: its id when linked, else ``name:`` + its normalised name.

    Stable, distinct from every id (ids never start with ``name:``), and what ``finsent query entity`` resolves a
    name, ticker or id to. The entity detector keys unlinked names as ``~<name>`` (:func:`detector_key`)."""
    if entity_id:
        return entity_id
    return NAME_PREFIX + (normalise_name(name) or name.strip().casefold())


def detector_key(stored_key: str) -> str:
    """The entity detector's key (``~name`` for unlinked) of a stored key."""
    return "~" + stored_key[len(NAME_PREFIX) :] if stored_key.startswith(NAME_PREFIX) else stored_key


def event_time_of(s: ScoredItem) -> Any:
    """The item's event time: ``published_at``, else ``ingested_at``."""
    return s.item.published_at or s.item.ingested_at


def _mentions_by_key(entities: Iterable[EntityMention]) -> dict[str, EntityMention]:
    """One mention per entity key: the first (the linker already gives one per entity; a defect must not
    write two rows that replace each other at random)."""
    out: dict[str, EntityMention] = {}
    for e in entities:
        out.setdefault(entity_key(e.entity_id, e.name), e)
    return out


def mention_rows(
    s: ScoredItem,
    stories: Mapping[str, tuple[int, str]] | None = None,
    old_keys: Iterable[str] = (),
) -> list[tuple[Any, ...]]:
    """The ``mentions`` rows (:data:`MENTION_COLUMNS` order) of one scored item.

    ``stories`` maps an entity key to (novelty, cluster id) when the caller computed them; ``old_keys`` are the
    keys stored for this item before (a rescore): those no longer found get a tombstone row.
    """
    it = s.item
    event = _split_ms(event_time_of(s))[0]
    ingested = _split_ms(it.ingested_at)[0]
    version = _split_ms(s.scored_at)[2]
    common = (event, ingested, _text(it.source), _text(s.topic), _text(s.model_version))
    rows = []
    found = _mentions_by_key(s.entities)
    for key, e in found.items():
        novelty, cluster = (stories or {}).get(key, (DEFAULT_NOVELTY, ""))
        p = e.sentiment_probs
        rows.append(
            (
                _text(it.id),
                _text(key),
                _text(e.entity_id or ""),
                _text(e.name),
                _text(e.text),
                _text(e.sentiment),
                _prob(p.get("negative", 0.0)),
                _prob(p.get("neutral", 0.0)),
                _prob(p.get("positive", 0.0)),
                min(100, max(0, int(e.relevance))),
                min(100, max(0, int(novelty))),
                _text(cluster),
                *common,
                0,
                version,
            )
        )
    for key in sorted(set(old_keys) - set(found)):
        name = key[len(NAME_PREFIX) :] if key.startswith(NAME_PREFIX) else ""
        rows.append(
            (
                _text(it.id),
                _text(key),
                "" if name else key,
                name,
                "",
                "neutral",
                0.0,
                0.0,
                0.0,
                0,
                0,
                "",
                *common,
                1,
                version,
            )
        )
    return rows
