"""THE finsent ClickHouse schema: table definitions, row encoding and the queries the store runs.

One schema serves two very different engines: Debian's clickhouse-server 18.16 (2018) and modern
ClickHouse (chdb 26.x in-process, or any recent server). Everything here is written in the SQL
subset both understand; what only modern servers have (TTL retention) is added when the server
reports a version that supports it (:class:`Capabilities`).

Tables (all names are relative to the store's database, ``finsent`` by default)
-------------------------------------------------------------------------------
``items`` -- one row per scored item
(ReplacingMergeTree(version), no PARTITION BY, ORDER BY id; TTL on event_time where the server has TTL)
    id             String                    stable item id (``finsent.core.events.stable_id``)
    source         LowCardinality(String)    feed / account / file the item came from
    source_type    LowCardinality(String)    'news' or 'social'
    title          Nullable(String)
    text           String                    the (possibly truncated) text that was scored
    url            Nullable(String)
    author         Nullable(String)
    tickers        Array(String)             cashtags found in the item
    truncated      UInt8                     1 when text was cut to max_text_chars
    published_at   Nullable(DateTime('UTC')) when the source says it was published (seconds)
    ingested_at    DateTime('UTC')           when finsent first saw it (seconds): counts, rescore and drift windows
    ingested_ms    UInt16                    millisecond part of ingested_at (0..999)
    sentiment      LowCardinality(String)    'negative' | 'neutral' | 'positive'
    p_negative     Float32                   classifier probabilities
    p_neutral      Float32
    p_positive     Float32
    topic          LowCardinality(String)    classifier topic label
    topic_prob     Float32
    model_version  LowCardinality(String)    version of the model that produced this row
    scored_at      DateTime('UTC')           when the row was scored (seconds)
    scored_ms      UInt16                    millisecond part of scored_at
    version        UInt64                    scored_at in epoch milliseconds (the replacing version)
    stored_at      DateTime('UTC')           DEFAULT now(): when the store accepted the row
    event_time     DateTime('UTC')           DEFAULT ifNull(published_at, ingested_at) -- THE time axis (issue 26)
                                             of series, top lists, listings, entity queries, the backtest and
                                             retention: a replay of last month lands in last month.

Event time (issue 26). The store computes it at insert; nothing is trusted blindly before that: the worker's
decoder refuses an item whose ``published_at`` or ``ingested_at`` is more than 5 minutes ahead of its clock
(dead letter ``bad_time``, :data:`finsent.core.events.MAX_FUTURE_SKEW`), and a ``published_at`` the ingesters
cannot read is kept as null (event time falls back to ingested_at; ``finsent.ingest.normalize.to_utc``), while one
that names no real instant is refused as ``bad_time`` by push and replay. Lateness: the store takes any late row
into its bucket (queries re-read ``items FINAL``); what counts as too late for an alert is the entity detector's
``lateness_s`` (``finsent.alerts.entity_detector``, 1 h by default: a bucket is tested once the newest event
time is an hour past its end; a mention arriving later is stored and shown by every query, but the detector
counts it only as ``late`` and never re-tests a closed bucket, so an alert once raised stays as it was). ``count`` (and
``query count``), ``rescore``, the label queue and drift still select on ``ingested_at``: they are about what
finsent received, not when it happened. ``topic_minute`` stays on ingestion minutes (a materialized view
cannot be changed in place); ``Store.topic_counts`` reads ``items`` on event time.

``mentions`` -- one row per (item, entity): see :mod:`finsent.stream.store.mentions` (declared there, into this
schema). Tables created by an older finsent get new declared columns at start (:func:`missing_column_statements`).

``topic_minute`` -- per-topic per-minute distinct-id counts (AggregatingMergeTree, fed by the
materialized view ``topic_minute_mv`` on every insert into ``items``)
    minute         DateTime('UTC')                     toStartOfMinute(ingested_at)
    topic          LowCardinality(String)
    model_version  LowCardinality(String)              model that scored the rows counted here; merging
                                                       states across versions is a set union, so
                                                       ``GROUP BY minute, topic`` still counts each id once
    items     AggregateFunction(uniqExact, String)      read with uniqExactMerge(items)
    negative  AggregateFunction(uniqExactIf, String, UInt8)  read with uniqExactIfMerge(negative)
    neutral   (same)                                    uniqExactIfMerge(neutral)
    positive  (same)                                    uniqExactIfMerge(positive)

``scores`` -- the score history: one row per (item, model version) (ReplacingMergeTree(version),
PARTITION BY toYYYYMM(ingested_at), ORDER BY (toStartOfDay(ingested_at), id, model_version)), written
by ``finsent rescore``: each re-scored item's score before and after
    id, ingested_at, model_version, sentiment, p_negative, p_neutral, p_positive, topic, topic_prob,
    scored_at, version    (the same meaning as in ``items``; no text)

``alerts`` -- one row per alert (ReplacingMergeTree(version), ORDER BY id)
    id, topic, fired_at, window_start, window_end (DateTime('UTC')), negative, total (UInt32),
    negative_share, baseline_share, score (Float64), detector, severity (LowCardinality(String)),
    model_version LowCardinality(String) ('' unless the Alert event carries ``model_version``),
    version UInt64 (fired_at in epoch ms: a re-fired alert replaces the earlier row).

``labels`` -- human corrections, the newest per (task, id) (ReplacingMergeTree(version), ORDER BY (task, id),
no partition, no TTL; written by ``finsent label``, read by training and the annotation queue)
    id, task ('sentiment' | 'topic'), label (the human's), old_label (the model's, '' if unknown), text,
    labelled_by, labelled_at DateTime('UTC') + labelled_ms UInt16, note, origin ('cli' | 'import:<file>'),
    version UInt64 (labelled_at in epoch ms). Why this design: see "human labels" near the end of this module.

Why these choices
-----------------
* Millisecond time without DateTime64 (18.16 has none): a ``DateTime('UTC')`` column (seconds,
  what every ClickHouse function and Grafana understands, used for partitions, buckets and TTL)
  plus a ``UInt16`` millisecond column. Exact ms time = ``ingested_at`` + ``ingested_ms``/1000.
* Idempotent by item id, whatever the days: a ReplacingMergeTree only collapses rows with equal
  sorting key *within one partition*, so ``items`` is sorted by ``id`` alone and has ONE partition.
  The same id arriving on several days (a replay re-run tomorrow, a client retry across midnight,
  two push replicas with per-pod dedup state) is one row under ``FINAL``: the one with the highest
  ``version``, i.e. the last scored, with that arrival's ``ingested_at``. Neither the topic nor the
  sentiment is in the key: a re-score may change them and must still replace the row. Retention
  does not need time partitions: a TTL on ``ingested_at`` deletes rows in merges (19.6+; on 18.16,
  ``ALTER TABLE items DELETE WHERE ingested_at < ...`` by hand).
* What that costs, and why it is paid: until issue 22 the key was ``(toStartOfDay(ingested_at), id)``
  with monthly partitions, which let time-window queries (``WHERE ingested_at >= ...``) read only the
  days they ask for (``count() FINAL`` of the last hour over 1M items in 30 days took 14-28x less time
  than with ``ORDER BY id``, bench/RESULTS.md "Store") -- but it stored an item arriving on three days
  three times (``/v1/count`` said 11 rows for 9 ids). Correct counts come first; a window query now
  reads the whole table: on chdb, 1M items over 30 days, ``count() FINAL`` of the last hour took a
  median of 187 ms against 11 ms with the old layout, the whole table 297 vs 320 ms (5 and 3 runs,
  interleaved, 2-core Xeon at load 8; long dashboards can read ``topic_minute`` instead). A database
  created with the old layout is detected at start and a WARNING gives the statements that rebuild it
  (:func:`layout_warnings`).
* Re-scoring: a newer model's row has a later ``scored_at`` and so a higher ``version``; queries
  read ``items FINAL`` and see exactly one row per id, the newest. (Merges collapse duplicates in
  the background at an unspecified time, so queries must not rely on them: always use FINAL.)
* Re-scoring history (``finsent rescore``, ``finsent query compare``): ``items`` keeps only the
  newest score of an item, which is what every default query must see; comparing two model
  versions on the same items needs both scores, so they are kept in ``scores``, keyed by
  (id, model_version), narrow (id, times, probabilities, labels; no text). Who writes it:
  ``rescore`` only, two rows per re-scored item -- the score it replaces (read back from
  ``items``) and the new one. That is everything compare needs: an item has two versions' scores
  exactly when it was re-scored, and each re-score records both sides, whatever scored the item
  first (worker, hot-reloaded worker, an earlier re-score). The alternative, a materialized view
  on ``items`` that copies every stored row into ``scores``, would also record the worker's own
  rows, but costs the worker on every insert: 128-row inserts took 49 vs 40 ms (median, +23%) on
  clickhouse-server 18.16 and 210 vs 144 ms (+46%) on chdb with the view vs without it, interleaved
  runs on a busy machine (load average 12-15 on 2 cores), for rows compare would only read once
  they are re-scored. Keeping old versions as extra rows in ``items`` (model_version in the key)
  would make every default query pick the newest per id with ``argMax`` instead of ``FINAL``.
  ``scores`` follows the same retention (TTL) as ``items``.
* ``topic_minute`` is cheap to read for long dashboards, and exact under redelivery (uniqExact of
  ids), but a materialized view only ever sees inserts: an item re-scored into another topic or
  sentiment is counted under both labels there. ``Store.topic_counts`` therefore reads
  ``items FINAL`` (exact under re-scoring); bench/RESULTS.md has the cost of each.

Adding a table
--------------
Declare it once with :func:`declare_table` (a :class:`TableSpec`: name, columns, engine, order,
partition, TTL column, shard key) and, for a materialized view, :func:`declare_view`. The
single-node DDL, the cluster DDL, TTL and ``tests/stream/store/test_store_cluster.py`` all iterate over
:data:`TABLE_SPECS` / :data:`VIEW_SPECS`, so a declared table needs no further work for a cluster.

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

What Debian's 18.16 lacks, checked against the real server (so this module avoids it)
--------------------------------------------------------------------------------------
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

    -- the same from the pre-aggregated table (cheap; see the re-scoring caveat above)
    SELECT minute AS t, topic, uniqExactMerge(items) AS total, uniqExactIfMerge(negative) AS negative
    FROM finsent.topic_minute WHERE minute >= now() - 6 * 3600 GROUP BY t, topic ORDER BY t

Query parameters are written ``{name:Type}`` (ClickHouse's own syntax, bound by chdb); the
clickhouse-driver store rewrites them to the driver's ``%(name)s`` client-side binding, which
escapes every value itself (18.16 has no server-side parameters). Times are passed as epoch
seconds (``UInt32``) and converted with ``toDateTime(x, 'UTC')`` so no time zone is ever guessed.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from finsent.core.events import Alert, ScoredItem
from finsent.core.store import Label

log = logging.getLogger(__name__)

ITEMS = "items"
TOPIC_MINUTE = "topic_minute"
TOPIC_MINUTE_MV = "topic_minute_mv"
ALERTS = "alerts"
SCORES = "scores"
TABLES = (ITEMS, TOPIC_MINUTE, ALERTS)

_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

#: (name, type) of ``items`` columns the store writes, in insert order (``stored_at`` is a DEFAULT).
ITEM_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "String"),
    ("source", "LowCardinality(String)"),
    ("source_type", "LowCardinality(String)"),
    ("title", "Nullable(String)"),
    ("text", "String"),
    ("url", "Nullable(String)"),
    ("author", "Nullable(String)"),
    ("tickers", "Array(String)"),
    ("truncated", "UInt8"),
    ("published_at", "Nullable(DateTime('UTC'))"),
    ("ingested_at", "DateTime('UTC')"),
    ("ingested_ms", "UInt16"),
    ("sentiment", "LowCardinality(String)"),
    ("p_negative", "Float32"),
    ("p_neutral", "Float32"),
    ("p_positive", "Float32"),
    ("topic", "LowCardinality(String)"),
    ("topic_prob", "Float32"),
    ("model_version", "LowCardinality(String)"),
    ("scored_at", "DateTime('UTC')"),
    ("scored_ms", "UInt16"),
    ("version", "UInt64"),
)

ALERT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "String"),
    ("topic", "LowCardinality(String)"),
    ("fired_at", "DateTime('UTC')"),
    ("window_start", "DateTime('UTC')"),
    ("window_end", "DateTime('UTC')"),
    ("negative", "UInt32"),
    ("total", "UInt32"),
    ("negative_share", "Float64"),
    ("baseline_share", "Float64"),
    ("score", "Float64"),
    ("detector", "LowCardinality(String)"),
    ("severity", "LowCardinality(String)"),
    ("model_version", "LowCardinality(String)"),
    # issue 26: entity alerts (kind 'entity', topic ''); evidence is the alert's evidence dict as JSON ('' if none)
    ("kind", "LowCardinality(String)"),
    ("entity_id", "String"),
    ("entity_name", "String"),
    ("evidence", "String"),
    ("version", "UInt64"),
)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the connected server can do, decided from its version once per connection."""

    version: tuple[int, ...]

    @property
    def ttl(self) -> bool:
        """Table TTL arrived in ClickHouse 19.6."""
        return self.version >= (19, 6)

    @property
    def low_cardinality_is_experimental(self) -> bool:
        """18.x accepts LowCardinality only with ``allow_experimental_low_cardinality_type=1``."""
        return self.version < (19, 0)

    @property
    def version_text(self) -> str:
        return ".".join(str(p) for p in self.version)

    @classmethod
    def parse(cls, text: str) -> Capabilities:
        parts = [int(p) for p in re.findall(r"\d+", text)[:4]]
        if not parts:
            raise ValueError(f"cannot read a ClickHouse version from {text!r}")
        return cls(tuple(parts))


