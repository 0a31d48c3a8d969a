"""DDL: every table declared once, per feature, and the statements generated from the declarations.

A table is a :class:`TableSpec` (name, columns from :mod:`.rows`, engine, order, partition, TTL column, shard
key) registered with :func:`declare_table`; a materialized view is a :class:`ViewSpec` (:func:`declare_view`).
The single-node DDL, the cluster DDL, TTL, the column migration of tables an older finsent created, and
``tests/stream/store/test_store_cluster.py`` all iterate over :data:`TABLE_SPECS` / :data:`VIEW_SPECS`, so a
declared table needs no further work, on one node or on a cluster. Why each table is laid out as it is stands
next to its declaration below; the engine-wide rules (18.16 and modern servers, cluster mode) are in the
package docstring (:mod:`finsent.stream.store.schema`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from finsent.stream.store.schema.rows import (
    ALERT_COLUMNS,
    ITEM_COLUMNS,
    LABEL_COLUMNS,
    MENTION_COLUMNS,
    MODEL_VERSION_COLUMNS,
    SCORE_COLUMNS,
    SENTIMENTS,
    TOPIC_MINUTE_COLUMNS,
)

# the schema's one logger, under the package's name (what operators' logging configuration names)
log = logging.getLogger("finsent.stream.store.schema")

ITEMS = "items"
TOPIC_MINUTE = "topic_minute"
TOPIC_MINUTE_MV = "topic_minute_mv"
ALERTS = "alerts"
SCORES = "scores"
LABELS = "labels"
MODEL_VERSIONS = "model_versions"
MENTIONS = "mentions"
TABLES = (ITEMS, TOPIC_MINUTE, ALERTS)

_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


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


def render(template: str, db: str) -> str:
    """Put the (validated) database name into a query template; parameters stay as placeholders."""
    return template.replace("{db}", check_database_name(db))


def _columns_sql(columns: Sequence[tuple[str, str]]) -> str:
    return ",\n    ".join(f"{name} {typ}" for name, typ in columns)


# --- what the store asks the server about itself (ensure_schema) ---------------------------------------------

SERVER_VERSION = "SELECT version()"
TABLE_ENGINES = "SELECT name, engine_full FROM system.tables WHERE database = {db:String}"
TABLE_COLUMNS = "SELECT table, name FROM system.columns WHERE database = {db:String}"


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
    on columns of ``order_by`` (see "Cluster mode" in the package docstring).
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


# --- the tables, per feature (creation order: the order below) -----------------------------------------------

# ``items``: one row per scored item. ReplacingMergeTree(version), ORDER BY id, no PARTITION BY, TTL on event_time
# where the server has TTL.
# * Idempotent by item id, whatever the days: a ReplacingMergeTree only collapses rows with equal sorting key
#   *within one partition*, so ``items`` is sorted by ``id`` alone and has ONE partition. The same id arriving on
#   several days (a replay re-run tomorrow, a client retry across midnight, two push replicas with per-pod dedup
#   state) is one row under ``FINAL``: the one with the highest ``version``, i.e. the last scored, with that
#   arrival's ``ingested_at``. Neither the topic nor the sentiment is in the key: a re-score may change them and
#   must still replace the row. Retention does not need time partitions: a TTL deletes rows in merges (19.6+; on
#   18.16, ``ALTER TABLE items DELETE WHERE ingested_at < ...`` by hand).
# * What that costs, and why it is paid: until issue 22 the key was ``(toStartOfDay(ingested_at), id)`` with
#   monthly partitions, which let time-window queries (``WHERE ingested_at >= ...``) read only the days they ask
#   for (``count() FINAL`` of the last hour over 1M items in 30 days took 14-28x less time than with
#   ``ORDER BY id``, bench/ARCHIVE.md "Store") -- but it stored an item arriving on three days three times
#   (``/v1/count`` said 11 rows for 9 ids). Correct counts come first; a window query now reads the whole table:
#   on chdb, 1M items over 30 days, ``count() FINAL`` of the last hour took a median of 187 ms against 11 ms with
#   the old layout, the whole table 297 vs 320 ms (5 and 3 runs, interleaved, 2-core Xeon at load 8; long
#   dashboards can read ``topic_minute`` instead). A database created with the old layout is detected at start
#   and a WARNING gives the statements that rebuild it (:func:`layout_warnings`).
# * Re-scoring: a newer model's row has a later ``scored_at`` and so a higher ``version``; queries read
#   ``items FINAL`` and see exactly one row per id, the newest. (Merges collapse duplicates in the background at
#   an unspecified time, so queries must not rely on them: always use FINAL.)
# * Event time (issue 26) is computed by the store at insert (a DEFAULT). Nothing is trusted blindly before that:
#   the worker's decoder refuses an item whose ``published_at`` or ``ingested_at`` is more than 5 minutes ahead
#   of its clock (dead letter ``bad_time``, :data:`finsent.core.events.MAX_FUTURE_SKEW`), and a ``published_at``
#   the ingesters cannot read is kept as null (event time falls back to ingested_at;
#   ``finsent.ingest.normalize.to_utc``), while one that names no real instant is refused as ``bad_time`` by push
#   and replay. Lateness: the store takes any late row into its bucket (queries re-read ``items FINAL``); what
#   counts as too late for an alert is the entity detector's ``lateness_s`` (``finsent.alerts.entity_detector``,
#   1 h by default: a bucket is tested once the newest event time is an hour past its end; a mention arriving
#   later is stored and shown by every query, but the detector counts it only as ``late`` and never re-tests a
#   closed bucket, so an alert once raised stays as it was). ``count`` (and ``query count``), ``rescore``, the
#   label queue and drift still select on ``ingested_at``: they are about what finsent received, not when it
#   happened. ``topic_minute`` stays on ingestion minutes (a materialized view cannot be changed in place);
#   ``Store.topic_counts`` reads ``items`` on event time.

#: THE time axis of items (issue 26): when the source says it was published, else when finsent first saw it.
#: Computed by the store at insert (a DEFAULT, so the worker's insert is unchanged and an ``items`` table from
#: before issue 26 gets the column with ``ALTER TABLE ... ADD COLUMN``, computed for its old rows too).
EVENT_TIME_DEFAULT = "DateTime('UTC') DEFAULT ifNull(published_at, ingested_at)"

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

# ``topic_minute``: per-topic per-minute distinct-id counts (AggregatingMergeTree, fed by the materialized view
# ``topic_minute_mv`` on every insert into ``items``). Cheap to read for long dashboards, and exact under
# redelivery (uniqExact of ids), but a materialized view only ever sees inserts: an item re-scored into another
# topic or sentiment is counted under both labels there. ``Store.topic_counts`` therefore reads ``items FINAL``
# (exact under re-scoring); bench/ARCHIVE.md has the cost of each.
declare_table(
    TableSpec(
        TOPIC_MINUTE,
        TOPIC_MINUTE_COLUMNS,
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
        + ",\n    ".join(f"uniqExactIfState(id, toUInt8(sentiment = '{s}')) AS {s}" for s in SENTIMENTS)
        + """
