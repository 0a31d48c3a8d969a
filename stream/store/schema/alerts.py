"""Queries of ``alerts`` (``{db}`` formatted in once; values are ``{name:Type}`` parameters)."""

from __future__ import annotations

from finsent.stream.store.schema.rows import ALERT_COLUMNS

ALERT_SELECT_COLUMNS = tuple(name for name, _ in ALERT_COLUMNS if name != "version")

#: one row per alert id (the newest), newest first
ALERTS_SINCE = f"""
SELECT {", ".join(ALERT_SELECT_COLUMNS)}
FROM {{db}}.alerts FINAL
WHERE fired_at >= toDateTime({{since:UInt32}}, 'UTC')
ORDER BY fired_at DESC, id"""

#: the evidence of a topic alert (issue 25): the most negative items of ``topic`` ingested in the alert's window
#: [start, end) (the detector counts windows of ingested_at) and, next, the model versions that scored the window
TOPIC_ALERT_HEADLINE_COLUMNS = ("id", "title", "url", "source", "event_time", "p_negative")
TOPIC_ALERT_HEADLINES = """
SELECT id, ifNull(title, substring(text, 1, 200)) AS title, ifNull(url, '') AS url, source, event_time, p_negative
FROM (
    SELECT id, title, text, url, source, event_time, p_negative, sentiment, topic FROM {db}.items FINAL
    WHERE ingested_at >= toDateTime({start:UInt32}, 'UTC') AND ingested_at < toDateTime({end:UInt32}, 'UTC')
)
WHERE topic = {topic:String} AND sentiment = 'negative'
ORDER BY p_negative DESC, event_time DESC, id
LIMIT {limit:UInt32}"""

TOPIC_ALERT_VERSIONS = """
SELECT toString(model_version) AS v, count() AS n
FROM (
    SELECT model_version, topic FROM {db}.items FINAL
    WHERE ingested_at >= toDateTime({start:UInt32}, 'UTC') AND ingested_at < toDateTime({end:UInt32}, 'UTC')
)
WHERE topic = {topic:String}
GROUP BY v
ORDER BY n DESC, v"""
