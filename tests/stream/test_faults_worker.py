"""The fault suite, worker side: real processes and real traffic, ended by counting in the store.

Each scenario runs `finsent worker` processes (or the worker app in this process, where the test
must look inside it) against the Tansu broker and a real clickhouse-server, injects one fault,
and ends with every produced item stored exactly once and nothing else:

* one of two workers killed with SIGKILL while items flow: the survivor takes its partitions;
* the ClickHouse server killed for 30 s, then started again on the same data: the worker keeps
  its batches, the lag gauge keeps growing during the outage, and the backlog drains;
* a slow store: the worker holds a bounded number of messages (the rest wait in Kafka), so
  memory stays bounded and backpressure reaches the consumer.

(kill -9 mid-batch then restart: tests/stream/test_stream_worker.py; broker restart, broker killed:
tests/stream/test_faults.py; poison corpora: tests/stream/test_poison.py; the ingest side:
tests/ingest/test_faults_ingest.py.)
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from finsent.bench.clickhouse_server import ClickHouseServer
from finsent.stream.broker import free_port
from finsent.stream.store import open_store
from tests.stream_helpers import make_items, produce_items, stream_settings, wait_for, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.faults]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from finsent.models.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


#: small batches that commit often, so a kill lands between many commits
QUICK_BATCHES = {"FINSENT_BATCH_MAX": "16", "FINSENT_BATCH_WITHIN_S": "0.05"}


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[Any]:
    return subprocess.Popen(
        [sys.executable, "-m", "finsent", "worker"], env=env, stdout=log.open("a"), stderr=subprocess.STDOUT
    )


def _trickle(s: Any, prefix: str, n: int, per_s: float) -> threading.Thread:
    """Produce ``n`` items at about ``per_s`` a second in the background (real traffic, not one burst)."""
    items = make_items(n, prefix)
    chunk = max(1, int(per_s / 5))

    def run() -> None:
        for i in range(0, n, chunk):
            produce_items(s, items[i : i + chunk])
            time.sleep(chunk / per_s)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _metric(port: int, name: str) -> float:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return -1.0
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(name))


def _stop_all(*procs: subprocess.Popen[Any]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def test_one_of_two_workers_killed_while_items_flow(
    kafka_bootstrap: str, clickhouse_db_url: str, unique_name: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    s = stream_settings(kafka_bootstrap, clickhouse_db_url, unique_name, partitions=4)
    n = 900
    env = worker_env(s, tiny_model_dir, FINSENT_METRICS_PORT="0", **QUICK_BATCHES)
    store = open_store(clickhouse_db_url)
    store.ensure_schema()
    a = _start(env, tmp_path / "a.log")
    b = _start(env, tmp_path / "b.log")
    try:
        feeder = _trickle(s, "two", n, per_s=60)
        wait_for(lambda: store.count()["rows"] >= 150, 120, "both workers storing")
        a.send_signal(signal.SIGKILL)  # mid-stream, mid-batch: no goodbye
        a.wait(10)
        feeder.join(60)
        try:
            wait_for(lambda: store.count()["rows"] >= n, 120, "the survivor to store everything")
        except AssertionError as exc:
            seen = store.count(physical=True)
            raise AssertionError(
                f"{exc}: {seen}; the survivor's log:\n{(tmp_path / 'b.log').read_text()[-4000:]}"
            ) from None
        time.sleep(2)
        counts = store.count(physical=True)
    finally:
        _stop_all(a, b)
        store.close()
    assert counts["rows"] == n and counts["unique_ids"] == n, counts
    assert b.returncode == 0, (tmp_path / "b.log").read_text()[-3000:]


def test_clickhouse_stopped_for_30_s_then_back_on_the_same_data(
    kafka_bootstrap: str, unique_name: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    server = ClickHouseServer(tmp_path / "ch")
    server.start()
    url = server.url("finsent_fault") + "?connect_timeout=2&send_receive_timeout=10"
    s = stream_settings(kafka_bootstrap, url, unique_name, partitions=2)
    schema = open_store(url)
    schema.ensure_schema()
    schema.close()
    mport = free_port()
    log = tmp_path / "worker.log"
    proc = _start(worker_env(s, tiny_model_dir, FINSENT_METRICS_PORT=str(mport), **QUICK_BATCHES), log)
    try:
        produce_items(s, make_items(200, "pre"))
        store = open_store(url)
        try:
            wait_for(lambda: store.count()["rows"] >= 200, 120, "200 stored before the outage")
        finally:
            store.close()
        server.stop(kill=True)  # the store crashes
        t_down = time.monotonic()
        produce_items(s, make_items(300, "during"))
        time.sleep(8)
        lag_early = _metric(mport, "finsent_consumer_lag_messages")
        while time.monotonic() - t_down < 30:
            time.sleep(1)
        lag_late = _metric(mport, "finsent_consumer_lag_messages")
        retries = _metric(mport, "finsent_store_retries_total")
        server.start()  # same data directory, same port
        store = open_store(url)
        try:
            wait_for(lambda: store.count()["rows"] >= 500, 120, "the backlog to drain after the outage")
            time.sleep(2)
            counts = store.count(physical=True)
        finally:
            store.close()
    finally:
        _stop_all(proc)
        server.stop()
    text = log.read_text()
    assert counts["rows"] == 500 and counts["unique_ids"] == 500, counts
    assert retries >= 1, text[-2000:]
    # the lag is true during the outage: everything sent meanwhile is still to be stored
    assert lag_early >= 250 and lag_late >= 250, (lag_early, lag_late)
    assert proc.returncode == 0 and "Traceback" not in text, text[-3000:]


class SlowStore:
    """A real store that takes ``delay_s`` for every insert (a store that keeps up, slowly)."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.max_batch = 0

    def insert_scored(self, items: Any) -> int:
        time.sleep(self.delay_s)
        self.max_batch = max(self.max_batch, len(items))
        return self.inner.insert_scored(items)

    def ensure_schema(self) -> None:
        self.inner.ensure_schema()

    def close(self) -> None:
        pass


