"""Grafana dashboards and provisioning for finsent, generated here so every query lives in one place.

``finsent alerts dashboards`` writes ``deploy/grafana/``; a test checks the files are current, and
``tests/alerts/test_alerts_grafana.py`` runs every SQL query of the JSON files against the real schema on
clickhouse-server and chdb (Grafana's ClickHouse-plugin macros substituted) and every PromQL
expression against a real Prometheus.

Datasources: every panel, annotation and query variable names its datasource through an input,
``${DS_CLICKHOUSE}`` (grafana-clickhouse-datasource, native protocol) or ``${DS_PROMETHEUS}``, declared in
``__inputs``, so each file can be imported into any Grafana (Dashboards > Import asks which datasource to use). When
provisioned instead, two datasource variables of the same names resolve the inputs to the provisioned uids
``finsent-clickhouse`` and ``finsent-prometheus``.

Template variables: ``database`` (the store's database, default ``finsent``), ``topic`` (multi, with All; from the
topic_minute table), ``version_a`` / ``version_b`` (model versions from the score
history, for the "same items under two versions" panel). SQL time buckets use ``intDiv(toUInt32(t), $__interval_s)``
rather than ``$__timeInterval`` (``toStartOfInterval``) so the queries also run on ClickHouse 18.16.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finsent.stream.store import schema

#: the provisioned datasources' uids (provisioning/datasources/finsent.yml, deploy/compose/grafana/datasources.yml)
CH_UID, PROM_UID = "finsent-clickhouse", "finsent-prometheus"
#: what a panel names: an input, never a fixed uid (a fixed uid breaks every panel in a Grafana without it)
CH = {"type": "grafana-clickhouse-datasource", "uid": "${DS_CLICKHOUSE}"}
PROM = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
MIXED = {"type": "datasource", "uid": "-- Mixed --"}
DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "grafana"
TOPIC_IN = "topic IN (${topic:singlequote})"

# ---- SQL (ClickHouse plugin macros: $__timeFilter, $__fromTime, $__toTime, $__interval_s) -------------

SQL_TOPICS = "SELECT DISTINCT topic FROM ${database}.topic_minute ORDER BY topic"

SQL_NEGATIVE_SHARE = (
    """SELECT toDateTime(intDiv(toUInt32(minute), $__interval_s) * $__interval_s, 'UTC') AS time,
       topic,
       uniqExactIfMerge(negative) / uniqExactMerge(items) AS negative_share
FROM ${database}.topic_minute
WHERE $__timeFilter(minute) AND """
    + TOPIC_IN
    + """
GROUP BY time, topic
ORDER BY time, topic"""
)

SQL_SENTIMENT_COUNTS = (
    """SELECT toDateTime(intDiv(toUInt32(minute), $__interval_s) * $__interval_s, 'UTC') AS time,
       uniqExactIfMerge(negative) AS negative,
       uniqExactIfMerge(neutral) AS neutral,
       uniqExactIfMerge(positive) AS positive
FROM ${database}.topic_minute
WHERE $__timeFilter(minute) AND """
    + TOPIC_IN
    + """
GROUP BY time
ORDER BY time"""
)

SQL_HEATMAP = (
    """SELECT toDateTime(intDiv(toUInt32(minute), 3600) * 3600, 'UTC') AS time,
       topic,
       round(uniqExactIfMerge(negative) / uniqExactMerge(items), 3) AS negative_share
FROM ${database}.topic_minute
WHERE $__timeFilter(minute) AND """
    + TOPIC_IN
    + """
GROUP BY time, topic
ORDER BY time, topic"""
)

#: ``url`` is shown (and becomes the headline's link) only when it is http(s): a stored item is untrusted
#: input, and a ``javascript:`` or ``data:`` link in a dashboard would run in the viewer's browser.
#: Grafana's table renders cell text as text (no HTML), so the headline itself needs no escaping here.
SQL_TOP_NEGATIVE = (
    """SELECT ingested_at AS time, topic, ifNull(title, substring(text, 1, 200)) AS headline,
       round(p_negative, 3) AS p_negative, source,
       if(match(ifNull(url, ''), '^[Hh][Tt][Tt][Pp][Ss]?://[^[:space:]]') AND NOT match(ifNull(url, ''), '[[:space:]]'),
          ifNull(url, ''), '') AS url,
       model_version
