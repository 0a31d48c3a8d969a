"""Queries of ``items``: counts, topic series, top negative items, the items listing and the backtest's read.

``{db}`` is formatted in once (:func:`~.ddl.render`); values are always ``{name:Type}`` parameters. A filter on
``ingested_at`` next to FINAL sees at most one row per id either way (an id that arrived on several days has one
row per arrival before FINAL; whichever are in the window, FINAL keeps one), so counts never double; filters on
labels that a re-score can change (sentiment, topic) must be applied *after* FINAL picked the newest row, hence
the subqueries below. Series, top lists and listings are on EVENT time (issue 26): a replay of last month lands in
last month's buckets. Counts stay on ``ingested_at``: they are about what finsent received.
"""

from __future__ import annotations

from finsent.stream.store.schema.mentions import ITEMS_OF_ENTITY

COUNT_FINAL = "SELECT count() FROM {db}.items FINAL WHERE ingested_at >= toDateTime({since:UInt32}, 'UTC')"
COUNT_PHYSICAL = "SELECT count() FROM {db}.items WHERE ingested_at >= toDateTime({since:UInt32}, 'UTC')"
COUNT_UNIQUE = "SELECT uniqExact(id) FROM {db}.items WHERE ingested_at >= toDateTime({since:UInt32}, 'UTC')"

TOPIC_COUNTS = """
SELECT toDateTime(intDiv(toUInt32(event_time), {bucket:UInt32}) * {bucket:UInt32}, 'UTC') AS bucket,
       topic,
       count() AS total,
       countIf(sentiment = 'negative') AS negative,
       countIf(sentiment = 'neutral') AS neutral,
       countIf(sentiment = 'positive') AS positive
FROM (
    SELECT event_time, topic, sentiment FROM {db}.items FINAL
    WHERE event_time >= toDateTime({since:UInt32}, 'UTC') AND event_time < toDateTime({until:UInt32}, 'UTC')
)
GROUP BY bucket, topic
ORDER BY bucket, topic"""

#: the same counts from the pre-aggregated ``topic_minute`` (cheap; not exact under re-scoring, see :mod:`.ddl`)
TOPIC_MINUTE_COUNTS = """
SELECT minute, topic, uniqExactMerge(items) AS total, uniqExactIfMerge(negative) AS negative,
       uniqExactIfMerge(neutral) AS neutral, uniqExactIfMerge(positive) AS positive
FROM {db}.topic_minute
WHERE minute >= toDateTime({since:UInt32}, 'UTC')
GROUP BY minute, topic
ORDER BY minute, topic"""

NEGATIVE_COLUMNS = (
    "id",
    "event_time",
    "ingested_at",
    "ingested_ms",
    "topic",
    "topic_prob",
    "sentiment",
    "p_negative",
    "source",
    "source_type",
    "title",
    "text",
    "url",
    "tickers",
    "model_version",
)

TOP_NEGATIVE = f"""
SELECT {", ".join(NEGATIVE_COLUMNS)}
FROM (
    SELECT {", ".join(NEGATIVE_COLUMNS)} FROM {{db}}.items FINAL
    WHERE event_time >= toDateTime({{since:UInt32}}, 'UTC')
)
WHERE sentiment = 'negative' AND ({{any_topic:UInt8}} = 1 OR topic = {{topic:String}})
ORDER BY event_time DESC, ingested_at DESC, ingested_ms DESC, id
LIMIT {{limit:UInt32}}"""

#: the current row of some items (the label CLI's old label and text); has() and not IN: an Array parameter
#: works the same on 18.16 (client-side) and chdb (bound)
ITEMS_BY_ID = """
SELECT id, sentiment, topic, text, model_version FROM {db}.items FINAL
WHERE has({ids:Array(String)}, id)"""

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