def test_a_slow_store_holds_back_the_consumer_with_bounded_memory(
    kafka_bootstrap: str, chdb_db_url: str, unique_name: str, tiny_model_dir: Path
) -> None:
    from finsent.models.runtime import Classifier
    from finsent.stream.service import WorkerThread

    s = stream_settings(kafka_bootstrap, chdb_db_url, unique_name, batch_max=8, batch_within_s=0.05)
    n = 4000
    produce_items(s, make_items(n, "slow"))
    inner = open_store(chdb_db_url)
    slow = SlowStore(inner, delay_s=0.25)
    app_cfg = None
    try:
        with WorkerThread(s, classifier=Classifier.load(tiny_model_dir), store=slow) as w:
            app_cfg = w.app.conf
            wait_for(lambda: w.scorer.stats.snapshot()["stored"] >= 80, 90, "the slow store to take some")
            samples = []
            for _ in range(10):
                snap = w.scorer.stats.snapshot()
                read = getattr(w.app.consumer, "_read_offset", {})
                fetched = sum((o or 0) + 1 for o in dict(read).values())
                samples.append((snap["consumed"] - snap["stored"], fetched - snap["stored"]))
                time.sleep(0.5)
        stored = w.scorer.stats.snapshot()["stored"]  # after the stop: the drain may have stored a little more
        assert stored < n / 2, "the store was not slow enough to test backpressure"
        # inside the pipeline: the batches waiting for the store, those being stored (at most as many, in one
        # insert), one per model call (scored, waiting for room) and the one being taken
        from finsent.stream.worker import MAX_WAITING_BATCHES

        held_max = (2 * MAX_WAITING_BATCHES + 1 + s.model.model_calls) * s.worker.batch_max
        assert max(held for held, _ in samples) <= held_max, samples
        # taken from Kafka but not stored: bounded by Faust's buffers, not by the backlog
        bound = app_cfg.stream_buffer_maxsize + app_cfg.broker_max_poll_records + held_max
        assert max(f for _, f in samples) <= bound, (samples, bound)
        assert inner.count()["rows"] == stored
    finally:
        inner.close()