FROM (
    SELECT ingested_at, topic, title, text, p_negative, source, url, model_version, sentiment
    FROM ${database}.items FINAL
    WHERE $__timeFilter(ingested_at) AND """
    + TOPIC_IN
    + """
)
WHERE sentiment = 'negative'
ORDER BY p_negative DESC, time DESC
LIMIT 50"""
)

SQL_ALERTS_TABLE = (
    """SELECT fired_at AS time, topic, severity, detector,
       round(negative_share, 3) AS negative_share, round(baseline_share, 3) AS baseline_share,
       negative, total, round(score, 2) AS score, window_start, window_end
FROM ${database}.alerts FINAL
WHERE $__timeFilter(fired_at) AND """
    + TOPIC_IN
    + """
ORDER BY fired_at DESC
LIMIT 200"""
)

SQL_ALERT_ANNOTATIONS = (
    """SELECT window_start AS time, window_end AS timeEnd,
       concat(severity, ' spike on ', topic, ': ', toString(round(negative_share * 100, 1)), '% negative vs ',
              toString(round(baseline_share * 100, 1)), '% baseline (', detector, ')') AS text,
       topic AS tags
FROM ${database}.alerts FINAL
WHERE $__timeFilter(window_start) AND """
    + TOPIC_IN
    + """
ORDER BY time"""
)

SQL_STORED_RATE = """SELECT toDateTime(intDiv(toUInt32(minute), $__interval_s) * $__interval_s, 'UTC') AS time,
       uniqExactMerge(items) / $__interval_s AS items_per_s
FROM ${database}.topic_minute
WHERE $__timeFilter(minute)
GROUP BY time
ORDER BY time"""

SQL_VERSIONS = "SELECT DISTINCT toString(model_version) AS v FROM ${database}.scores ORDER BY v"

# `finsent query compare` as a panel: the store's own query (one definition), Grafana's time filter,
# variables and topic selection around it
SQL_COMPARE = (
    """SELECT topic, items, negative_a / items AS negative_share_a, negative_b / items AS negative_share_b
FROM ("""
    + (
        schema.COMPARE_VERSIONS.strip()
        .replace("{db}", "${database}")
        .replace("{a:String}", "${version_a:singlequote}")
        .replace("{b:String}", "${version_b:singlequote}")
        .replace("ingested_at >= toDateTime({since:UInt32}, 'UTC')", "$__timeFilter(ingested_at)")
    )
    + """
)
WHERE """
    + TOPIC_IN
    + """
ORDER BY items DESC, topic"""
)

# ---- entities (issue 26): the mentions table, one row per (item, entity); FINAL first, then deleted = 0 ----------
#: the ``entity`` variable holds a stored entity key (``AAPL``, ``name:genesis``): the most mentioned names first
ENTITY_IS = "entity_key = ${entity:singlequote}"
SQL_ENTITIES = """SELECT entity_key FROM ${database}.mentions GROUP BY entity_key ORDER BY count() DESC, entity_key
LIMIT 1000"""

_ENTITY_MENTIONS = (
    """(
    SELECT event_time, sentiment, relevance, novelty, source, deleted
    FROM ${database}.mentions FINAL
    WHERE """
    + ENTITY_IS
    + """ AND $__timeFilter(event_time)
)
WHERE deleted = 0"""
)

SQL_ENTITY_SERIES = (
    """SELECT toDateTime(intDiv(toUInt32(event_time), $__interval_s) * $__interval_s, 'UTC') AS time,
       countIf(sentiment = 'negative') AS negative,
       countIf(sentiment = 'neutral') AS neutral,
       countIf(sentiment = 'positive') AS positive
FROM """
    + _ENTITY_MENTIONS
    + """
GROUP BY time
ORDER BY time"""
)

SQL_ENTITY_NET = (
    """SELECT toDateTime(intDiv(toUInt32(event_time), $__interval_s) * $__interval_s, 'UTC') AS time,
       sum(relevance * ((sentiment = 'positive') - (sentiment = 'negative'))) / greatest(sum(relevance), 1)
           AS net_sentiment
FROM """
    + _ENTITY_MENTIONS
    + """
GROUP BY time
ORDER BY time"""
)

SQL_ENTITY_BUZZ = (
    """SELECT toDateTime(intDiv(toUInt32(event_time), $__interval_s) * $__interval_s, 'UTC') AS time,
       count() AS buzz,
       countIf(novelty >= 100) AS novel,
       uniqExact(source) AS sources
FROM """
    + _ENTITY_MENTIONS
    + """
GROUP BY time
ORDER BY time"""
)

SQL_ENTITY_STORIES = (
    """SELECT event_time AS time, ifNull(title, substring(text, 1, 200)) AS headline, sentiment,
       source,
       if(match(ifNull(url, ''), '^[Hh][Tt][Tt][Pp][Ss]?://[^[:space:]]') AND NOT match(ifNull(url, ''), '[[:space:]]'),
          ifNull(url, ''), '') AS url
