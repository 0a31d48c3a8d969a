"""Queries of re-scoring and the score history (``finsent rescore``, ``finsent query compare``): pages of
``items`` to score again, and the per-version comparison read from ``scores``.
"""

from __future__ import annotations

from finsent.stream.store.schema.rows import ITEM_NAMES

# One page of the items a re-score walks, in (ingested_at, id) order after the cursor, within a
# time slice [lo, hi). The topic filter applies after FINAL picked the
# newest row (the topic is a label a re-score can change).
RESCORE_PAGE = f"""
SELECT {", ".join(ITEM_NAMES)}
FROM (
    SELECT {", ".join(ITEM_NAMES)} FROM {{db}}.items FINAL
    WHERE ingested_at >= toDateTime({{lo:UInt32}}, 'UTC') AND ingested_at < toDateTime({{hi:UInt32}}, 'UTC')
      AND (ingested_at > toDateTime({{after_at:UInt32}}, 'UTC')
           OR (ingested_at = toDateTime({{after_at:UInt32}}, 'UTC') AND id > {{after_id:String}}))
)
WHERE {{any_topic:UInt8}} = 1 OR topic = {{topic:String}}
ORDER BY ingested_at, id
LIMIT {{limit:UInt32}}"""

RESCORE_TOTAL = """
SELECT count() FROM (
    SELECT topic FROM {db}.items FINAL
    WHERE ingested_at >= toDateTime({lo:UInt32}, 'UTC') AND ingested_at < toDateTime({hi:UInt32}, 'UTC')
)
WHERE {any_topic:UInt8} = 1 OR topic = {topic:String}"""

# Per-topic negative share of the SAME items under versions a and b: only ids scored by both count,
# and each row is a topic as version a assigned it, so both shares of a row cover the same items
# (topic_changed: how many of them version b put in another topic). One GROUP BY, no JOIN: 18.16's
# JOINs need an explicit strictness and are slow on big right-hand sides.
COMPARE_VERSIONS = """
SELECT topic_a AS topic, count() AS items,
       countIf(sentiment_a = 'negative') AS negative_a,
       countIf(sentiment_b = 'negative') AS negative_b,
       countIf(topic_b != topic_a) AS topic_changed
FROM (
    SELECT toStartOfDay(ingested_at) AS day, id,
           anyIf(toString(topic), model_version = {a:String}) AS topic_a,
           anyIf(toString(sentiment), model_version = {a:String}) AS sentiment_a,
           anyIf(toString(topic), model_version = {b:String}) AS topic_b,
           anyIf(toString(sentiment), model_version = {b:String}) AS sentiment_b,
           uniqExact(model_version) AS versions
    FROM {db}.scores FINAL
    WHERE ingested_at >= toDateTime({since:UInt32}, 'UTC')
      AND (model_version = {a:String} OR model_version = {b:String})
    GROUP BY day, id
    HAVING versions = 2
)
GROUP BY topic
ORDER BY items DESC, topic"""

# How many items each model version has scored (the history), to say which versions exist.
SCORE_VERSIONS = """
SELECT toString(model_version) AS v, count() AS n FROM {db}.scores FINAL
WHERE ingested_at >= toDateTime({since:UInt32}, 'UTC')
GROUP BY v ORDER BY v"""