def check_database_name(name: str) -> str:
    """Database names go into DDL as identifiers (they cannot be bound), so only plain names pass."""
    if not _DB_NAME.fullmatch(name):
        raise ValueError(f"database name {name!r} must match [A-Za-z_][A-Za-z0-9_]* (at most 64 characters)")
    return name


def check_cluster_name(name: str) -> str:
    """Cluster names go into DDL as identifiers too (``ON CLUSTER name``, ``Distributed(name, ...)``)."""
    if not _DB_NAME.fullmatch(name):
        raise ValueError(f"cluster name {name!r} must match [A-Za-z_][A-Za-z0-9_]* (at most 64 characters)")
    return name


def _columns_sql(columns: Sequence[tuple[str, str]]) -> str:
    return ",\n    ".join(f"{name} {typ}" for name, typ in columns)


# --- table specs: every table is declared ONCE, single-node and cluster DDL are generated from it ---

#: In cluster mode the data lives in ``<name>_local`` on every node; ``<name>`` is the Distributed table.
LOCAL_SUFFIX = "_local"


@dataclass(frozen=True, slots=True)
class TableSpec:
    """One MergeTree-family table: what single-node DDL, cluster DDL and the tests are generated from.

    ``columns`` are (name, type) in insert order; ``default_columns`` are (name, "Type DEFAULT expr")
    columns the store never writes. ``engine`` is written as on one node (``ReplacingMergeTree(version)``,
    ``AggregatingMergeTree()``, ``MergeTree()``); cluster mode makes it ``Replicated<engine>``.
    ``shard_key`` picks the shard of a row inserted through the Distributed table: it must depend only
    on columns of ``order_by`` (see "Cluster mode" in the module docstring).
    """

    name: str
    columns: tuple[tuple[str, str], ...]
    engine: str
    order_by: str
    partition_by: str | None = None
    ttl_column: str | None = None
    shard_key: str = "cityHash64(id)"
    default_columns: tuple[tuple[str, str], ...] = ()

    @property
    def local_name(self) -> str:
        return self.name + LOCAL_SUFFIX

    @property
    def all_columns(self) -> tuple[tuple[str, str], ...]:
        return self.columns + self.default_columns