FROM ${database}.items FINAL
WHERE $__timeFilter(event_time) AND id IN (
    SELECT item_id FROM (SELECT item_id, deleted FROM ${database}.mentions FINAL WHERE """
    + ENTITY_IS
    + """)
    WHERE deleted = 0
)
ORDER BY time DESC
LIMIT 50"""
)

_ENTITY_ALERT_COLUMNS = """fired_at AS time, entity_name, entity_id, severity, negative AS novel_negative,
       total AS novel, round(score, 2) AS idx, window_start, window_end"""

SQL_ENTITY_ALERTS = (
    """SELECT """
    + _ENTITY_ALERT_COLUMNS
    + """
FROM ${database}.alerts FINAL
WHERE $__timeFilter(fired_at) AND kind = 'entity'
  AND (entity_id = ${entity:singlequote} OR concat('name:', entity_name) = ${entity:singlequote})
ORDER BY fired_at DESC
LIMIT 200"""
)

SQL_ENTITY_ALERT_ANNOTATIONS = """SELECT window_start AS time, window_end AS timeEnd,
       concat(severity, ' negative surge about ', entity_name, ': ', toString(negative),
              ' novel negative stories, index ', toString(round(score, 1))) AS text,
       entity_name AS tags
FROM ${database}.alerts FINAL
WHERE $__timeFilter(window_start) AND kind = 'entity'
  AND (entity_id = ${entity:singlequote} OR concat('name:', entity_name) = ${entity:singlequote})
ORDER BY time"""

SQL_ALL_ENTITY_ALERTS = (
    """SELECT """
    + _ENTITY_ALERT_COLUMNS
    + """
