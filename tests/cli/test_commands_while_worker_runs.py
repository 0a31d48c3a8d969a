"""Every command that opens the store works while ``finsent worker`` holds the embedded (chdb) store.

One real worker process on a fresh ``chdb://`` path, a real Tansu broker and items flowing the whole
time (a :class:`Feeder`); each command runs as its own ``python -m finsent`` process with the same
store URL and a *different* FINSENT_METRICS_PORT (so it cannot have been told the worker's port: it
finds the worker through the owner file). Each must exit 0 with its real output, and no stderr may
carry chdb's own error text. Writes through the worker land in the store (labels), rescore stays
exactly-once (rows == unique ids), a second worker on the same path gets one line, and the owner
file is gone once the worker stopped.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from finsent.core.events import Alert, EntityMention, RawItem, ScoredItem, utcnow
from finsent.stream.broker import free_port
from finsent.stream.store import open_store, owner
from finsent.stream.store.remote import RemoteStore
from tests.stream_helpers import Feeder, stream_settings, wait_for, worker_env

pytestmark = [pytest.mark.integration]

CHDB_NOISE = ("Code: 76", "DB::Exception", "Cannot lock file", "Traceback")


class Running:
    """The worker under test, its store URL and data path, the env commands run with, its feeder."""

    def __init__(
        self, proc: subprocess.Popen[Any], url: str, path: Path, env: dict[str, str], log: Path, feeder: Feeder
    ) -> None:
        self.proc, self.url, self.path, self.env, self.log, self.feeder = proc, url, path, env, log, feeder

    def store(self) -> Any:
        """The store as this test process sees it: a RemoteStore to the worker (this process is no worker)."""
        return open_store(self.url)

    def run(self, *argv: str, timeout_s: float = 180.0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "finsent", *argv],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=self.path.parent,
        )
        for noise in CHDB_NOISE:
            assert noise not in proc.stderr, f"finsent {' '.join(argv)} printed {noise!r}:\n{proc.stderr[-3000:]}"
        return proc


@pytest.fixture(scope="module")
def running(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    from finsent.models.testing import make_tiny_model

    base = tmp_path_factory.mktemp("while-worker")
    model_dir = make_tiny_model(base / "model")
    path = base / "data"
    url = f"chdb://{path}"
    s = stream_settings(kafka_bootstrap, url, f"ww{os.getpid()}", partitions=2)
    common = worker_env(
        s,
        model_dir,
        FINSENT_BATCH_MAX="16",
        FINSENT_BATCH_WITHIN_S="0.05",
        FINSENT_CACHE_DIR=str(base / "cache"),
    )
    common.pop("FINSENT_API_TOKEN", None)
    worker_port = free_port()
    log = base / "worker.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "finsent", "worker"],
        env={**common, "FINSENT_METRICS_PORT": str(worker_port)},
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        cwd=base,
    )
    feeder = Feeder(s, prefix="ww")
    r = Running(proc, url, path, {**common, "FINSENT_METRICS_PORT": str(free_port())}, log, feeder)
    try:
        try:
            wait_for(lambda: owner.read_owner(path) is not None or proc.poll() is not None, 240, "the owner file")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the worker's log:\n{log.read_text()[-3000:]}") from None
        assert proc.poll() is None, log.read_text()[-3000:]
        rec = owner.read_owner(path)
        assert rec is not None and rec["pid"] == proc.pid and rec["port"] == worker_port and rec["token"] is False
        feeder.start()
        store = r.store()
        assert isinstance(store, RemoteStore) and store.pid == proc.pid
        wait_for(lambda: store.count()["rows"] >= 60, 120, "the worker storing the flowing items")
        # an item with a linked entity and a stored alert, written through the worker, for query entity/alerts
        now = utcnow()
        # two hours old: outside `rescore --since 1h`, whose tiny model finds no entity (it would tombstone it)
        then = now - timedelta(hours=2)
        item = RawItem(
            id="ww-apple",
            source="test",
            source_type="news",
            ingested_at=then,
            text="Apple shares slump on weak iPhone sales",
            title="Apple slumps",
            published_at=then - timedelta(minutes=2),
        )
        scored_text = "Apple slumps\n\n" + item.text
        mention = EntityMention(
            text="Apple",
            start=0,
            end=5,
            sentiment="negative",
            sentiment_probs={"negative": 0.9, "neutral": 0.05, "positive": 0.05},
            entity_id="AAPL",
            name="Apple Inc.",
            relevance=95,
        )
        assert scored_text[0:5] == "Apple"
        store.insert_scored(
            [
                ScoredItem(
                    item=item,
                    sentiment="negative",
                    topic="Stock Commentary",
                    sentiment_probs={"negative": 0.9, "neutral": 0.05, "positive": 0.05},
                    topic_prob=0.8,
                    model_version="v-test",
                    entities=(mention,),
                )
            ]
        )
        store.insert_alerts(
            [
                Alert(
                    topic="Stock Commentary",
                    fired_at=now,
                    window_start=now - timedelta(minutes=5),
                    window_end=now,
                    negative=9,
                    total=10,
                    negative_share=0.9,
                    baseline_share=0.2,
                    score=4.2,
                    detector="ewma",
                    id="ww-alert-1",
                )
            ]
        )
        yield r
    finally:
        feeder.stopping.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        assert rc == 0, log.read_text()[-3000:]
        assert not (path / owner.OWNER_FILE).exists(), "the worker left its owner file behind at a clean stop"


def _ids(r: Running, n: int = 5) -> list[str]:
    sql = "SELECT id FROM {db:Identifier}.items FINAL WHERE id LIKE 'ww-%' ORDER BY id LIMIT {n:UInt32}"
    rows = r.store().query(sql, {"db": "finsent", "n": n})
    return [str(row[0]) for row in rows]


def test_label_one_item_is_written_through_the_worker(running: Running) -> None:
    item_id = [i for i in _ids(running) if i != "ww-apple"][0]
    proc = running.run("label", item_id, "--sentiment", "negative", "--note", "through the worker")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {(lb.id, lb.task): lb for lb in running.store().labels("sentiment")}
    assert got[(item_id, "sentiment")].label == "negative" and got[(item_id, "sentiment")].note == "through the worker"


def test_label_queue_then_import(running: Running, tmp_path: Path) -> None:
    queue = tmp_path / "q.csv"
    proc = running.run("label", "queue", "--n", "5", "--since", "1h", "--csv", str(queue))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with queue.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and all(r["id"].startswith("ww-") for r in rows)
    todo = tmp_path / "todo.csv"
    with todo.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "sentiment"])
        for r in rows:
            w.writerow([r["id"], "positive"])
    proc = running.run("label", "import", str(todo), "--by", "desk")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["imported"] == 5
    got = {lb.id: lb for lb in running.store().labels("sentiment")}
    assert all(got[r["id"]].label == "positive" and got[r["id"]].by == "desk" for r in rows)


def test_drift(running: Running) -> None:
    proc = running.run("drift", "--window", "10m", "--reference", "1h", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "retrain_advised" in json.loads(proc.stdout)


def test_rescore_through_the_worker_is_exactly_once(running: Running) -> None:
    """Every item of the job's window [lo, hi) is rescored once: ``done`` is at least the total counted at the
    start (items still arriving with ingested_at < hi are picked up too) and never more than the distinct items
    in the window; the scores written through the worker are one per (item, version); items stay deduplicated."""
    store = running.store()
    proc = running.run("rescore", "--since", "1h", "--json", timeout_s=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["finished"] and summary["failed"] == 0 and summary["done"] >= summary["total"] > 0, summary
    window = {"db": "finsent", "lo": summary["lo"], "hi": summary["hi"], "v": summary["version"]}
    in_window = store.query(
        "SELECT count() FROM {db:Identifier}.items FINAL WHERE ingested_at >= "
        "toDateTime({lo:UInt32}, 'UTC') AND ingested_at < toDateTime({hi:UInt32}, 'UTC')",
        window,
    )[0][0]
    assert summary["done"] <= in_window, (summary, in_window)
    rescored = store.query(
        "SELECT count(), uniqExact(id) FROM {db:Identifier}.scores FINAL WHERE model_version = "
        "{v:String} AND ingested_at >= toDateTime({lo:UInt32}, 'UTC') AND ingested_at < "
        "toDateTime({hi:UInt32}, 'UTC')",
        window,
    )[0]
    assert rescored[0] == rescored[1] >= summary["done"], (rescored, summary)
    counts = store.count()
    assert counts["rows"] == counts["unique_ids"], counts


def test_alerts_watch_once_and_backtest(running: Running) -> None:
    proc = running.run("alerts", "watch", "--once")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = running.run("alerts", "backtest", "--since", "1d", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert isinstance(json.loads(proc.stdout), dict)


@pytest.mark.parametrize(
    "argv, expect",
    [
        (("query", "count", "--json"), "rows"),
        (("query", "top", "--since", "1h", "--json"), '"total"'),
        (("query", "items", "--since", "1h", "--limit", "20", "--json"), '"ww-'),
        (("query", "items", "--entity", "AAPL", "--since", "1d", "--json"), "ww-apple"),
        (("query", "entity", "AAPL", "--since", "1d", "--json"), "Apple slumps"),
        (("query", "top", "--by", "entity", "--since", "1d", "--json"), "AAPL"),
        (("query", "alerts", "--since", "1h", "--json"), "ww-alert-1"),
        (
            (
                "query",
                "schema",
            ),
            "CREATE TABLE",
        ),
    ],
)
def test_queries(running: Running, argv: tuple[str, ...], expect: str) -> None:
    proc = running.run(*argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expect in proc.stdout, proc.stdout[-2000:]


def test_a_second_worker_on_the_same_path_gets_one_line(running: Running) -> None:
    proc = running.run("worker", timeout_s=120)
    assert proc.returncode == 8, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if "held by worker" in ln]
    assert lines and lines[-1].endswith(
        f"the embedded store at {running.path.resolve()} is held by worker pid {running.proc.pid}; a second worker "
        "needs a clickhouse:// store -- see `finsent worker --help`"
    ), proc.stderr[-2000:]
    assert running.proc.poll() is None  # the first one runs on


def test_the_items_kept_flowing(running: Running) -> None:
    assert running.feeder.error is None
    produced = len(running.feeder.produced)
    before = running.store().count()["rows"]
    wait_for(lambda: running.store().count()["rows"] > before, 60, "more items stored while the commands ran")
    assert produced > 0
    with urllib.request.urlopen(f"http://127.0.0.1:{owner.read_owner(running.path)['port']}/readyz", timeout=5) as r:
        assert r.status == 200