@dataclass(frozen=True, slots=True)
class ViewSpec:
    """A materialized view ``source`` -> ``target`` (table names); ``select`` reads ``{source}``.

    In cluster mode it reads and writes the LOCAL tables of each node: a row inserted through the
    Distributed ``source`` lands in one shard's ``<source>_local``, the view fires on that node and
    writes that node's ``<target>_local``; reading the Distributed ``target`` merges all shards.
    """

    name: str
    source: str
    target: str
    select: str


#: Every table and view of the schema, in creation order. Add a table with :func:`declare_table`
#: and it gets single-node DDL, cluster DDL, TTL and the DDL tests without further work.
TABLE_SPECS: dict[str, TableSpec] = {}
VIEW_SPECS: dict[str, ViewSpec] = {}


def declare_table(spec: TableSpec) -> TableSpec:
    if spec.name in TABLE_SPECS:
        raise ValueError(f"table {spec.name} is declared twice")
    TABLE_SPECS[spec.name] = spec
    return spec


def declare_view(spec: ViewSpec) -> ViewSpec:
    if spec.name in VIEW_SPECS or spec.source not in TABLE_SPECS or spec.target not in TABLE_SPECS:
        raise ValueError(f"view {spec.name}: declared twice, or its source/target table is not declared")
    VIEW_SPECS[spec.name] = spec
    return spec


