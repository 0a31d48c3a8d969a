"""Scale-out, shown with real processes: 3 ``finsent worker`` in one consumer group share a
6-partition raw topic, then one is stopped (SIGTERM) and another added while traffic flows.

What must hold, read the way an operator would (each worker's ``/metrics``, the store):

* the load is shared: every worker's ``finsent_items_stored_total`` grows;
* every published item is stored exactly once: ``count() FINAL`` == ``uniqExact(id)`` == the
  number the ingest publisher had acknowledged, and the stored ids are exactly those. Physical
  duplicates (a batch redelivered after a rebalance) are allowed: FINAL collapses them;
* the stopped worker exits 0 within the worker's 10 s bound, and the added one takes over a share.

The store is a clickhouse-server: chdb allows one process per data path. The model is the tiny
test model (finsent.models.testing), one onnxruntime thread per worker on this 2-core machine.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from finsent.bench.worker_pool import WorkerProcess, exited
from finsent.core.settings import Settings
from finsent.core.wait import wait_until
from finsent.ingest.publisher import Publisher
from finsent.stream.store import open_store
from tests.stream_helpers import make_items, stream_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from finsent.models.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


class Traffic:
    """The ingest publisher in a thread: ``per_tick`` new items every ``tick_s`` until stopped."""

    def __init__(self, settings: Settings, per_tick: int = 10, tick_s: float = 0.1) -> None:
        self.settings = settings
        self.per_tick = per_tick
        self.tick_s = tick_s
        self.acked: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        with Publisher(self.settings, client_id="scale-out-test") as pub:
            n = 0
            while not self._stop.is_set():
                items = make_items(self.per_tick, prefix=f"so{n}")
                n += 1
                acked = pub.publish_detailed(items).acked
                self.acked.extend(it.id for it in acked)
                time.sleep(self.tick_s)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


def test_three_workers_share_six_partitions_and_store_each_item_once_across_a_stop_and_a_join(
    kafka_bootstrap: str,
    clickhouse_db_url: str,
    tiny_model_dir: Path,
    tmp_path: Path,
    unique_name: str,
) -> None:
    s = stream_settings(
        kafka_bootstrap,
        clickhouse_db_url,
        unique_name,
        partitions=6,
        model_dir=str(tiny_model_dir),
        model_threads=1,
        batch_max=32,
    )
    store = open_store(s.storage.store)
    store.ensure_schema()  # once, as a deployment's first start does; each worker's own run is then a no-op
    workers = [WorkerProcess(s, tmp_path / f"w{i}.log", name=f"worker {i}") for i in range(4)]
    traffic = Traffic(s)
    try:
        first = workers[:3]
        for w in first:
            w.start()
        wait_until(
            lambda: all(w.ready() for w in first), 60, what="3 workers ready (joined the group)", check=exited(first)
        )
        traffic.start()
        wait_until(
            lambda: all((w.stored() or 0) > 0 for w in first),
            45,
            what="each of the 3 workers storing",
            check=exited(first),
        )

        # one worker leaves, another joins, while the traffic keeps coming
        gone, new = workers[0], workers[3]
        new.start()
        took = gone.stop()
        wait_until(new.ready, 60, what="the added worker ready", check=exited([new]))
        base = new.stored() or 0
        wait_until(lambda: (new.stored() or 0) > base, 45, what="the added worker storing", check=exited(workers[1:]))
        time.sleep(1.0)
        traffic.stop()
        produced = set(traffic.acked)
        assert len(produced) == len(traffic.acked) > 0

        wait_until(
            lambda: store.count()["rows"] >= len(produced),
            60,
            what="every produced item stored",
            check=exited(workers[1:]),
        )
        time.sleep(1.0)  # late duplicates, if any, would arrive now
        counts = store.count(physical=True)
        stored_ids = {r[0] for r in store.query(f"SELECT DISTINCT id FROM {store.database}.items")}  # type: ignore[attr-defined]
        per_worker = {w.name: w.stored() for w in workers[1:]}
    finally:
        traffic.stop()
        stop_s = {w.name: w.stop() for w in workers}
        store.close()

    assert gone.returncode == 0, gone.log_text()[-3000:]
    assert took <= 10.0, f"SIGTERM took {took:.1f} s"
    assert gone.final_counts() is not None and gone.final_counts()[1] > 0  # type: ignore[index]
    for w in workers:
        assert w.returncode == 0, f"{w.name} (stop took {stop_s[w.name]:.1f}s):\n{w.log_text()[-3000:]}"
        assert "Traceback" not in w.log_text(), w.log_text()[-3000:]
    assert counts["rows"] == counts["unique_ids"] == len(produced), counts
    assert stored_ids == produced
    assert counts["physical_rows"] >= len(produced)
    assert all(v and v > 0 for v in per_worker.values()), per_worker
    # what the workers say they stored covers every item (more only where a batch was redelivered)
    assert sum(w.final_counts()[1] for w in workers) >= len(produced)  # type: ignore[index]


def test_worker_processes_get_the_very_settings_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from finsent.bench.worker_pool import settings_env
    from finsent.core.settings import load_settings

    s = load_settings(
        brokers="10.0.0.1:9092,10.0.0.2:9092",
        partitions=6,
        clickhouse_cluster="prod",
        http_token="s3cret",
        batch_within_s=0.05,
        model_dir="/m",
    )
    for k in [k for k in os.environ if k.startswith("FINSENT_")]:
        monkeypatch.delenv(k)
    for k, v in settings_env(s).items():
        monkeypatch.setenv(k, v)
    assert load_settings() == s


def test_bench_worker_counts_and_results_rows() -> None:
    from finsent.bench.scaleout import parse_worker_counts, results_section

    assert parse_worker_counts("1,2") == [1, 2] and parse_worker_counts("3") == [3]
    for bad in ("0", "", "1,-2"):
        with pytest.raises(ValueError):
            parse_worker_counts(bad)
    run = {
        "workers": 2,
        "model_threads_per_worker": 1,
        "partitions": 4,
        "items": 600,
        "total_items_per_s": 24.5,
        "per_worker_items_per_s": [12.0, 12.5],
        "per_worker_items": [294, 306],
        "exact": True,
        "store_rows": 664,
        "store_unique_ids": 664,
        "load_avg_start": (7.1, 6.0, 5.0),
        "load_avg_end": (7.9, 6.1, 5.0),
    }
    text = results_section(
        {
            "hardware": {"cpu": "cpu", "cores": 2},
            "broker": "b",
            "store": "s",
            "model_dir": "m",
            "batch_max": 128,
            "runs": [run],
        },
        "finsent bench pipeline --workers 2",
    )
    assert text.startswith("## Scale-out\n")
    assert "| 2 | 1 | 600 | 24.5 | 12.0, 12.5 | 294, 306 | yes (664 rows, 664 ids) | 7.1 / 7.9 |" in text
