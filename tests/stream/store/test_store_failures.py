"""Transient failures: a ClickHouse server that goes away must surface as StoreUnavailable, and the
same store object must work again once the server is back (the worker retries the same batch)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest

from finsent.core.errors import StoreInUse
from finsent.core.events import RawItem, ScoredItem, utcnow
from finsent.stream.store import StoreError, StoreUnavailable, open_store
from tests.fixtures.clickhouse import ClickHouseServer, free_port

pytestmark = pytest.mark.integration


def _items(n: int) -> list[ScoredItem]:
    now = utcnow()
    return [
        ScoredItem(
            item=RawItem(id=f"f-{i}", source="s", source_type="social", text=f"t{i}", ingested_at=now),
            sentiment="negative",
            sentiment_probs={"negative": 0.9},
            topic="macro",
            topic_prob=0.5,
            model_version="m1",
        )
        for i in range(n)
    ]


def test_server_down_raises_store_unavailable_then_recovers(tmp_path: Path) -> None:
    server = ClickHouseServer(tmp_path / "throwaway")
    server.start()
    store = open_store(server.url("fail_db"))
    try:
        store.ensure_schema()
        batch = _items(50)
        assert store.insert_scored(batch[:20]) == 20
        server.stop(kill=True)  # a crash, not a polite shutdown
        with pytest.raises(StoreUnavailable, match="unreachable"):
            store.insert_scored(batch)
        with pytest.raises(StoreUnavailable):
            store.count()
        server.start()  # same ports, same data directory
        assert store.insert_scored(batch) == 50  # the worker's retry of the same batch: no reconnect call needed
        assert store.count(timedelta(hours=1), physical=True) == {"rows": 50, "unique_ids": 50, "physical_rows": 70}
    finally:
        store.close()
        server.stop()


def test_nothing_listening_is_unavailable_with_redacted_url() -> None:
    store = open_store(f"clickhouse://default:s3cret@127.0.0.1:{free_port()}/x?connect_timeout=1")
    try:
        with pytest.raises(StoreUnavailable) as info:
            store.ensure_schema()
        assert "s3cret" not in str(info.value) and "s3cret" not in store.url_redacted
    finally:
        store.close()


def test_wrong_password_is_a_store_error(clickhouse_url: str) -> None:
    store = open_store(clickhouse_url.replace("clickhouse://default@", "clickhouse://default:wrong@"))
    try:
        with pytest.raises(StoreError) as info:
            store.count()
        assert not isinstance(info.value, StoreUnavailable)
    finally:
        store.close()


def test_chdb_refuses_a_second_data_path_clearly(chdb_db_url: str, tmp_path: Path) -> None:
    first = open_store(chdb_db_url)  # holds the session-wide path open
    try:
        first.ensure_schema()
        with pytest.raises(StoreError, match="one data path per process"):
            open_store(f"chdb://{tmp_path / 'other'}")
        assert first.count() == {"rows": 0, "unique_ids": 0}
    finally:
        first.close()


def test_chdb_path_held_by_another_process_is_a_clear_error(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    url = f"chdb://{tmp_path / 'held'}"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from finsent.stream.store import open_store; s = open_store(sys.argv[1]); "
            "s.ensure_schema(); print('held', flush=True); sys.stdin.read()",
            url,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=repo,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        proc = subprocess.run(
            [sys.executable, "-m", "finsent.cli", "--store", url, "query", "count"],
            capture_output=True,
            text=True,
            env=env,
            cwd=repo,
            timeout=60,
        )
        assert proc.returncode == StoreInUse.exit_code
        # one line, finsent's: chdb's own "Code: 76 ... Cannot lock file" no longer reaches the user (issue 25)
        assert "Traceback" not in proc.stderr and "Code: 76" not in proc.stderr
        assert len(proc.stderr.splitlines()) == 1
        assert proc.stderr.startswith("finsent: error: chdb data path")
        assert f"in use by process {holder.pid}" in proc.stderr
    finally:
        holder.communicate("", timeout=30)


def test_percent_encoded_password_works_and_is_never_shown(tmp_path: Path) -> None:
    password = "p@ss:w/rd?&#%"
    server = ClickHouseServer(tmp_path / "auth", users={"finsent": password})
    server.start()
    try:
        encoded = quote(password, safe="")
        store = open_store(f"clickhouse://finsent:{encoded}@127.0.0.1:{server.tcp_port}/auth_db")
        try:
            store.ensure_schema()
            assert store.count() == {"rows": 0, "unique_ids": 0}
            assert encoded not in store.url_redacted and "p@ss" not in store.url_redacted
        finally:
            store.close()
        bad = open_store(f"clickhouse://finsent:nope@127.0.0.1:{server.tcp_port}/auth_db")
        try:
            with pytest.raises(StoreError) as info:
                bad.count()
            assert not isinstance(info.value, StoreUnavailable) and "nope" not in str(info.value)
        finally:
            bad.close()
    finally:
        server.stop()
