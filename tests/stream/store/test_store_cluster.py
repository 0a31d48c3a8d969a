"""Cluster-mode DDL, checked for EVERY table the schema declares (no server needed).

The schema module generates single-node and cluster DDL from one :class:`TableSpec` per table, so
these tests iterate over ``schema.TABLE_SPECS``/``VIEW_SPECS``: a table added later is covered
without touching this file, and a table created by hand-written DDL (bypassing the specs) fails
``test_every_created_table_is_declared``. The real two-node run is tests/stream/store/test_store_cluster_live.py.
"""

from __future__ import annotations

import re

import pytest

from finsent.core.errors import ConfigError
from finsent.core.settings import load_settings
from finsent.stream.store import open_store, schema

DB = "fs"
CLUSTER = "fs_cluster"
OLD = schema.Capabilities((18, 16, 1))
NEW = schema.Capabilities((26, 1))
_CREATE = re.compile(r"CREATE (TABLE|MATERIALIZED VIEW|DATABASE) IF NOT EXISTS ([\w.]+)")


def _by_name(statements: list[str]) -> dict[str, str]:
    out = {}
    for stmt in statements:
        m = _CREATE.match(stmt)
        assert m, stmt
        assert m.group(2) not in out, f"{m.group(2)} created twice"
        out[m.group(2)] = stmt
    return out


def _columns(stmt: str) -> list[str]:
    body = stmt.split(" (\n", 1)[1].split("\n) ENGINE", 1)[0]
    return [line.strip().rstrip(",") for line in body.splitlines()]


def _engine(stmt: str) -> str:
    return stmt.split(") ENGINE = ", 1)[1].split("\n", 1)[0]


@pytest.fixture(params=[OLD, NEW], ids=["18.16", "26.x"])
def caps(request: pytest.FixtureRequest) -> schema.Capabilities:
    return request.param


def test_the_specs_cover_the_known_tables() -> None:
    assert {schema.ITEMS, schema.TOPIC_MINUTE, schema.ALERTS} <= set(schema.TABLE_SPECS)
    assert schema.TOPIC_MINUTE_MV in schema.VIEW_SPECS


def test_every_created_table_is_declared(caps: schema.Capabilities) -> None:
    single = _by_name(schema.create_statements(DB, caps))
    declared = {f"{DB}.{n}" for n in (*schema.TABLE_SPECS, *schema.VIEW_SPECS)}
    assert set(single) == {DB} | declared, "a table was created without declare_table/declare_view"
    cluster = _by_name(schema.create_statements(DB, caps, cluster=CLUSTER))
    assert set(cluster) == {DB} | declared | {f"{DB}.{n}_local" for n in schema.TABLE_SPECS}


def test_single_node_ddl_has_no_cluster_parts(caps: schema.Capabilities) -> None:
    for stmt in schema.create_statements(DB, caps, retention_days=3):
        assert "ON CLUSTER" not in stmt and "Replicated" not in stmt and "Distributed" not in stmt
        assert "_local" not in stmt, stmt


def test_every_cluster_statement_is_on_cluster(caps: schema.Capabilities) -> None:
    for stmt in schema.create_statements(DB, caps, retention_days=3, cluster=CLUSTER):
        head = stmt.split("(", 1)[0].split(" AS\n", 1)[0]
        assert f" ON CLUSTER {CLUSTER}" in head, stmt


@pytest.mark.parametrize("name", list(schema.TABLE_SPECS))
def test_local_table_is_replicated_with_shard_and_replica_macros(name: str, caps: schema.Capabilities) -> None:
    spec = schema.TABLE_SPECS[name]
    single = _by_name(schema.create_statements(DB, caps, retention_days=3))[f"{DB}.{name}"]
    local = _by_name(schema.create_statements(DB, caps, retention_days=3, cluster=CLUSTER))[f"{DB}.{name}_local"]
    engine, args = _engine(single).split("(", 1)
    args = args.rstrip(")")
    zk = f"'/clickhouse/tables/{{shard}}/{DB}/{name}', '{{replica}}'"
    assert _engine(local) == f"Replicated{engine}({zk}{', ' + args if args else ''})"
    assert engine.endswith("MergeTree")
    # everything after the engine (PARTITION BY, ORDER BY, TTL) is the single-node table's
    assert local.split(") ENGINE = ", 1)[1].split("\n", 1)[1] == single.split(") ENGINE = ", 1)[1].split("\n", 1)[1]
    assert f"ORDER BY {spec.order_by}" in local