FROM {source}
GROUP BY minute, topic, model_version""",
    )
)

# ``alerts``: one row per alert, ReplacingMergeTree(version) with version = fired_at in epoch ms, ORDER BY id: a
# re-fired alert replaces the earlier row.
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

# ``scores``: the score history (``finsent rescore``, ``finsent query compare``), one row per (item, model
# version), ReplacingMergeTree(version), PARTITION BY toYYYYMM(ingested_at), ORDER BY (toStartOfDay(ingested_at),
# id, model_version). ``items`` keeps only the newest score of an item, which is what every default query must
# see; comparing two model versions on the same items needs both scores, so they are kept here, keyed by
# (id, model_version), narrow (id, times, probabilities, labels; no text). Who writes it: ``rescore`` only, two
# rows per re-scored item -- the score it replaces (read back from ``items``) and the new one. That is everything
# compare needs: an item has two versions' scores exactly when it was re-scored, and each re-score records both
# sides, whatever scored the item first (worker, hot-reloaded worker, an earlier re-score). The alternative, a
# materialized view on ``items`` that copies every stored row into ``scores``, would also record the worker's own
# rows, but costs the worker on every insert: 128-row inserts took 49 vs 40 ms (median, +23%) on
# clickhouse-server 18.16 and 210 vs 144 ms (+46%) on chdb with the view vs without it, interleaved runs on a busy
# machine (load average 12-15 on 2 cores), for rows compare would only read once they are re-scored. Keeping old
# versions as extra rows in ``items`` (model_version in the key) would make every default query pick the newest
# per id with ``argMax`` instead of ``FINAL``. ``scores`` follows the same retention (TTL) as ``items``.
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

# ``labels``: human corrections (``finsent label ...``), read by training and the annotation queue. It keeps the
# NEWEST correction per (task, id): ReplacingMergeTree(version) with version = labelled_at in epoch ms, ORDER BY
# (task, id), no partition (a small table: people write it) and no TTL (labels outlive the items they were made
# on; that is why the text is copied in). Why not an append-only log: training wants exactly one label per item
# and task, and an annotator who corrects a correction means the later one; ``labels FINAL`` gives that without
# argMax in every reader. Re-importing a file is idempotent twice over: the CLI skips rows whose label and note
# equal the stored ones (nothing is written), and a row written again would only replace its own (task, id). The
# earlier corrections of an item are not kept.
declare_table(TableSpec(LABELS, LABEL_COLUMNS, "ReplacingMergeTree(version)", order_by="(task, id)"))

# ``model_versions``: the model registry's mirror (``finsent models ...``, ``finsent retrain``). The registry
# directory (finsent.models.registry) stays the source of truth: one row per version, rewritten whole after every
# registry change with a newer ``synced`` (epoch ms), so ``FINAL`` shows each version's latest aliases and a store
# that missed a change catches up with the next one. Small (people and schedules write it): no partition, no TTL.
declare_table(
    TableSpec(
        MODEL_VERSIONS,
        MODEL_VERSION_COLUMNS,
        "ReplacingMergeTree(synced)",
        order_by="version",
        shard_key="cityHash64(version)",
    )
)

# ``mentions``: one row per (item, entity), what per-entity series, top lists, listings and the backtest read.
# ReplacingMergeTree(version), no PARTITION BY, ORDER BY (entity_key, item_id), TTL on event_time.
# * Idempotent by (item id, entity key), whatever the days. A ReplacingMergeTree collapses equal sorting keys
#   only within one partition, so there is ONE partition (as for ``items``, issue 22): a mention redelivered,
#   replayed tomorrow or re-scored next month is one row under ``FINAL``, the highest ``version`` (scored_at in
#   epoch ms: the newest score wins).
# * Fast per entity. The sorting key starts with ``entity_key``: an entity's series, top stories and the items
#   listing by entity read only that key's granules, whatever the number of entities (the top few thousand are
#   as cheap as one). ``query top --by entity`` and the backtest read the window; they scan.
# * Rescore rewrites mentions. ``insert_scored`` writes an item's mentions with the item, in the same call; a
#   re-score writes new rows with a higher version. An entity the new model no longer finds would keep its old
#   row, so :meth:`~finsent.stream.store.sqlstore.SqlStore.insert_scored` with ``replace_mentions=True`` (what
#   ``finsent rescore`` passes) writes a tombstone (``deleted = 1``) for it; every query filters ``deleted = 0``
#   *after* ``FINAL`` picked the newest row. The worker does not look old keys up (one more query per batch); a
#   redelivery scored by a hot-reloaded model can so leave an entity the new model dropped until the next rescore.
# * Novelty and cluster are the caller's. Story clusters and novelty (``finsent.alerts.novelty``) sit in the
#   alerts layer, above ``stream``; stages import downwards only, so the store cannot compute them at insert.
#   ``novelty`` is 100 (novel) and ``cluster_id`` '' (unknown) unless the caller passes them
#   (:func:`~.rows.mention_rows` ``stories``); the backtest (``finsent alerts backtest``,
#   :mod:`finsent.alerts.backtest`) recomputes both from the stored items in event-time order, which is also what
#   the live detector does, so the two agree. ``novel`` counts in the entity series are therefore only meaningful
#   where a caller stored novelty.
# * Entity key: :func:`~.rows.entity_key`. Event time is the item's: ``published_at``, else ``ingested_at``
#   (``items.event_time``), copied here so entity queries need no join.
# * Cluster mode: the shard key is ``cityHash64(item_id)`` (an ORDER BY column, so every version of a mention
#   meets on one shard); the ``IN`` subquery of the items listing by entity is local, so on a cluster it needs
#   ``distributed_product_mode`` set (not done here).
declare_table(
    TableSpec(
        MENTIONS,
        MENTION_COLUMNS,
        "ReplacingMergeTree(version)",
        order_by="(entity_key, item_id)",
        partition_by=None,
        ttl_column="event_time",
        shard_key="cityHash64(item_id)",
    )
)


# --- statements -----------------------------------------------------------------------------------------------


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
    ``<name>_local`` plus a Distributed ``<name>`` over it (package docstring, "Cluster mode").
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
    In cluster mode the TTL lives on the local tables and is altered ``ON CLUSTER``. (The store logs
    :func:`layout_warnings` from the same ``engine_full`` on every engine, with or without TTL.)
    """
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
