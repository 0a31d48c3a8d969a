"""Mentions: one row per (item, entity), what per-entity series, top lists, listings and the backtest read.

The issue-23 direction: this feature's DDL, row encoding and queries live together here, declared into the one
schema (:func:`finsent.stream.store.schema.declare_table`), so the single-node DDL, the cluster DDL
(``<name>_local`` + Distributed), TTL and the column migration of :mod:`~finsent.stream.store.schema` cover it
with no further work. Importing :mod:`finsent.stream.store.schema` imports this module (its last line).

``mentions`` (ReplacingMergeTree(version), no PARTITION BY, ORDER BY (entity_key, item_id), TTL on event_time)
------------------------------------------------------------------------------------------------------------
The columns are documented next to :data:`MENTION_COLUMNS`. Why this layout:

* **Idempotent by (item id, entity key), whatever the days.** A ReplacingMergeTree collapses equal sorting keys
  only within one partition, so there is ONE partition (as for ``items``, issue 22): a mention redelivered,
  replayed tomorrow or re-scored next month is one row under ``FINAL``, the highest ``version`` (scored_at in
  epoch ms: the newest score wins).
* **Fast per entity.** The sorting key starts with ``entity_key``: an entity's series, top stories and the items
  listing by entity read only that key's granules, whatever the number of entities (the top few thousand are
  as cheap as one). ``query top --by entity`` and the backtest read the window; they scan.
* **Rescore rewrites mentions.** ``insert_scored`` writes an item's mentions with the item, in the same call;
  a re-score writes new rows with a higher version. An entity the new model no longer finds would keep its old
  row, so :meth:`~finsent.stream.store.sqlstore.SqlStore.insert_scored` with ``replace_mentions=True`` (what
  ``finsent rescore`` passes) writes a tombstone (``deleted = 1``) for it; every query filters ``deleted = 0``
  *after* ``FINAL`` picked the newest row. The worker does not look old keys up (one more query per batch);
  a redelivery scored by a hot-reloaded model can so leave an entity the new model dropped until the next
  rescore.
* **Novelty and cluster are the caller's.** Story clusters and novelty (``finsent.alerts.novelty``) sit in the
  alerts layer, above ``stream``; stages import downwards only, so the store cannot compute them at insert.
  ``novelty`` is 100 (novel) and ``cluster_id`` '' (unknown) unless the caller passes them
  (:func:`mention_rows` ``stories``); the backtest (``finsent alerts backtest``, :mod:`finsent.alerts.backtest`)
  recomputes both from the stored items in event-time order, which is also what the live detector does, so the
  two agree. ``novel`` counts in :data:`ENTITY_SERIES` are therefore only meaningful where a caller stored
  novelty.
* **Entity key.** The linked id (``AAPL``, ``X:BTC``), else ``name:<normalised name>`` (``name:ftx``): stable,
  distinct from every id (ids never start with ``name:``), and what ``finsent query entity`` resolves a name,
  ticker or id to (:func:`entity_key`). The detector keys unlinked names as ``~<name>``
  (:func:`finsent.alerts.entity_detector.entity_key`); the backtest maps one to the other.
* **Event time** is the item's: ``published_at``, else ``ingested_at`` (``items.event_time``), copied here so
  entity queries need no join. Cluster mode: the shard key is ``cityHash64(item_id)`` (an ORDER BY column, so
  every version of a mention meets on one shard); the ``IN`` subquery of the items listing by entity is local,
  so on a cluster it needs ``distributed_product_mode`` set (not done here).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from finsent.core.events import EntityMention, ScoredItem
from finsent.models.linking import normalise_name
from finsent.stream.store import schema

MENTIONS = "mentions"
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

schema.declare_table(
    schema.TableSpec(
        MENTIONS,
        MENTION_COLUMNS,
        "ReplacingMergeTree(version)",
        order_by="(entity_key, item_id)",
        partition_by=None,
        ttl_column="event_time",
        shard_key="cityHash64(item_id)",
    )
)


def entity_key(entity_id: str | None, name: str) -> str:
    """The stored key of an entity: its id when linked, else ``name:`` + its normalised name."""
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
    event = schema._split_ms(event_time_of(s))[0]
    ingested = schema._split_ms(it.ingested_at)[0]
    version = schema._split_ms(s.scored_at)[2]
    common = (event, ingested, schema._text(it.source), schema._text(s.topic), schema._text(s.model_version))
    rows = []
    found = _mentions_by_key(s.entities)
    for key, e in found.items():
        novelty, cluster = (stories or {}).get(key, (DEFAULT_NOVELTY, ""))
        p = e.sentiment_probs
        rows.append(
            (
                schema._text(it.id),
                schema._text(key),
                schema._text(e.entity_id or ""),
                schema._text(e.name),
                schema._text(e.text),
                schema._text(e.sentiment),
                schema._prob(p.get("negative", 0.0)),
                schema._prob(p.get("neutral", 0.0)),
                schema._prob(p.get("positive", 0.0)),
                min(100, max(0, int(e.relevance))),
                min(100, max(0, int(novelty))),
                schema._text(cluster),
                *common,
                0,
                version,
            )
        )
    for key in sorted(set(old_keys) - set(found)):
        name = key[len(NAME_PREFIX) :] if key.startswith(NAME_PREFIX) else ""
        rows.append(
            (
                schema._text(it.id),
                schema._text(key),
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


# --- queries (``{db}`` is formatted in once; values are ``{name:Type}`` parameters) ---------------------------

#: the current (newest, not deleted) mentions of one entity in [since, until) of event time
_ENTITY_WINDOW = """
    SELECT {cols} FROM {{db}}.mentions FINAL
    WHERE entity_key = {{key:String}}
      AND event_time >= toDateTime({{since:UInt32}}, 'UTC') AND event_time < toDateTime({{until:UInt32}}, 'UTC')"""
#: the current mentions of all entities in [since, until) of event time
_ALL_WINDOW = """
    SELECT {cols} FROM {{db}}.mentions FINAL
    WHERE event_time >= toDateTime({{since:UInt32}}, 'UTC') AND event_time < toDateTime({{until:UInt32}}, 'UTC')"""

# relevance-weighted net sentiment in [-1, 1]: sum(rel * (pos - neg)) / sum(rel), labels as +1/0/-1 (as the
# entity detector's series); 0 where every mention has relevance 0
_NET = (
    "if(sum(relevance) = 0, 0, sum(relevance * multiIf(sentiment = 'positive', 1, sentiment = 'negative', "
    "-1, 0)) / sum(relevance))"
)
_COUNTS = f"""count() AS buzz,
       countIf(sentiment = 'negative') AS negative,
       countIf(sentiment = 'neutral') AS neutral,
       countIf(sentiment = 'positive') AS positive,
       countIf(novelty >= 100) AS novel,
       countIf(novelty >= 100 AND sentiment = 'negative') AS novel_negative,
       {_NET} AS net_sentiment,
       uniqExact(source) AS sources"""
SERIES_FIELDS = (
    "bucket",
    "buzz",
    "negative",
    "neutral",
    "positive",
    "novel",
    "novel_negative",
    "net_sentiment",
    "sources",
)

ENTITY_SERIES = f"""
SELECT toDateTime(intDiv(toUInt32(event_time), {{bucket:UInt32}}) * {{bucket:UInt32}}, 'UTC') AS bucket,
       {_COUNTS}
