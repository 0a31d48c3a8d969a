"""THE finsent ClickHouse schema, one package in three parts: DDL, row encoding and per-feature queries.

==========================  ==================================================================================
:mod:`.ddl`                 every table declared once, per feature, with why it is laid out so; the single-node
                            and cluster DDL, TTL, column migration and layout warnings generated from them;
                            :class:`Capabilities`, name checks, :func:`render`
:mod:`.rows`                every table's column tuple with each column's meaning next to it, and the encoders
                            (scored item, alert, score history, label, registry row, mentions, entity key)
:mod:`.items`               counts, topic series, top negative items, the items listing, the backtest's items
:mod:`.mentions`            per-entity series, top entities, an entity's stories, the backtest's mentions
:mod:`.alerts`              stored alerts
:mod:`.scores`              re-scoring pages and the per-version comparison (``finsent rescore``, ``query compare``)
:mod:`.labels`              human labels and the annotation queue (``finsent label``)
:mod:`.drift`               the drift report's counts (``finsent drift``, ``finsent_drift_*``)
:mod:`.registry`            the model registry's mirror (``finsent models``)
==========================  ==================================================================================

Tables (names relative to the store's database, ``finsent`` by default): ``items``, ``topic_minute`` (+ the view
``topic_minute_mv``), ``alerts``, ``scores``, ``labels``, ``model_versions``, ``mentions``. The names below are
re-exported from the parts so that ``from finsent.stream.store import schema; schema.X`` keeps working; new code
imports from the part it needs.

One schema serves two very different engines: Debian's clickhouse-server 18.16 (2018) and modern
ClickHouse (chdb 26.x in-process, or any recent server). Everything here is written in the SQL
subset both understand; what only modern servers have (TTL retention) is added when the server
reports a version that supports it (:class:`Capabilities`).

Rules every table follows
-------------------------
* Millisecond time without DateTime64 (18.16 has none): a ``DateTime('UTC')`` column (seconds,
  what every ClickHouse function and Grafana understands, used for partitions, buckets and TTL)
  plus a ``UInt16`` millisecond column. Exact ms time = ``ingested_at`` + ``ingested_ms``/1000.
* Idempotent writes: every table is a ReplacingMergeTree (or aggregates distinct ids) whose sorting key is the
  row's identity and whose version is a time in epoch ms, so a redelivered or re-scored row replaces the older
  one. Merges collapse duplicates in the background at an unspecified time, so queries must not rely on them:
  they always read ``FINAL``, and filter on what a newer version can change only *after* FINAL.
* Query parameters are written ``{name:Type}`` (ClickHouse's own syntax, bound by chdb); the
  clickhouse-driver store rewrites them to the driver's ``%(name)s`` client-side binding, which
  escapes every value itself (18.16 has no server-side parameters). Times are passed as epoch
  seconds (``UInt32``) and converted with ``toDateTime(x, 'UTC')`` so no time zone is ever guessed.
  ``{db}`` is formatted in once (:func:`render`), after the name was checked (it cannot be bound).

Adding a table
--------------
Declare it once in :mod:`.ddl` with :func:`declare_table` (its columns, documented, in :mod:`.rows`) and, for a
materialized view, :func:`declare_view`; put its queries in a module of its feature. The single-node DDL, the
cluster DDL, TTL and ``tests/stream/store/test_store_cluster.py`` all iterate over :data:`TABLE_SPECS` /
:data:`VIEW_SPECS`, so a declared table needs no further work for a cluster.

Cluster mode (``FINSENT_CLICKHOUSE_CLUSTER=name``, a cluster of the servers' ``remote_servers``)
--------------------------------------------------------------------------------------------------
Every statement gets ``ON CLUSTER name``. Each table ``t`` becomes ``t_local`` on every node with
the Replicated variant of its engine (``ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/
<db>/t', '{replica}', version)``; each server fills ``{shard}``/``{replica}`` from its ``macros``)
plus ``t`` = ``Distributed(name, <db>, t_local, <shard key>)``, so every insert and query above
keeps its table names. A materialized view reads and writes the *local* tables on each node.
Why the shard key is ``cityHash64(id)``: ReplacingMergeTree (and FINAL) collapse versions of a row
only within one table on one node, and a Distributed ``FINAL`` query runs FINAL on each shard
separately. If the shard were chosen at random (``rand()``), a redelivered or re-scored item
could land on the other shard and be counted twice forever. Hashing the id sends every version
of an item to the same shard, where FINAL sees them all; so a shard key must depend only on
columns of the table's ORDER BY (the dedup identity). Replicas of one shard hold the same rows
(``internal_replication`` true: the Distributed table writes one replica, replication does the
rest). The store inserts with ``insert_distributed_sync=1`` in cluster mode, so a batch counts as
stored (and its offsets are committed) only once its shards have it.
On 18.x the servers' default profile must set ``allow_experimental_low_cardinality_type=1``:
``ON CLUSTER`` DDL runs in each server's DDL worker, which does not see the client's settings.
Checked for real on ZooKeeper + two 18.16 shards (``tests/stream/store/test_store_cluster_live.py``).

What Debian's 18.16 lacks, checked against the real server (so this package avoids it)
---------------------------------------------------------------------------------------
``DateTime64``, ``now64()``; ``TTL``; ``toStartOfInterval`` (buckets are ``intDiv`` arithmetic);
server-side ``{name:Type}`` parameters; table ``COMMENT``; ``Map``; ``LowCardinality`` without
``allow_experimental_low_cardinality_type=1`` (set per query on 18.x). ``FINAL`` on
ReplacingMergeTree, materialized views ``TO`` a table, ``uniqExactIfState``/``uniqExactIfMerge``,
``Nullable`` and ``Array`` all work. clickhouse-driver cannot decode ``AggregateFunction`` columns:
read them through ``...Merge`` functions only.

Grafana / ad-hoc SQL examples (database ``finsent``)::

    -- distinct items per topic per minute, split by sentiment, last 6 hours (exact)
    SELECT toStartOfMinute(ingested_at) AS t, topic, count() AS total,
           countIf(sentiment = 'negative') AS negative
    FROM finsent.items FINAL
    WHERE ingested_at >= now() - 6 * 3600
    GROUP BY t, topic ORDER BY t

    -- the same from the pre-aggregated table (cheap; not exact under re-scoring: see topic_minute in .ddl)
    SELECT minute AS t, topic, uniqExactMerge(items) AS total, uniqExactIfMerge(negative) AS negative
    FROM finsent.topic_minute WHERE minute >= now() - 6 * 3600 GROUP BY t, topic ORDER BY t
"""

