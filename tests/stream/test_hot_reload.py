"""Hot reload in a running worker: real Tansu broker, real store (chdb), real registry, items flowing throughout.

The worker starts on the registry's production version A (not FINSENT_MODEL_DIR), then production
moves to B, then to a corrupt version C (the load fails: the metric moves, one log line, B keeps
serving), then ``rollback`` twice (C -> B, B -> A: the follower swaps back). Checked at the end: no
item lost or stored twice, every row names a version that really served, and every batch the worker
took from Kafka was scored by ONE version: the worker records, per scored batch, the set of
``model_version`` values found on its rows (``WorkerStats.batch_versions``). Not the store's inserts:
the worker groups several batches into one insert, and a group may rightly span a swap.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from finsent.stream.service import WorkerThread
from finsent.stream.store import open_store
from finsent.stream.worker import WorkerStats
from tests.stream_helpers import Feeder, stream_settings, wait_for

pytestmark = pytest.mark.integration


def _counter(reg: CollectorRegistry, name: str) -> float:
    return reg.get_sample_value(name) or 0.0


def _model_info(reg: CollectorRegistry) -> dict[str, float]:
    return {s.labels["version"]: s.value for m in reg.collect() if m.name == "finsent_model_info" for s in m.samples}


def test_worker_follows_production_through_promote_corrupt_version_and_rollback(
    kafka_bootstrap: str, chdb_db_url: str, unique_name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from finsent.models.registry import Registry
    from finsent.models.testing import make_tiny_model

    tiny = make_tiny_model(tmp_path / "tiny")
    reg = Registry(tmp_path / "registry")
    a, b = reg.register(tiny).version, reg.register(tiny).version  # the same model under two versions
    reg.set_alias("production", a)
    s = stream_settings(
        kafka_bootstrap,
        chdb_db_url,
        unique_name,
        registry=str(reg.root),
        reload_interval_s=0.3,
        model_dir=str(tiny),
        batch_max=16,
        batch_within_s=0.05,
    )
    metrics = CollectorRegistry()
    store = open_store(chdb_db_url)
    store.ensure_schema()
    stats = WorkerStats()
    feeder = Feeder(s, "hot")
    not_ready: list[str] = []
    watching = threading.Event()
    caplog.set_level(logging.INFO, logger="finsent.stream.reload")

    def stored_with(version: str) -> int:
        """Rows of ``version`` in the store (one query; the test reads while the worker writes)."""
        rows = store.query(
            f"SELECT count() FROM {store.database}.items FINAL WHERE model_version = {{v:String}}", {"v": version}
        )
        return int(rows[0][0])

    try:
        with WorkerThread(s, store=store, registry=metrics, stats=stats) as w:
            scorer = w.scorer
            assert scorer.holder.current.version == a  # production beats FINSENT_MODEL_DIR (unregistered tiny)

            def watch_readiness() -> None:  # /readyz must stay ready through every swap
                while not watching.is_set():
                    ok, why = scorer.readiness()
                    if not ok and scorer.joined:
                        not_ready.append(why)
                    time.sleep(0.02)

            feeder.start()
            wait_for(lambda: stored_with(a) >= 40, 90, "40 items scored by A")
            threading.Thread(target=watch_readiness, daemon=True).start()

            reg.set_alias("production", b)  # promote B
            wait_for(lambda: stored_with(b) >= 40, 60, "40 items scored by B")
            assert _model_info(metrics) == {b: 1.0}
            assert _counter(metrics, "finsent_model_reloads_total") == 1

            # a corrupt version: registered whole, then its graph damaged on disk
            c = reg.register(tiny)
            (c.path / "model.onnx").write_bytes(b"not an onnx graph")
            reg.set_alias("production", c.version)
            wait_for(lambda: _counter(metrics, "finsent_model_reload_failures_total") >= 1, 30, "the failed load")
            served_b = stored_with(b)
            wait_for(lambda: stored_with(b) >= served_b + 30, 60, "B still serving after the failed load")
            time.sleep(1.0)  # a few more polls of the same bad version
            assert _counter(metrics, "finsent_model_reload_failures_total") == 1
            assert scorer.holder.current.version == b and _model_info(metrics) == {b: 1.0}

            assert reg.rollback() == (c.version, b)  # C -> B: B is serving already, nothing to swap
            assert reg.rollback() == (b, a)  # B -> A: swapped back like any move
            wait_for(lambda: scorer.holder.current.version == a, 30, "the rollback to A")
            served_a = stored_with(a)
            wait_for(lambda: stored_with(a) >= served_a + 40, 60, "40 more items scored by A after the rollback")
            n = len(feeder.finish())
            wait_for(lambda: store.count()["rows"] >= n, 90, f"all {n} produced items stored")
            watching.set()
        counts = store.count()
        rows = store.query(
            f"SELECT toString(model_version), count() FROM {store.database}.items FINAL GROUP BY model_version"
        )
    finally:
        watching.set()
        feeder.stopping.set()
        store.close()

    assert counts == {"rows": n, "unique_ids": n}  # none lost, none stored twice
    by_version = dict(rows)
    assert set(by_version) == {a, b} and sum(by_version.values()) == n
    # every batch was scored by one version, and the versions came in the order the alias moved
    batches = list(stats.batch_versions)
    assert len(batches) == stats.batches > 0  # every batch had items (no malformed input here)
    assert all(len(vs) == 1 for vs in batches), [vs for vs in batches if len(vs) > 1]
    sequence = [next(iter(vs)) for vs in batches]
    phases = [v for i, v in enumerate(sequence) if i == 0 or sequence[i - 1] != v]
    assert phases == [a, b, a], phases
    assert not not_ready, not_ready[:3]
    assert _model_info(metrics) == {a: 1.0}
    assert _counter(metrics, "finsent_model_reloads_total") == 2
    failures = [r for r in caplog.records if r.levelno == logging.ERROR and c.version in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    assert "cannot be loaded, still serving " + b in failures[0].getMessage()
