"""Queries of ``mentions``: per-entity series, top entities, an entity's stories, the backtest's history.

Every query reads ``mentions FINAL`` and filters ``deleted = 0`` *after* FINAL picked the newest row (a rescore's
tombstone, :func:`~.rows.mention_rows`). Windows are on event time. ``{db}`` is formatted in once; values are
``{name:Type}`` parameters.
"""

from __future__ import annotations

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
# ``novel`` counts only mean something where a caller stored novelty (the store cannot compute it: see ``mentions``
# in :mod:`.ddl`)
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
    "model_version",  # the version that found the span: what a backtest alert carries, as a live one does
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