FROM ${database}.alerts FINAL
WHERE $__timeFilter(fired_at) AND kind = 'entity'
ORDER BY fired_at DESC
LIMIT 200"""
)

# ---- PromQL (Grafana variables: $topic regex, $__rate_interval) ----------------------------------------

PROM_TOPIC = 'topic=~"$topic"'
PROMQL: dict[str, str] = {
    "share_short": f"topic:finsent_negative_ratio:ratio5m{{{PROM_TOPIC}}}",
    "share_long": f"topic:finsent_negative_ratio:ratio1h{{{PROM_TOPIC}}}",
    "zscore": f"topic:finsent_negative_spike:zscore5m{{{PROM_TOPIC}}}",
    "stream_score": f"max by (topic) (finsent_negative_spike_score{{{PROM_TOPIC}}})",
    "stream_active": f"max by (topic) (finsent_negative_spike_active{{{PROM_TOPIC}}})",
    "alerts": f'ALERTS{{alertname="FinsentNegativeSentimentSpike", alertstate="firing", {PROM_TOPIC}}}',
    "scored_rate": f"sum by (topic) (rate(finsent_items_scored_total{{{PROM_TOPIC}}}[$__rate_interval]))",
    "consumed_rate": "sum(rate(finsent_items_consumed_total[$__rate_interval]))",
    "stored_rate": "sum(rate(finsent_items_stored_total[$__rate_interval]))",
    "dead_letter_rate": "sum by (reason) (rate(finsent_items_dead_lettered_total[$__rate_interval]))",
    "lag": "sum by (kafka_topic) (finsent_consumer_lag_messages)",
    "latency_p50": "histogram_quantile(0.5, sum by (le) (rate(finsent_end_to_end_latency_seconds_bucket"
    "[$__rate_interval])))",
    "latency_p99": "histogram_quantile(0.99, sum by (le) (rate(finsent_end_to_end_latency_seconds_bucket"
    "[$__rate_interval])))",
    "inference_p95": "histogram_quantile(0.95, sum by (le) (rate(finsent_inference_seconds_bucket[$__rate_interval])))",
    "store_p95": "histogram_quantile(0.95, sum by (le) (rate(finsent_store_seconds_bucket[$__rate_interval])))",
    "batch_mean": "sum(rate(finsent_batch_size_sum[$__rate_interval])) / sum(rate(finsent_batch_size_count"
    "[$__rate_interval]))",
    "store_retries": "sum(rate(finsent_store_retries_total[$__rate_interval]))",
    # entities: aggregates only, and the (at most 50) names in an alert episode now (alerts/entity_agent.py)
    "entity_mentions_rate": "sum by (sentiment) (rate(finsent_entity_mentions_total[$__rate_interval]))",
    "entities_tracked": "sum(finsent_entities_tracked)",
    "entity_alerting": "max by (entity, entity_id) (finsent_entity_alert_active)",
    "entity_alerts_rate": "sum by (severity) (increase(finsent_entity_alerts_total[1h]))",
}


def _sql(sql: str, fmt: str = "timeseries", ref: str = "A") -> dict[str, Any]:
    return {
        "datasource": CH,
        "editorType": "sql",
        "format": 0 if fmt == "timeseries" else 1,
        "queryType": fmt,
        "rawSql": sql,
        "refId": ref,
    }


def _prom(expr: str, legend: str = "{{topic}}", ref: str = "A") -> dict[str, Any]:
    return {"datasource": PROM, "expr": expr, "legendFormat": legend, "refId": ref}


def _panel(
    pid: int,
    title: str,
    kind: str,
    targets: list[dict[str, Any]],
    x: int,
    y: int,
    w: int = 12,
    h: int = 8,
    unit: str | None = None,
    desc: str = "",
    **extra: Any,
) -> dict[str, Any]:
    p: dict[str, Any] = {
        "id": pid,
        "title": title,
        "type": kind,
        "description": desc,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": targets,
        # one datasource for the panel, or Grafana's Mixed when the targets differ (else all would go to the first)
        "datasource": targets[0]["datasource"] if len({t["datasource"]["uid"] for t in targets}) == 1 else MIXED,
        "fieldConfig": {"defaults": {"unit": unit} if unit else {}, "overrides": []},
    }
    p.update(extra)
    return p


def _datasource_variables() -> list[dict[str, Any]]:
    """The provisioned case: variables named like the inputs resolve ``${DS_...}`` to the provisioned uids.

    On import Grafana replaces every ``${DS_...}`` with the datasource the user picked, so these are then unused.
    """
    return [
        {
            "name": "DS_CLICKHOUSE",
            "label": "ClickHouse",
            "type": "datasource",
            "query": CH["type"],
            "hide": 0,
            "current": {"text": "finsent ClickHouse", "value": CH_UID},
        },
        {
            "name": "DS_PROMETHEUS",
            "label": "Prometheus",
            "type": "datasource",
            "query": PROM["type"],
            "hide": 0,
            "current": {"text": "finsent Prometheus", "value": PROM_UID},
        },
    ]


#: what Grafana's import form asks for: one datasource per input
INPUTS = [
    {
        "name": "DS_CLICKHOUSE",
        "label": "ClickHouse",
        "description": "the finsent store",
        "type": "datasource",
        "pluginId": CH["type"],
        "pluginName": "ClickHouse",
    },
    {
        "name": "DS_PROMETHEUS",
        "label": "Prometheus",
        "description": "scrapes the finsent services",
        "type": "datasource",
        "pluginId": PROM["type"],
        "pluginName": "Prometheus",
    },
]


def _variables(versions: bool = False) -> dict[str, Any]:
    return {
        "list": [
            *_datasource_variables(),
            {
                "name": "database",
                "label": "database",
                "type": "custom",
                "query": "finsent",
                "current": {"text": "finsent", "value": "finsent"},
                "hide": 0,
                "options": [{"selected": True, "text": "finsent", "value": "finsent"}],
            },
            {
                "name": "topic",
                "label": "topic",
                "type": "query",
                "datasource": CH,
                "query": SQL_TOPICS,
                "definition": SQL_TOPICS,
                "multi": True,
                "includeAll": True,
                "refresh": 2,
                "sort": 1,
                "current": {"text": ["All"], "value": ["$__all"]},
            },
            *(
                {
                    "name": name,
                    "label": label,
                    "type": "query",
                    "datasource": CH,
                    "query": SQL_VERSIONS,
                    "definition": SQL_VERSIONS,
                    "multi": False,
                    "includeAll": False,
                    "refresh": 2,
                    "sort": 1,
                }
                for name, label in (("version_a", "model A"), ("version_b", "model B"))
                if versions
            ),
        ]
    }


def _annotations() -> dict[str, Any]:
    return {
        "list": [
            _grafana_annotation(),
            {
                "name": "finsent alerts (ClickHouse)",
                "datasource": CH,
                "enable": True,
                "iconColor": "red",
                "target": _sql(SQL_ALERT_ANNOTATIONS, "table", "Anno"),
            },
            {
                "name": "Prometheus spike alert",
                "datasource": PROM,
                "enable": True,
                "iconColor": "orange",
                "expr": PROMQL["alerts"],
                "step": "60s",
                "titleFormat": "FinsentNegativeSentimentSpike",
                "tagKeys": "topic,severity",
                "useValueForTime": False,
            },
        ]
    }


def _dashboard(uid: str, title: str, panels: list[dict[str, Any]], desc: str, versions: bool = False) -> dict[str, Any]:
    return {
        "__inputs": INPUTS,
        # what the import form checks is installed: both datasource plugins and every panel type used
        "__requires": [
            {"type": "datasource", "id": CH["type"], "name": "ClickHouse", "version": ""},
            {"type": "datasource", "id": PROM["type"], "name": "Prometheus", "version": ""},
            *({"type": "panel", "id": k, "name": k, "version": ""} for k in sorted({p["type"] for p in panels})),
        ],
        "uid": uid,
        "title": title,
        "description": desc,
        "tags": ["finsent"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": _variables(versions),
        "annotations": _annotations(),
        "links": [{"title": "finsent dashboards", "type": "dashboards", "tags": ["finsent"], "asDropdown": True}],
        "panels": panels,
    }


def _headline_links() -> dict[str, Any]:
    """A table's ``headline`` cell links to the row's ``url`` (the SQL keeps only http(s) urls: stored text is
    untrusted input), in a new tab so the dashboard stays open."""
    return {
        "defaults": {},
        "overrides": [
            {
                "matcher": {"id": "byName", "options": "headline"},
                "properties": [
                    {
                        "id": "links",
                        "value": [{"title": "open", "url": "${__data.fields.url}", "targetBlank": True}],
                    }
                ],
            }
        ],
    }


def _entity_name_links() -> dict[str, Any]:
    """A table's ``entity_name`` cell opens the entities dashboard on that entity: from an alert to its story."""
    return {
        "defaults": {},
        "overrides": [
            {
                "matcher": {"id": "byName", "options": "entity_name"},
                "properties": [
                    {
                        "id": "links",
                        "value": [
                            {
                                "title": "entity dashboard",
                                "url": "/d/finsent-entities/finsent-entities?var-entity=${__data.fields.entity_id}",
                            }
                        ],
                    }
                ],
            }
        ],
    }