_SENTIMENTS = ("negative", "neutral", "positive")

#: THE time axis of items (issue 26): when the source says it was published, else when finsent first saw it.
#: Computed by the store at insert (a DEFAULT, so the worker's insert is unchanged and an ``items`` table from
#: before issue 26 gets the column with ``ALTER TABLE ... ADD COLUMN``, computed for its old rows too).
EVENT_TIME_DEFAULT = "DateTime('UTC') DEFAULT ifNull(published_at, ingested_at)"

# ORDER BY id and no partition: FINAL collapses an id whatever the days it arrived on (module docstring)
declare_table(
    TableSpec(
        ITEMS,
        ITEM_COLUMNS,
        "ReplacingMergeTree(version)",
        order_by="id",
        partition_by=None,
        ttl_column="event_time",
        default_columns=(("stored_at", "DateTime('UTC') DEFAULT now()"), ("event_time", EVENT_TIME_DEFAULT)),
    )
)
declare_table(
    TableSpec(
        TOPIC_MINUTE,
        (
            ("minute", "DateTime('UTC')"),
            ("topic", "LowCardinality(String)"),
            ("model_version", "LowCardinality(String)"),
            ("items", "AggregateFunction(uniqExact, String)"),
            *((s, "AggregateFunction(uniqExactIf, String, UInt8)") for s in _SENTIMENTS),
        ),
        "AggregatingMergeTree()",
        order_by="(topic, minute, model_version)",
        partition_by="toYYYYMM(minute)",
        # written only by the view, on each node; a key is given so the Distributed table accepts inserts too
        ttl_column="minute",
        shard_key="cityHash64(topic)",
    )
)
declare_view(
    ViewSpec(
        TOPIC_MINUTE_MV,
        source=ITEMS,
        target=TOPIC_MINUTE,
        select="""SELECT toStartOfMinute(ingested_at) AS minute, topic, model_version,
    uniqExactState(id) AS items,
    """
        + ",\n    ".join(f"uniqExactIfState(id, toUInt8(sentiment = '{s}')) AS {s}" for s in _SENTIMENTS)
        + """
FROM {source}
GROUP BY minute, topic, model_version""",
    )
)
declare_table(
    TableSpec(
        ALERTS,
        ALERT_COLUMNS,
        "ReplacingMergeTree(version)",
        order_by="id",
        partition_by="toYYYYMM(window_start)",
        ttl_column="fired_at",
    )
)