FROM ({_ENTITY_WINDOW.format(cols="event_time, sentiment, relevance, novelty, source, deleted")}
)
WHERE deleted = 0
GROUP BY bucket
ORDER BY bucket"""

TOP_FIELDS = (
    "entity_key",
    "entity_id",
    "name",
    "buzz",
    "negative",
    "neutral",
    "positive",
    "novel",
    "novel_negative",
    "net_sentiment",
    "sources",
)

TOP_ENTITIES = f"""
SELECT entity_key, min(entity_id) AS entity_id, min(name) AS name,
       {_COUNTS}
FROM ({_ALL_WINDOW.format(cols="entity_key, entity_id, name, sentiment, relevance, novelty, source, deleted")}
)
WHERE deleted = 0 AND ({{any_sentiment:UInt8}} = 1 OR sentiment = {{sentiment:String}})
GROUP BY entity_key
ORDER BY buzz DESC, entity_key
LIMIT {{limit:UInt32}}"""

STORY_FIELDS = ("item_id", "event_time", "sentiment", "relevance", "novelty", "source", "name", "entity_id")

ENTITY_STORIES = f"""
SELECT item_id, event_time, sentiment, relevance, novelty, source, name, entity_id
FROM ({
    _ENTITY_WINDOW.format(cols="item_id, event_time, sentiment, relevance, novelty, source, name, entity_id, deleted")
}
)
WHERE deleted = 0
ORDER BY relevance DESC, event_time DESC, item_id
LIMIT {{limit:UInt32}}"""

#: whether any current mention carries this key (how ``query entity`` tells a stored key from a name)
KEY_EXISTS = """
SELECT count() FROM (SELECT deleted FROM {db}.mentions FINAL WHERE entity_key = {key:String}) WHERE deleted = 0"""

#: the current keys of some items (a rescore tombstones those the new score no longer finds)
KEYS_FOR_ITEMS = """
SELECT item_id, entity_key FROM (
    SELECT item_id, entity_key, deleted FROM {db}.mentions FINAL WHERE has({ids:Array(String)}, item_id)
) WHERE deleted = 0"""

HISTORY_FIELDS = (
    "item_id",
    "entity_key",
    "entity_id",
    "name",
    "surface",
    "sentiment",
    "p_negative",
    "p_neutral",
    "p_positive",
    "relevance",
    "event_time",
)

#: every current mention in [since, until) of event time, for the backtest (grouped by item there)
MENTION_HISTORY = f"""
SELECT {", ".join(HISTORY_FIELDS)}
FROM ({_ALL_WINDOW.format(cols=", ".join((*HISTORY_FIELDS, "deleted")))}
)
WHERE deleted = 0
ORDER BY event_time, item_id, entity_key"""

#: item ids of the entity's current mentions (the items listing's entity filter, as an IN subquery)
ITEMS_OF_ENTITY = """(SELECT item_id FROM (
        SELECT item_id, deleted FROM {db}.mentions FINAL WHERE entity_key = {key:String}) WHERE deleted = 0)"""

__all__ = [
    "DEFAULT_NOVELTY",
    "ENTITY_SERIES",
    "ENTITY_STORIES",
    "HISTORY_FIELDS",
    "ITEMS_OF_ENTITY",
    "KEYS_FOR_ITEMS",
    "KEY_EXISTS",
    "MENTIONS",
    "MENTION_COLUMNS",
    "MENTION_HISTORY",
    "MENTION_NAMES",
    "NAME_PREFIX",
    "SERIES_FIELDS",
    "STORY_FIELDS",
    "TOP_ENTITIES",
    "TOP_FIELDS",
    "detector_key",
    "entity_key",
    "event_time_of",
    "mention_rows",
]


# --- items listing and the backtest's read (items, on event time) -------------------------------------------

LIST_FIELDS = (
    "id",
    "event_time",
    "published_at",
    "ingested_at",
    "source",
    "source_type",
    "title",
    "text",
    "url",
    "tickers",
    "sentiment",
    "p_negative",
    "p_neutral",
    "p_positive",
    "topic",
    "topic_prob",
    "model_version",
)

#: newest first; the entity filter reads the entity's key range of ``mentions``; topic and sentiment apply after
#: FINAL picked the newest score (a re-score can change both)
ITEMS_LIST = f"""
SELECT {", ".join(LIST_FIELDS)}
FROM (
    SELECT {", ".join(LIST_FIELDS)} FROM {{db}}.items FINAL
    WHERE event_time >= toDateTime({{since:UInt32}}, 'UTC') AND event_time < toDateTime({{until:UInt32}}, 'UTC')
      AND ({{any_entity:UInt8}} = 1 OR id IN {ITEMS_OF_ENTITY})
)
WHERE ({{any_topic:UInt8}} = 1 OR topic = {{topic:String}})
  AND ({{any_sentiment:UInt8}} = 1 OR sentiment = {{sentiment:String}})
ORDER BY event_time DESC, id
LIMIT {{limit:UInt32}}"""

ITEM_HISTORY_FIELDS = ("id", "event_time", "source", "title", "text", "url")

#: every current item in [since, until) of event time, oldest first: what the backtest feeds story clusters
ITEM_HISTORY = f"""
SELECT {", ".join(ITEM_HISTORY_FIELDS)} FROM {{db}}.items FINAL
WHERE event_time >= toDateTime({{since:UInt32}}, 'UTC') AND event_time < toDateTime({{until:UInt32}}, 'UTC')
ORDER BY event_time, id"""

#: title and url of some items (an entity's top stories)
ITEM_HEADLINES = """
SELECT id, title, text, url FROM {db}.items FINAL WHERE has({ids:Array(String)}, id)"""

__all__ += ["ITEMS_LIST", "ITEM_HEADLINES", "ITEM_HISTORY", "ITEM_HISTORY_FIELDS", "LIST_FIELDS"]