def _grafana_annotation() -> dict[str, Any]:
    """Grafana's own annotation source (manual notes, Grafana alerts), kept hidden as Grafana itself writes it:
    a dashboard that lists its annotations but leaves this one out loses the notes people add by hand."""
    return {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }


# ---- finsent / sentiment: ClickHouse over the topics, rows top to bottom ----------------------------------------


def _sentiment_share_panels() -> list[dict[str, Any]]:
    """First rows: how negative each topic is over time, as a line, as stacked counts and as an hourly heatmap."""
    return [
        _panel(
            1,
            "Negative share by topic",
            "timeseries",
            [_sql(SQL_NEGATIVE_SHARE)],
            0,
            0,
            24,
            9,
            "percentunit",
            "Distinct negative items / distinct items per topic and interval (ClickHouse topic_minute).",
        ),
        _panel(
            2,
            "Items by sentiment",
            "timeseries",
            [_sql(SQL_SENTIMENT_COUNTS)],
            0,
            9,
            12,
            8,
            "short",
            "Scored items per interval, stacked by sentiment, for the selected topics.",
            options={"legend": {"displayMode": "list", "placement": "bottom"}},
        ),
        _panel(
            3,
            "Negative share heatmap (hourly)",
            "heatmap",
            [_sql(SQL_HEATMAP, "table")],
            12,
            9,
            12,
            8,
            "percentunit",
            "Negative share per topic and hour: chronic topics stay warm, spikes light up.",
            options={"calculate": False, "yAxis": {"unit": "short"}, "color": {"scheme": "Reds", "mode": "scheme"}},
        ),
    ]


def _sentiment_detail_panels() -> list[dict[str, Any]]:
    """Lower rows: the items and alerts behind the shares, and the same items under two model versions."""
    return [
        _panel(
            4,
            "Top negative items",
            "table",
            [_sql(SQL_TOP_NEGATIVE, "table")],
            0,
            17,
            24,
            10,
            None,
            "The 50 most negative items of the time range; headlines link to the article.",
            fieldConfig=_headline_links(),
        ),
        _panel(
            5,
            "Alerts",
            "table",
            [_sql(SQL_ALERTS_TABLE, "table")],
            0,
            27,
            24,
            8,
            None,
            "Spike alerts stored by the in-stream detector / AlertRunner (ClickHouse alerts table).",
        ),
        _panel(
            6,
            "Negative share of the same items: model A vs model B",
            "barchart",
            [_sql(SQL_COMPARE, "table")],
            0,
            35,
            24,
            9,
            "percentunit",
            "Items scored by both versions (finsent rescore, the scores history), per topic as model A assigned "
            "them: the negative share under A and under B. Pick the versions in the model A / model B variables; "
            "the same numbers as `finsent query compare --versions A B`.",
            options={"xField": "topic", "orientation": "horizontal", "legend": {"displayMode": "list"}},
        ),
    ]