#: (name, type) of ``scores`` columns: the score part of an ``items`` row plus what locates the item.
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
declare_table(
    TableSpec(
        SCORES,
        SCORE_COLUMNS,
        "ReplacingMergeTree(version)",
        order_by="(toStartOfDay(ingested_at), id, model_version)",
        partition_by="toYYYYMM(ingested_at)",
        ttl_column="ingested_at",
    )
)


def ttl_expression(table: str, retention_days: int) -> str:
    return f"{TABLE_SPECS[table].ttl_column} + toIntervalDay({int(retention_days)})"


def _ttl_clause(spec: TableSpec, caps: Capabilities, retention_days: int) -> str:
    if caps.ttl and retention_days > 0 and spec.ttl_column:
        return f"\nTTL {ttl_expression(spec.name, retention_days)}"
    return ""


def _on_cluster(cluster: str | None) -> str:
    return f" ON CLUSTER {check_cluster_name(cluster)}" if cluster else ""


def replicated_engine(spec: TableSpec, db: str) -> str:
    """``ReplacingMergeTree(version)`` -> ``ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db/items',
    '{replica}', version)``: one ZooKeeper path per shard and table; each node fills the macros from its config."""
    name, _, args = spec.engine.partition("(")
    args = args.rstrip(")").strip()
    path = f"'/clickhouse/tables/{{shard}}/{db}/{spec.name}', '{{replica}}'"
    return f"Replicated{name}({path}{', ' + args if args else ''})"


