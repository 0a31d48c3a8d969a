"""Queries of the drift report (``finsent drift``, the worker's ``finsent_drift_*`` gauges).

The model versions that scored the window, then one pass over both periods (reference [since, split), window
[split, until)) for one version, grouped by labels. The version filter applies after FINAL (a re-score changes
it). Confidence = the top sentiment probability of an item. Periods are on ``ingested_at``: drift is about what
finsent received.
"""

from __future__ import annotations

_CONFIDENCE = "greatest(p_negative, greatest(p_neutral, p_positive))"

MODEL_VERSION_COUNTS = """
SELECT toString(model_version) AS v, count() AS n
FROM (
    SELECT model_version FROM {db}.items FINAL
    WHERE ingested_at >= toDateTime({since:UInt32}, 'UTC') AND ingested_at < toDateTime({until:UInt32}, 'UTC')
)
GROUP BY v
ORDER BY n DESC, v"""

PREDICTION_STATS = f"""
SELECT toUInt8(ingested_at >= toDateTime({{split:UInt32}}, 'UTC')) AS recent, toString(sentiment) AS s,
       toString(topic) AS t, count() AS n, sum({_CONFIDENCE}) AS confidence,
       countIf({_CONFIDENCE} < {{low:Float64}}) AS low
FROM (
    SELECT ingested_at, sentiment, topic, p_negative, p_neutral, p_positive, model_version FROM {{db}}.items FINAL
    WHERE ingested_at >= toDateTime({{since:UInt32}}, 'UTC') AND ingested_at < toDateTime({{until:UInt32}}, 'UTC')
)
WHERE model_version = {{version:String}}
GROUP BY recent, s, t
ORDER BY recent, s, t"""