def sentiment_dashboard() -> dict[str, Any]:
    """finsent / sentiment: the store's view of the news, with the model-version variables for the compare panel."""
    return _dashboard(
        "finsent-sentiment",
        "finsent / sentiment",
        [*_sentiment_share_panels(), *_sentiment_detail_panels()],
        "Sentiment per topic over time from ClickHouse; spike alerts as annotations.",
        versions=True,
    )


# ---- finsent / alerts: where an alert's dashboard link lands ------------------------------------------------------


def _alert_rule_panels() -> list[dict[str, Any]]:
    """Top rows: what the Prometheus rule and the in-stream detector saw (their inputs, scores and state)."""
    return [
        _panel(
            1,
            "Negative share: 5m vs 1h baseline (Prometheus)",
            "timeseries",
            [_prom(PROMQL["share_short"], "{{topic}} 5m"), _prom(PROMQL["share_long"], "{{topic}} baseline", "B")],
            0,
            0,
            12,
            9,
            "percentunit",
            "The recording rules the FinsentNegativeSentimentSpike alert is built on.",
        ),
        _panel(
            2,
            "Spike z-score (Prometheus rule) and in-stream score",
            "timeseries",
            [_prom(PROMQL["zscore"], "{{topic}} rule z"), _prom(PROMQL["stream_score"], "{{topic}} stream", "B")],
            12,
            0,
            12,
            9,
            "short",
            "Warning fires at z >= 6 (rule) / 5 (in-stream ewma_z).",
        ),
        _panel(
            3,
            "In-stream alarm state",
            "state-timeline",
            [_prom(PROMQL["stream_active"])],
            0,
            9,
            12,
            6,
            None,
            "finsent_negative_spike_active: 0 calm, 1 warning, 2 critical.",
        ),
        _panel(
            4,
            "Items scored per second by topic",
            "timeseries",
            [_prom(PROMQL["scored_rate"])],
            12,
            9,
            12,
            6,
            "ops",
            "Volume: the rule ignores topics below its volume floor.",
        ),
    ]


def _alert_store_panels() -> list[dict[str, Any]]:
    """Middle rows: the headlines behind a spike and the stored alerts, topic and entity (ClickHouse)."""
    return [
        _panel(
            5,
            "Top negative items",
            "table",
            [_sql(SQL_TOP_NEGATIVE, "table")],
            0,
            15,
            24,
            10,
            None,
            "The headlines behind the spike (linked from the alert's dashboard annotation).",
        ),
        _panel(
            6,
            "Alerts",
            "table",
            [_sql(SQL_ALERTS_TABLE, "table")],
            0,
            25,
            24,
            8,
            None,
            "Stored spike alerts for the selected topics.",
        ),
        _panel(
            7,
            "Entity alerts",
            "table",
            [_sql(SQL_ALL_ENTITY_ALERTS, "table")],
            0,
            33,
            24,
            8,
            None,
            "Stored entity alerts (a negative-news surge about one name); open one in the finsent / entities "
            "dashboard.",
            fieldConfig=_entity_name_links(),
        ),
    ]


def _alert_entity_panels() -> list[dict[str, Any]]:
    """Bottom row: the entity detector from Prometheus, as aggregates (names only while they alert)."""
    return [
        _panel(
            8,
            "Entities alerting now",
            "table",
            [_prom(PROMQL["entity_alerting"], "{{entity}}")],
            0,
            41,
            12,
            7,
            None,
            "finsent_entity_alert_active: the names in an alert episode (1 warning, 2 critical).",
        ),
        _panel(
            9,
            "Entity mentions and alerts",
            "timeseries",
            [
                _prom(PROMQL["entity_mentions_rate"], "{{sentiment}} mentions/s"),
                _prom(PROMQL["entity_alerts_rate"], "{{severity}} alerts (1h)", "B"),
                _prom(PROMQL["entities_tracked"], "entities tracked", "C"),
            ],
            12,
            41,
            12,
            7,
            "short",
            "Aggregates only: thousands of names never become label values.",
        ),
    ]


def alerts_dashboard() -> dict[str, Any]:
    """finsent / alerts: the page an alert links to, so one click shows why it fired and what it was about."""
    return _dashboard(
        "finsent-alerts",
        "finsent / alerts",
        [*_alert_rule_panels(), *_alert_store_panels(), *_alert_entity_panels()],
        "Where an alert's dashboard link lands: the rule's inputs, the in-stream detector, the headlines.",
    )