def table_statements(
    spec: TableSpec, db: str, caps: Capabilities, retention_days: int = 0, cluster: str | None = None
) -> list[str]:
    """One table's DDL: the table itself, or (cluster) the replicated local table and the Distributed one."""
    name = spec.local_name if cluster else spec.name
    engine = replicated_engine(spec, db) if cluster else spec.engine
    partition = f"\nPARTITION BY {spec.partition_by}" if spec.partition_by else ""
    out = [
        f"""CREATE TABLE IF NOT EXISTS {db}.{name}{_on_cluster(cluster)} (
    {_columns_sql(spec.all_columns)}
) ENGINE = {engine}{partition}
ORDER BY {spec.order_by}{_ttl_clause(spec, caps, retention_days)}"""
    ]
    if cluster:
        out.append(f"""CREATE TABLE IF NOT EXISTS {db}.{spec.name}{_on_cluster(cluster)} (
    {_columns_sql(spec.all_columns)}
) ENGINE = Distributed({cluster}, {db}, {spec.local_name}, {spec.shard_key})""")
    return out


def view_statement(view: ViewSpec, db: str, cluster: str | None = None) -> str:
    suffix = LOCAL_SUFFIX if cluster else ""
    select = view.select.replace("{source}", f"{db}.{view.source}{suffix}")
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{view.name}{_on_cluster(cluster)} "
        f"TO {db}.{view.target}{suffix} AS\n{select}"
    )


def create_statements(db: str, caps: Capabilities, retention_days: int = 0, cluster: str | None = None) -> list[str]:
    """DDL that creates the database, every declared table and view; every statement is idempotent.

    With ``cluster`` every statement is ``ON CLUSTER cluster`` and each table becomes a replicated
    ``<name>_local`` plus a Distributed ``<name>`` over it (module docstring, "Cluster mode").
    """
    db = check_database_name(db)
    out = [f"CREATE DATABASE IF NOT EXISTS {db}{_on_cluster(cluster)}"]
    for spec in TABLE_SPECS.values():
        out += table_statements(spec, db, caps, retention_days, cluster)
    out += [view_statement(view, db, cluster) for view in VIEW_SPECS.values()]
    return out


def ttl_statements(
    db: str, caps: Capabilities, retention_days: int, engine_full: dict[str, str], cluster: str | None = None
) -> list[str]:
    """ALTERs that bring existing tables' TTL in line with ``retention_days`` (nothing if already so).

    ``engine_full`` maps table name to ``system.tables.engine_full``. Only run where ``caps.ttl``.
    In cluster mode the TTL lives on the local tables and is altered ``ON CLUSTER``.
    """
    for warning in layout_warnings(db, engine_full, cluster):
        log.warning("store: %s", warning)
    if not caps.ttl:
        return []
    out = []
    for spec in TABLE_SPECS.values():
        if not spec.ttl_column:
            continue
        table = spec.local_name if cluster else spec.name
        current = engine_full.get(table, "")
        has_ttl = " TTL " in f" {current} "
        if retention_days > 0 and ttl_expression(spec.name, retention_days) not in current:
            out.append(
                f"ALTER TABLE {db}.{table}{_on_cluster(cluster)} MODIFY TTL {ttl_expression(spec.name, retention_days)}"
            )
        elif retention_days <= 0 and has_ttl:
            out.append(f"ALTER TABLE {db}.{table}{_on_cluster(cluster)} REMOVE TTL")
    return out


def missing_column_statements(db: str, existing: dict[str, set[str]], cluster: str | None = None) -> list[str]:
    """``ALTER TABLE ... ADD COLUMN`` for every declared column a table created by an older finsent lacks
    (``existing`` maps table name to its column names, from ``system.columns``; absent tables are skipped:
    ``CREATE`` made them whole). Old rows read the column's DEFAULT (``event_time``) or the type's zero.
    18.16 has ``ADD COLUMN`` but not ``IF NOT EXISTS`` on it, hence the check against ``system.columns``."""
    out = []
    for spec in TABLE_SPECS.values():
        names = [spec.local_name, spec.name] if cluster else [spec.name]
        for table in names:
            have = existing.get(table)
            if have is None:
                continue
            out += [
                f"ALTER TABLE {db}.{table}{_on_cluster(cluster)} ADD COLUMN {name} {typ}"
                for name, typ in spec.all_columns
                if name not in have
            ]
    return out


