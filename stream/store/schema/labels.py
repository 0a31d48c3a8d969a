"""Queries of human labels (``finsent label ...``) and the annotation queue.

Why ``labels`` keeps the newest correction per (task, id): next to its declaration in :mod:`.ddl`.
"""

from __future__ import annotations

LABEL_SELECT = (
    "id",
    "task",
    "label",
    "text",
    "labelled_by",
    "labelled_at",
    "labelled_ms",
    "old_label",
    "note",
    "origin",
)

LABELS_CURRENT = f"""
SELECT {", ".join(LABEL_SELECT)} FROM {{db}}.labels FINAL
WHERE ({{any_task:UInt8}} = 1 OR task = {{task:String}})
ORDER BY task, id"""

# has() and not IN: an Array parameter works the same on 18.16 (client-side) and chdb (bound)
LABELS_FOR_IDS = f"""
SELECT {", ".join(LABEL_SELECT)} FROM {{db}}.labels FINAL
WHERE has({{ids:Array(String)}}, id)
ORDER BY task, id"""

QUEUE_COLUMNS = (
    "id",
    "ingested_at",
    "source",
    "title",
    "text",
    "sentiment",
    "p_negative",
    "p_neutral",
    "p_positive",
    "topic",
    "topic_prob",
    "model_version",
)

#: how the queue orders candidates (constants chosen by name, never user text):
#: least confidence of the task's head (1 - its top probability; for topic only the top one is
#: stored, so a margin is not available for both), or a seeded hash (reproducible random sample)
QUEUE_ORDER = {
    ("uncertain", "sentiment"): "1 - greatest(p_negative, greatest(p_neutral, p_positive))",
    ("uncertain", "topic"): "1 - topic_prob",
    ("random", "sentiment"): "sipHash64(concat({seed:String}, id))",
    ("random", "topic"): "sipHash64(concat({seed:String}, id))",
}


def label_queue_query(strategy: str, task: str) -> str:
    """Items in the window not yet labelled for ``task``, most in need of an annotator first."""
    order = QUEUE_ORDER[(strategy, task)]
    return f"""
SELECT {", ".join(QUEUE_COLUMNS)}, {order} AS priority
FROM (
    SELECT {", ".join(QUEUE_COLUMNS)} FROM {{db}}.items FINAL
    WHERE ingested_at >= toDateTime({{since:UInt32}}, 'UTC')
)
WHERE id NOT IN (SELECT id FROM {{db}}.labels FINAL WHERE task = {{task:String}})
ORDER BY priority DESC, id
LIMIT {{limit:UInt32}}"""