# ---- finsent / pipeline: is the worker keeping up --------------------------------------------------------------


def _pipeline_flow_panels() -> list[dict[str, Any]]:
    """Top rows: items in and out, how far behind, how long an item takes and where the time goes."""
    return [
        _panel(
            1,
            "Throughput",
            "timeseries",
            [
                _prom(PROMQL["consumed_rate"], "consumed"),
                _prom(PROMQL["stored_rate"], "stored", "B"),
                _sql(SQL_STORED_RATE, "timeseries", "C"),
            ],
            0,
            0,
            12,
            8,
            "ops",
            "Messages consumed and rows stored per second (Prometheus), and stored items/s (ClickHouse).",
        ),
        _panel(
            2,
            "Consumer lag",
            "timeseries",
            [_prom(PROMQL["lag"], "{{kafka_topic}}")],
            12,
            0,
            12,
            8,
            "short",
            "Messages behind the end of each consumed topic.",
        ),
        _panel(
            3,
            "End-to-end latency (ingested -> stored)",
            "timeseries",
            [_prom(PROMQL["latency_p50"], "p50"), _prom(PROMQL["latency_p99"], "p99", "B")],
            0,
            8,
            12,
            8,
            "s",
        ),
        _panel(
            4,
            "Inference and store time per batch (p95)",
            "timeseries",
            [_prom(PROMQL["inference_p95"], "inference"), _prom(PROMQL["store_p95"], "store", "B")],
            12,
            8,
            12,
            8,
            "s",
        ),
    ]


def _pipeline_trouble_panels() -> list[dict[str, Any]]:
    """Bottom row: batch size and the two signs of trouble (dead letters, store retries)."""
    return [
        _panel(5, "Mean batch size", "timeseries", [_prom(PROMQL["batch_mean"], "batch")], 0, 16, 8, 7, "short"),
        _panel(
            6,
            "Dead letters by reason",
            "timeseries",
            [_prom(PROMQL["dead_letter_rate"], "{{reason}}")],
            8,
            16,
            8,
            7,
            "ops",
        ),
        _panel(7, "Store retries", "timeseries", [_prom(PROMQL["store_retries"], "retries")], 16, 16, 8, 7, "ops"),
    ]


def pipeline_dashboard() -> dict[str, Any]:
    """finsent / pipeline: the worker's health, where the operational alerts link to."""
    return _dashboard(
        "finsent-pipeline",
        "finsent / pipeline",
        [*_pipeline_flow_panels(), *_pipeline_trouble_panels()],
        "Is the worker keeping up: throughput, lag, latency, batch sizes, dead letters, store retries.",
    )


def dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard by its file name under ``deploy/grafana/dashboards``."""
    return {
        "finsent-sentiment.json": sentiment_dashboard(),
        "finsent-alerts.json": alerts_dashboard(),
        "finsent-pipeline.json": pipeline_dashboard(),
        "finsent-entities.json": entity_dashboard(),
    }


# ---- finsent / entities: one entity over event time --------------------------------------------------------------


def _entity_series_panels() -> list[dict[str, Any]]:
    """Top rows: the entity's mentions over event time, by sentiment, net, and as buzz vs novel stories."""
    return [
        _panel(
            1,
            "Mentions by sentiment",
            "timeseries",
            [_sql(SQL_ENTITY_SERIES)],
            0,
            0,
            12,
            8,
            "short",
            "Mentions of the entity per interval of event time (published, else ingested), by the sentiment "
            "toward it (mentions table).",
        ),
        _panel(
            2,
            "Net sentiment (relevance-weighted)",
            "timeseries",
            [_sql(SQL_ENTITY_NET)],
            12,
            0,
            12,
            8,
            None,
            "sum(relevance x (positive - negative)) / sum(relevance), in [-1, 1].",
        ),
        _panel(
            3,
            "Buzz, novel stories, sources",
            "timeseries",
            [_sql(SQL_ENTITY_BUZZ)],
            0,
            8,
            12,
            8,
            "short",
            "Buzz counts every mention; novel counts first tellings (novelty 100) where novelty was stored; the "
            "entity detector tests novel negatives against the name's own baseline.",
        ),
    ]


