"""``finsent query ...`` against real stores: chdb in-process, the 18.16 server through a real subprocess."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from finsent.cli import main
from finsent.cli.query import format_duration
from finsent.core.argtypes import parse_duration
from finsent.core.errors import StoreUnavailable
from finsent.core.events import Alert, utcnow
from finsent.stream.store import open_store
from tests.fixtures.clickhouse import free_port
from tests.stream.store.test_store_engines import make_item

REPO = Path(__file__).resolve().parents[3]


def test_parse_duration() -> None:
    assert parse_duration("30s") == timedelta(seconds=30)
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration("2h") == timedelta(hours=2)
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("1w") == timedelta(days=7)
    for bad in ("", "10", "5y", "-1h", "0s", "h"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)
    shown = [format_duration(parse_duration(t)) for t in ("90s", "15m", "2h", "7d", "2w")]
    assert shown == ["90s", "15m", "2h", "7d", "14d"]


def _seed(url: str) -> list:
    t0 = utcnow() - timedelta(minutes=2)
    batch = [
        make_item(
            i, ("negative", "neutral", "positive")[i % 3], ("macro", "earnings")[i % 2], t0 + timedelta(seconds=i)
        )
        for i in range(12)
    ]
    batch.append(make_item("old", "negative", "macro", utcnow() - timedelta(days=3)))
    store = open_store(url)
    try:
        store.ensure_schema()
        store.insert_scored(batch)
        store.insert_scored(batch)  # redelivered
        now = utcnow()
        store.insert_alerts(
            [
                Alert(
                    topic="macro",
                    fired_at=now,
                    window_start=now - timedelta(minutes=1),
                    window_end=now,
                    negative=3,
                    total=4,
                    negative_share=0.75,
                    baseline_share=0.2,
                    score=4.0,
                    detector="ewma",
                )
            ]
            * 2
        )
    finally:
        store.close()
    return batch


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.integration
def test_query_commands_on_chdb(chdb_db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _cli(capsys, "--store", chdb_db_url, "query", "count", "--json")
    assert (rc, json.loads(out)) == (0, {"rows": 0, "unique_ids": 0})
    _seed(chdb_db_url)
    rc, out, _ = _cli(capsys, "--store", chdb_db_url, "query", "count", "--json")
    assert (rc, json.loads(out)) == (0, {"rows": 13, "unique_ids": 13})
    rc, out, _ = _cli(capsys, "--store", chdb_db_url, "query", "count", "--since", "1h", "--physical", "--json")
    assert json.loads(out) == {"rows": 12, "unique_ids": 12, "physical_rows": 24}

    rc, out, _ = _cli(capsys, "--store", chdb_db_url, "query", "top", "--since", "1h", "--limit", "3", "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["since_s"] == 3600
    assert {t["topic"]: (t["total"], t["negative"]) for t in doc["topics"]} == {"macro": (6, 2), "earnings": (6, 2)}
    assert [n["id"] for n in doc["negative"]] == ["item-9", "item-6", "item-3"]
    assert doc["negative"][0]["ingested_at"].endswith("Z")

    rc, out, _ = _cli(capsys, "--store", chdb_db_url, "query", "top", "--since", "7d", "--topic", "macro", "--json")
    doc = json.loads(out)
    assert [t["topic"] for t in doc["topics"]] == ["macro"] and doc["topics"][0]["total"] == 7
    assert [n["id"] for n in doc["negative"]] == ["item-6", "item-0", "item-old"]

    rc, out, _ = _cli(capsys, "--store", chdb_db_url, "query", "top", "--since", "1h")
    assert rc == 0 and "Items per topic, last 1h" in out and "macro" in out and "Newest negative items" in out

    rc, out, _ = _cli(capsys, "--store", chdb_db_url, "query", "alerts", "--json")
    alerts = json.loads(out)
    assert rc == 0 and len(alerts) == 1 and alerts[0]["topic"] == "macro" and alerts[0]["negative"] == 3

    rc, out, _ = _cli(capsys, "--store", chdb_db_url, "query", "count")
    assert rc == 0 and "13 items, 13 unique ids" in out and "0 duplicates" in out


@pytest.mark.integration
def test_query_schema_prints_the_ddl_of_this_server(clickhouse_db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _cli(capsys, "--store", clickhouse_db_url, "query", "schema")
    assert rc == 0 and "ClickHouse 18.16" in out and "TTL not supported" in out
    assert "ReplacingMergeTree(version)" in out and "CREATE MATERIALIZED VIEW IF NOT EXISTS" in out
    db = clickhouse_db_url.rsplit("/", 1)[1]
    store = open_store(clickhouse_db_url)
    try:  # it also created what it printed
        tables = {t for (t,) in store.query("SELECT name FROM system.tables WHERE database = {d:String}", {"d": db})}
    finally:
        store.close()
    from finsent.stream.store import schema

    assert tables == set(schema.TABLE_SPECS) | set(schema.VIEW_SPECS)  # every declared table and view
    assert {"items", "topic_minute", "topic_minute_mv", "alerts", "labels"} <= tables


@pytest.mark.integration
def test_query_count_subprocess_on_server(clickhouse_db_url: str) -> None:
    _seed(clickhouse_db_url)
    env = {**os.environ, "FINSENT_STORE": clickhouse_db_url, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "finsent.cli", "query", "count", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"rows": 13, "unique_ids": 13}


@pytest.mark.integration
def test_query_unavailable_store_is_one_line_without_password(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"clickhouse://default:hunter2@127.0.0.1:{free_port()}/db?connect_timeout=1"
    rc, out, err = _cli(capsys, "--store", url, "query", "count", "--json")
    assert rc == StoreUnavailable.exit_code and out == ""
    assert err.startswith("finsent: error: ") and err.count("\n") == 1 and "hunter2" not in err


def test_query_bad_duration_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["query", "count", "--since", "soon"])
    assert info.value.code == 2
    assert "not a duration" in capsys.readouterr().err