@pytest.mark.parametrize("name", list(schema.TABLE_SPECS))
def test_distributed_table_over_the_local_one_with_the_same_columns(name: str, caps: schema.Capabilities) -> None:
    spec = schema.TABLE_SPECS[name]
    single = _by_name(schema.create_statements(DB, caps))[f"{DB}.{name}"]
    cluster = _by_name(schema.create_statements(DB, caps, cluster=CLUSTER))
    dist, local = cluster[f"{DB}.{name}"], cluster[f"{DB}.{name}_local"]
    assert _engine(dist) == f"Distributed({CLUSTER}, {DB}, {name}_local, {spec.shard_key})"
    assert _columns(dist) == _columns(local) == _columns(single)
    assert [c.split()[0] for c in _columns(single)] == [c for c, _ in spec.all_columns]


@pytest.mark.parametrize("name", list(schema.TABLE_SPECS))
def test_shard_key_depends_only_on_the_dedup_identity(name: str) -> None:
    """Versions of one row must land on one shard, or FINAL (per shard) cannot collapse them."""
    spec = schema.TABLE_SPECS[name]
    columns = {c for c, _ in spec.all_columns}
    used = set(re.findall(r"[A-Za-z_]\w*", spec.shard_key)) & columns
    assert used, f"{name}: shard key {spec.shard_key} uses no column (rand() would split an id across shards)"
    assert used <= set(re.findall(r"[A-Za-z_]\w*", spec.order_by)), f"{name}: shard key outside ORDER BY"
    assert "rand" not in spec.shard_key


def test_items_and_alerts_shard_by_id() -> None:
    assert schema.TABLE_SPECS[schema.ITEMS].shard_key == "cityHash64(id)"
    assert schema.TABLE_SPECS[schema.ALERTS].shard_key == "cityHash64(id)"


@pytest.mark.parametrize("name", list(schema.VIEW_SPECS))
def test_views_read_and_write_the_local_tables(name: str) -> None:
    view = schema.VIEW_SPECS[name]
    single = _by_name(schema.create_statements(DB, OLD))[f"{DB}.{name}"]
    stmt = _by_name(schema.create_statements(DB, OLD, cluster=CLUSTER))[f"{DB}.{name}"]
    assert f" TO {DB}.{view.target}_local AS" in stmt
    assert f"FROM {DB}.{view.source}_local" in stmt
    assert f" TO {DB}.{view.target} AS" in single
    assert re.search(rf"FROM {DB}\.{view.source}\b(?!_local)", single), single


def test_ttl_goes_on_the_local_tables_on_cluster() -> None:
    stmts = schema.ttl_statements(DB, NEW, 7, {}, cluster=CLUSTER)
    with_ttl = [s for s in schema.TABLE_SPECS.values() if s.ttl_column]
    assert len(stmts) == len(with_ttl)
    for spec, stmt in zip(with_ttl, stmts, strict=True):
        assert stmt.startswith(f"ALTER TABLE {DB}.{spec.name}_local ON CLUSTER {CLUSTER} MODIFY TTL {spec.ttl_column}")
    assert schema.ttl_statements(DB, OLD, 7, {}, cluster=CLUSTER) == []
    local = _by_name(schema.create_statements(DB, NEW, retention_days=7, cluster=CLUSTER))
    assert all("TTL" not in local[f"{DB}.{s.name}"] for s in with_ttl), "TTL belongs on the local table only"


@pytest.mark.parametrize("bad", ["", "a-b", "x; DROP TABLE y", "1abc"])
def test_cluster_names_are_identifiers(bad: str) -> None:
    with pytest.raises(ValueError):
        schema.create_statements(DB, OLD, cluster=bad or "-")
    with pytest.raises(ConfigError, match="FINSENT_CLICKHOUSE_CLUSTER"):
        load_settings(clickhouse_cluster=bad or "-")


def test_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINSENT_CLICKHOUSE_CLUSTER", "prod_ch")
    assert load_settings().storage.clickhouse_cluster == "prod_ch"
    monkeypatch.delenv("FINSENT_CLICKHOUSE_CLUSTER")
    assert load_settings().storage.clickhouse_cluster is None


def test_the_server_store_carries_the_cluster_and_chdb_refuses_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = open_store("clickhouse://default@127.0.0.1:1/db?connect_timeout=1", cluster=CLUSTER)
    try:
        assert store.cluster == CLUSTER  # type: ignore[attr-defined]
    finally:
        store.close()
    with pytest.raises(ConfigError, match="needs a clickhouse:// server"):
        open_store(f"chdb://{tmp_path}", cluster=CLUSTER)