def _entity_table_panels() -> list[dict[str, Any]]:
    """Middle rows: the entity's stored alerts and its newest stories, each headline linked to its article."""
    return [
        _panel(
            4,
            "Alerts about this entity",
            "table",
            [_sql(SQL_ENTITY_ALERTS, "table")],
            12,
            8,
            12,
            8,
            None,
            "Stored entity alerts: window, novel negative and novel counts, index (surprise against the "
            "baseline). Top headlines with links: finsent query alerts --json.",
        ),
        _panel(
            5,
            "Top stories",
            "table",
            [_sql(SQL_ENTITY_STORIES, "table")],
            0,
            16,
            24,
            10,
            None,
            "The newest stories mentioning the entity; headlines link to the article.",
            fieldConfig=_headline_links(),
        ),
    ]


def _entity_fleet_panels() -> list[dict[str, Any]]:
    """Bottom row: every entity together from Prometheus (no per-name series there, so not this entity's)."""
    return [
        _panel(
            6,
            "Entities alerting now (all workers)",
            "table",
            [_prom(PROMQL["entity_alerting"], "{{entity}}")],
            0,
            26,
            12,
            7,
            None,
            "finsent_entity_alert_active: the names in an alert episode (1 warning, 2 critical; at most 50).",
        ),
        _panel(
            7,
            "Entity mentions per second",
            "timeseries",
            [_prom(PROMQL["entity_mentions_rate"], "{{sentiment}}")],
            12,
            26,
            12,
            7,
            "ops",
            "Every entity together (no per-name series in Prometheus).",
        ),
    ]


def _entity_templating() -> dict[str, Any]:
    """The datasources, the database, and one ``entity`` (no topic filter: an entity crosses topics)."""
    return {
        "list": [
            *_datasource_variables(),
            next(v for v in _variables()["list"] if v["name"] == "database"),
            {
                "name": "entity",
                "label": "entity",
                "type": "query",
                "datasource": CH,
                "query": SQL_ENTITIES,
                "definition": SQL_ENTITIES,
                "multi": False,
                "includeAll": False,
                "refresh": 2,
                "sort": 0,
            },
        ]
    }


def _entity_annotations() -> dict[str, Any]:
    """The entity's stored alerts as annotations (the topic spike annotations would not concern this entity)."""
    return {
        "list": [
            _grafana_annotation(),
            {
                "name": "entity alerts (ClickHouse)",
                "datasource": CH,
                "enable": True,
                "iconColor": "red",
                "target": _sql(SQL_ENTITY_ALERT_ANNOTATIONS, "table", "Anno"),
            },
        ]
    }


def entity_dashboard() -> dict[str, Any]:
    """One entity: mentions by sentiment, net sentiment, buzz and novel stories, top stories, its alerts.

    A week by default (entity surges are judged over days of event time), with its own variables and annotations.
    """
    dash = _dashboard(
        "finsent-entities",
        "finsent / entities",
        [*_entity_series_panels(), *_entity_table_panels(), *_entity_fleet_panels()],
        "One entity over event time: mentions, net sentiment, buzz, top stories and its alerts.",
    )
    dash["time"] = {"from": "now-7d", "to": "now"}
    dash["templating"] = _entity_templating()
    dash["annotations"] = _entity_annotations()
    return dash


DATASOURCES_YAML = """\
# Grafana provisioning: the two datasources the finsent dashboards use (fixed uids).
# The ClickHouse one needs the plugin: grafana-cli plugins install grafana-clickhouse-datasource
apiVersion: 1
datasources:
  - name: finsent ClickHouse
    uid: finsent-clickhouse
    type: grafana-clickhouse-datasource
    jsonData:
      host: 127.0.0.1
      port: 9000
      protocol: native
      username: default
      defaultDatabase: finsent
    secureJsonData:
      password: $FINSENT_CLICKHOUSE_PASSWORD
  - name: finsent Prometheus
    uid: finsent-prometheus
    type: prometheus
    access: proxy
    url: http://127.0.0.1:9090
    jsonData:
      timeInterval: 15s
"""

DASHBOARDS_YAML = """\
# Grafana provisioning: load the finsent dashboards from this directory's ../../dashboards
apiVersion: 1
providers:
  - name: finsent
    folder: finsent
    type: file
    disableDeletion: false
    updateIntervalSeconds: 60
    options:
      path: /etc/grafana/finsent/dashboards
"""


def files() -> dict[str, str]:
    """Relative path under deploy/grafana -> content."""
    out = {f"dashboards/{name}": json.dumps(d, indent=2) + "\n" for name, d in dashboards().items()}
    out["provisioning/datasources/finsent.yml"] = DATASOURCES_YAML
    out["provisioning/dashboards/finsent.yml"] = DASHBOARDS_YAML
    return out


def write(root: Path = DEPLOY) -> list[Path]:
    written = []
    for rel, text in files().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