#: What an ``items`` table created before issue 22 has in its ``engine_full``: a day prefix in the sorting
#: key and/or monthly partitions, so FINAL collapses an id only within one day or month.
_OLD_ITEMS_LAYOUT = re.compile(r"toStartOfDay\(ingested_at\)|PARTITION BY toYYYYMM\(ingested_at\)")


def layout_warnings(db: str, engine_full: dict[str, str], cluster: str | None = None) -> list[str]:
    """Warnings for tables whose layout in the database is not the declared one, with the statements that
    rebuild them; ``engine_full`` maps table name to ``system.tables.engine_full``.

    Today: an ``items`` table from before issue 22 (day-prefixed key, monthly partitions) stores an item
    that arrives on two days twice. Rebuilding copies every row, so it is left to the operator (with the
    writers stopped), not done at start.
    """
    table = ITEMS + (LOCAL_SUFFIX if cluster else "")
    current = engine_full.get(table, "")
    if not _OLD_ITEMS_LAYOUT.search(current):
        return []
    spec = TABLE_SPECS[ITEMS]
    if cluster:
        how = (
            f"on each shard, rebuild {db}.{table} as {replicated_engine(spec, db).replace(ITEMS, ITEMS + '_v2')} "
            f"ORDER BY {spec.order_by} (no PARTITION BY), copy the rows, and swap the names; see the statements "
            "for one node"
        )
    else:
        create = " ".join(table_statements(replace(spec, name=ITEMS + "_v2"), db, Capabilities((18, 16)))[0].split())
        how = (
            "with the workers stopped run: "
            f"{create}; "
            f"INSERT INTO {db}.items_v2 SELECT * FROM {db}.items; "
            f"DROP TABLE {db}.{TOPIC_MINUTE_MV}; "
            f"RENAME TABLE {db}.items TO {db}.items_old, {db}.items_v2 TO {db}.items; "
            f"then start a worker (it re-creates {TOPIC_MINUTE_MV} and the TTL) and DROP TABLE {db}.items_old"
        )
    return [
        f"{db}.{table} has the layout from before issue 22 ({current[:160]}): an item that arrives on two "
        f"days (or months) is stored, and counted, twice. To rebuild it {how}"
    ]


# --- row encoding -------------------------------------------------------------------------------


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


# --- queries (``{db}`` is formatted in once; values are always ``{name:Type}`` parameters) -------

SERVER_VERSION = "SELECT version()"

TABLE_ENGINES = "SELECT name, engine_full FROM system.tables WHERE database = {db:String}"
TABLE_COLUMNS = "SELECT table, name FROM system.columns WHERE database = {db:String}"

COUNT_FINAL = "SELECT count() FROM {db}.items FINAL WHERE ingested_at >= toDateTime({since:UInt32}, 'UTC')"
COUNT_PHYSICAL = "SELECT count() FROM {db}.items WHERE ingested_at >= toDateTime({since:UInt32}, 'UTC')"
COUNT_UNIQUE = "SELECT uniqExact(id) FROM {db}.items WHERE ingested_at >= toDateTime({since:UInt32}, 'UTC')"

# A filter on ingested_at next to FINAL sees at most one row per id either way (an id that arrived
# on several days has one row per arrival before FINAL; whichever are in the window, FINAL keeps one),
# so counts never double; filters on labels that a re-score can change (sentiment, topic) must be
# applied *after* FINAL picked the newest row, hence the subqueries below.
# Series and top lists are on EVENT time (issue 26): a replay of last month lands in last month's buckets.
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

ALERT_SELECT_COLUMNS = tuple(name for name, _ in ALERT_COLUMNS if name != "version")

ALERTS_SINCE = f"""
SELECT {", ".join(ALERT_SELECT_COLUMNS)}
FROM {{db}}.alerts FINAL
WHERE fired_at >= toDateTime({{since:UInt32}}, 'UTC')
ORDER BY fired_at DESC, id"""


