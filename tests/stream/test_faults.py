"""Faults with real processes: what the worker does when Kafka goes away under it.

Each scenario runs `finsent worker` as a subprocess against its own Tansu broker (so killing
the broker disturbs no other test) and checks what an operator sees: one finsent line when
Kafka is lost, client errors rate-limited, and SIGTERM obeyed within 10 s with no traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from finsent.stream.broker import EmbeddedBroker, free_port
from tests.stream_helpers import make_items, produce_items, stream_settings, wait_for, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.faults]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from finsent.models.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen[Any]:
    return subprocess.Popen(
        [sys.executable, "-m", "finsent", "worker", "--batch-within", "0.1"],
        env=env,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
    )


def _sigterm(proc: subprocess.Popen[Any]) -> float:
    """SIGTERM the worker and wait for it; the seconds it took to exit."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    return time.monotonic() - t0


def _api(port: int, path: str) -> Any:
    """GET the worker's read-only JSON API (None while it does not answer)."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return json.loads(r.read())
    except OSError:
        return None


def _stored(port: int) -> int:
    body = _api(port, "/v1/count")
    return -1 if body is None else int(body["rows"])


def test_broker_killed_under_a_running_worker_then_sigterm(
    tmp_path: Path, tiny_model_dir: Path, unique_name: str
) -> None:
    broker = EmbeddedBroker(port=free_port()).start()
    store_url = f"chdb://{tmp_path / 'store'}"
    s = stream_settings(broker.bootstrap, store_url, unique_name)
    port = free_port()
    env = worker_env(s, tiny_model_dir, FINSENT_METRICS_PORT=str(port))
    log = tmp_path / "worker.log"
    produce_items(s, make_items(10, "before"))
    proc = _worker(env, log)
    try:
        import json
        import urllib.request

        def stored() -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/count", timeout=5) as r:
                    return int(json.loads(r.read())["rows"])
            except OSError:
                return -1

        def done() -> float:
            """The worker's own count: stored AND published (a row in the store is not yet a finished batch)."""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                return -1.0
            return next(
                (float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith("finsent_items_stored_total ")),
                -1.0,
            )

        wait_for(
            lambda: (stored() == 10 and done() == 10) or proc.poll() is not None,
            90,
            "10 rows stored and published before the fault",
        )
        assert broker.proc is not None
        broker.proc.kill()  # the broker dies: no goodbye, like a crashed node
        broker.proc.wait()
        time.sleep(12)  # long enough for aiokafka's ~55 errors a second to have flooded the log before
        took = _sigterm(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        broker.stop()
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert took <= 10.0, f"SIGTERM took {took:.1f} s"
    assert "Traceback" not in text and "Task was destroyed" not in text, text[-3000:]
    assert text.count("lost contact with Kafka at") == 1
    errors = [ln for ln in text.splitlines() if " ERROR " in ln]
    assert len(errors) <= 20, f"{len(errors)} ERROR lines in 12 s without a broker"
    assert "worker stopped: consumed 10, stored 10" in text


def test_worker_started_with_the_store_down_is_one_line(
    kafka_bootstrap: str, tiny_model_dir: Path, unique_name: str
) -> None:
    from finsent.core.errors import StoreUnavailable

    s = stream_settings(kafka_bootstrap, "chdb:///unused", unique_name)
    env = {
        **os.environ,
        "FINSENT_BROKERS": s.kafka.brokers,
        "FINSENT_TOPIC_RAW": s.kafka.topic_raw,
        "FINSENT_STORE": f"clickhouse://default@127.0.0.1:{free_port()}/x?connect_timeout=1",
        "FINSENT_MODEL_DIR": str(tiny_model_dir),
        "FINSENT_METRICS_PORT": "0",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "finsent", "worker"], env=env, capture_output=True, text=True, timeout=90
    )
    assert proc.returncode == StoreUnavailable.exit_code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("finsent: error: ClickHouse at clickhouse://default@127.0.0.1")


def test_broker_restart_under_a_running_worker_loses_nothing(
    tmp_path: Path, tiny_model_dir: Path, unique_name: str
) -> None:
    """Tansu is memory-only: after a restart on the same port every partition starts again at offset 0.

    The worker's positions (and Faust's read offsets) are then ahead of the new logs. It must notice
    (a log end below its position), start those partitions again from the earliest offset, re-declare
    every topic it uses (the alert counts topic included), and store every item produced after the restart.
    """
    port = free_port()
    broker = EmbeddedBroker(port=port).start()
    store_url = f"chdb://{tmp_path / 'store'}"
    s = stream_settings(broker.bootstrap, store_url, unique_name, partitions=2)
    mport = free_port()
    env = worker_env(s, tiny_model_dir, FINSENT_METRICS_PORT=str(mport))
    log = tmp_path / "worker.log"
    produce_items(s, make_items(60, "before"))
    proc = _worker(env, log)
    try:
        wait_for(lambda: _stored(mport) == 60 or proc.poll() is not None, 90, "60 rows stored before the restart")
        assert broker.proc is not None
        broker.proc.kill()
        broker.proc.wait()
        broker.stop()
        time.sleep(2)
        broker = EmbeddedBroker(port=port).start()  # same port, empty memory: every log starts at 0 again
        stream_settings(broker.bootstrap, store_url, unique_name, partitions=2)  # the ingest side re-declares raw
        produce_items(s, make_items(40, "after"))  # fewer than before: every new offset is below the old positions
        wait_for(lambda: _stored(mport) >= 100 or proc.poll() is not None, 90, "the 40 items sent after the restart")
        time.sleep(3)  # anything stored twice would show now
        count = _api(mport, "/v1/count")
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=10000)
        try:
            topics = set(admin.list_topics())
        finally:
            admin.close()
        took = _sigterm(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        broker.stop()
    text = log.read_text()
    assert count["rows"] == 100, (count, text[-3000:])
    assert count.get("unique", 100) == 100, count
    assert s.kafka.topic_alert_counts in topics, topics
    assert proc.returncode == 0 and took <= 10.0, (proc.returncode, took, text[-3000:])
    assert "Traceback" not in text, text[-3000:]