from __future__ import annotations

from finsent.stream.store.schema.alerts import ALERT_SELECT_COLUMNS, ALERTS_SINCE
from finsent.stream.store.schema.ddl import (
    ALERTS,
    EVENT_TIME_DEFAULT,
    ITEMS,
    LABELS,
    LOCAL_SUFFIX,
    MENTIONS,
    MODEL_VERSIONS,
    SCORES,
    SERVER_VERSION,
    TABLE_COLUMNS,
    TABLE_ENGINES,
    TABLE_SPECS,
    TABLES,
    TOPIC_MINUTE,
    TOPIC_MINUTE_MV,
    VIEW_SPECS,
    Capabilities,
    TableSpec,
    ViewSpec,
    check_cluster_name,
    check_database_name,
    create_statements,
    declare_table,
    declare_view,
    layout_warnings,
    missing_column_statements,
    render,
    replicated_engine,
    table_statements,
    ttl_expression,
    ttl_statements,
    view_statement,
)
from finsent.stream.store.schema.drift import MODEL_VERSION_COUNTS, PREDICTION_STATS
from finsent.stream.store.schema.items import (
    COUNT_FINAL,
    COUNT_PHYSICAL,
    COUNT_UNIQUE,
    ITEMS_BY_ID,
    NEGATIVE_COLUMNS,
    TOP_NEGATIVE,
    TOPIC_COUNTS,
    TOPIC_MINUTE_COUNTS,
)
from finsent.stream.store.schema.labels import (
    LABEL_SELECT,
    LABELS_CURRENT,
    LABELS_FOR_IDS,
    QUEUE_COLUMNS,
    QUEUE_ORDER,
    label_queue_query,
)
from finsent.stream.store.schema.registry import MODEL_VERSIONS_SELECT
from finsent.stream.store.schema.rows import (
    ALERT_COLUMNS,
    ITEM_COLUMNS,
    ITEM_NAMES,
    LABEL_COLUMNS,
    MAX_DATETIME_S,
    MODEL_VERSION_COLUMNS,
    SCORE_COLUMNS,
    alert_row,
    label_row,
    model_version_row,
    score_history_row,
    score_row,
    scored_row,
)
from finsent.stream.store.schema.scores import COMPARE_VERSIONS, RESCORE_PAGE, RESCORE_TOTAL, SCORE_VERSIONS

__all__ = [
    "ALERTS",
    "ALERTS_SINCE",
    "ALERT_COLUMNS",
    "ALERT_SELECT_COLUMNS",
    "COMPARE_VERSIONS",
    "COUNT_FINAL",
    "COUNT_PHYSICAL",
    "COUNT_UNIQUE",
    "EVENT_TIME_DEFAULT",
    "ITEMS",
    "ITEMS_BY_ID",
    "ITEM_COLUMNS",
    "ITEM_NAMES",
    "LABELS",
    "LABELS_CURRENT",
    "LABELS_FOR_IDS",
    "LABEL_COLUMNS",
    "LABEL_SELECT",
    "LOCAL_SUFFIX",
    "MAX_DATETIME_S",
    "MENTIONS",
    "MODEL_VERSIONS",
    "MODEL_VERSIONS_SELECT",
    "MODEL_VERSION_COLUMNS",
    "MODEL_VERSION_COUNTS",
    "NEGATIVE_COLUMNS",
    "PREDICTION_STATS",
    "QUEUE_COLUMNS",
    "QUEUE_ORDER",
    "RESCORE_PAGE",
    "RESCORE_TOTAL",
    "SCORES",
    "SCORE_COLUMNS",
    "SCORE_VERSIONS",
    "SERVER_VERSION",
    "TABLES",
    "TABLE_COLUMNS",
    "TABLE_ENGINES",
    "TABLE_SPECS",
    "TOPIC_COUNTS",
    "TOPIC_MINUTE",
    "TOPIC_MINUTE_COUNTS",
    "TOPIC_MINUTE_MV",
    "TOP_NEGATIVE",
    "VIEW_SPECS",
    "Capabilities",
    "TableSpec",
    "ViewSpec",
    "alert_row",
    "check_cluster_name",
    "check_database_name",
    "create_statements",
    "declare_table",
    "declare_view",
    "label_queue_query",
    "label_row",
    "layout_warnings",
    "missing_column_statements",
    "model_version_row",
    "render",
    "replicated_engine",
    "score_history_row",
    "score_row",
    "scored_row",
    "table_statements",
    "ttl_expression",
    "ttl_statements",
    "view_statement",
]