def render(template: str, db: str) -> str:
    """Put the (validated) database name into a query template; parameters stay as placeholders."""
    return template.replace("{db}", check_database_name(db))


# --- re-scoring and the score history (``finsent rescore``, ``finsent query compare``) -----------

ITEM_NAMES = tuple(name for name, _ in ITEM_COLUMNS)

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


def score_history_row(item_row: Sequence[Any]) -> tuple[Any, ...]:
    """The ``scores`` row (in :data:`SCORE_COLUMNS` order) of an ``items`` row (:data:`ITEM_NAMES` order),
    as read back (times as datetimes) or as :func:`scored_row` encodes it: how ``rescore`` records scores."""
    d = dict(zip(ITEM_NAMES, item_row, strict=True))
    return tuple(_split_ms(v)[0] if isinstance(v, datetime) else v for v in (d[name] for name, _ in SCORE_COLUMNS))


def score_row(s: ScoredItem) -> tuple[Any, ...]:
    """The ``scores`` row of a scored item."""
    return score_history_row(scored_row(s))


# --- human labels (``finsent label ...``), the annotation queue and the drift report -------------
#
# ``labels`` keeps the NEWEST correction per (task, id): ReplacingMergeTree(version) with
# version = labelled_at in epoch ms, ORDER BY (task, id), no partition (a small table: people
# write it) and no TTL (labels outlive the items they were made on; that is why the text is
# copied in). Why not an append-only log: training wants exactly one label per item and task, and
# an annotator who corrects a correction means the later one; ``labels FINAL`` gives that without
# argMax in every reader. Re-importing a file is idempotent twice over: the CLI skips rows whose
# label and note equal the stored ones (nothing is written), and a row written again would only
# replace its own (task, id). The earlier corrections of an item are not kept.

LABELS = "labels"

#: (name, type) of ``labels`` columns, in insert order.
LABEL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "String"),  # the item id, or stable_id(text) for text that is not in the store
    ("task", "LowCardinality(String)"),  # 'sentiment' | 'topic'
    ("label", "String"),  # the human's label (the new one)
    ("old_label", "String"),  # what the model had said ('' when the item is not in the store)
    ("text", "String"),
    ("labelled_by", "LowCardinality(String)"),
    ("labelled_at", "DateTime('UTC')"),
    ("labelled_ms", "UInt16"),
    ("note", "String"),
    ("origin", "LowCardinality(String)"),  # 'cli' or 'import:<file name>'
    ("version", "UInt64"),  # labelled_at in epoch ms: the newest correction wins
)
declare_table(TableSpec(LABELS, LABEL_COLUMNS, "ReplacingMergeTree(version)", order_by="(task, id)"))


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

ITEMS_BY_ID = """
SELECT id, sentiment, topic, text, model_version FROM {db}.items FINAL
WHERE has({ids:Array(String)}, id)"""

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


# The drift report: the model versions that scored the window, then one pass over both periods
# (reference [since, split), window [split, until)) for one version, grouped by labels. The
# version filter applies after FINAL (a re-score changes it). Confidence = the top sentiment
# probability of an item.
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


# --- the model registry's mirror (``finsent models ...``, ``finsent retrain``) -----------------
#
# ``model_versions`` mirrors the registry directory (finsent.models.registry), which stays the source
# of truth: one row per version, rewritten whole after every registry change with a newer ``synced``
# (epoch ms), so ``FINAL`` shows each version's latest aliases and a store that missed a change catches
# up with the next one. Small (people and schedules write it): no partition, no TTL.

MODEL_VERSIONS = "model_versions"

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
declare_table(
    TableSpec(
        MODEL_VERSIONS,
        MODEL_VERSION_COLUMNS,
        "ReplacingMergeTree(synced)",
        order_by="version",
        shard_key="cityHash64(version)",
    )
)

MODEL_VERSIONS_SELECT = f"""
SELECT {", ".join(name for name, _ in MODEL_VERSION_COLUMNS)} FROM {{db}}.model_versions FINAL
ORDER BY version"""


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


# --- feature modules that declare their own tables into this schema (issue 23's direction) -------------------
# imported last: each calls declare_table() above, so create_statements, the cluster DDL, TTL and the column
# migration include their tables
from finsent.stream.store import mentions as _mentions  # noqa: E402,F401  (registers ``mentions``)
