"""``finsent status`` (issue 25): one line per part, ✓ or ✗, the next step under each ✗, exit 0 only when all is well.

Against real parts: a real Tansu broker, a real ``finsent worker`` process on a fresh ``chdb://`` store with
items flowing (tests/stream/worker_process.py), the real command in its own process with the worker's settings
(it finds the worker through the owner file). Then one part made wrong while the rest runs (the registry's
production is another version than the one served), then the worker stopped (the store is opened directly and
the lag is read from the broker's committed offsets). And with nothing running at all: every part a clear ✗
line with its next step, no traceback, within seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from finsent.stream.broker import free_port
from tests.stream.worker_process import start_worker
from tests.stream_helpers import Feeder, wait_for

PARTS = ["broker", "worker", "store", "model", "lag", "alerts"]


def _status(
    env: dict[str, str], *argv: str, cwd: Path, before: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "finsent", *before, "status", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def _parts(proc: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    doc = json.loads(proc.stdout)
    assert [p["name"] for p in doc["parts"]] == PARTS
    return {p["name"]: p for p in doc["parts"]}


def _clean(proc: subprocess.CompletedProcess[str]) -> None:
    for noise in ("Traceback", "DB::Exception", "Code: 76"):
        assert noise not in proc.stderr + proc.stdout, proc.stderr[-3000:]


def test_nothing_running_says_what_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")} | {
        "FINSENT_STORE": f"chdb://{tmp_path / 'data'}",
        "FINSENT_BROKERS": f"127.0.0.1:{free_port()}",
        "FINSENT_METRICS_PORT": str(free_port()),
        "FINSENT_REGISTRY": "",
    }
    started = time.monotonic()
    proc = _status(env, cwd=tmp_path)
    took = time.monotonic() - started
    _clean(proc)
    assert proc.returncode == 1, proc.stderr[-2000:]
    out = proc.stdout.splitlines()
    marks = {line.split()[1]: line.split()[0] for line in out if line[:1] in "✓✗"}
    assert marks == {"broker": "✗", "worker": "✗", "store": "✗", "model": "✓", "lag": "✗", "alerts": "✗"}, out
    text = proc.stdout
    assert f"no Kafka answers at {env['FINSENT_BROKERS']}" in text and "`finsent broker`" in text
    assert f"no worker holds the store at {tmp_path / 'data'}" in text and "next: start one: `finsent worker`" in text
    assert f"no store at {tmp_path / 'data'} yet" in text
    assert sum(line.lstrip().startswith("next: ") for line in out) == 5  # one next step under each ✗
    assert not (tmp_path / "data").exists(), "status must not create the store"
    assert took < 30, took
    proc = _status(env, "--json", "-", cwd=tmp_path)
    assert proc.returncode == 1
    parts = _parts(proc)
    assert json.loads(proc.stdout)["ok"] is False and parts["model"]["ok"] and not parts["broker"]["ok"]
    assert all(p["next"] for p in parts.values() if not p["ok"])
    # a server store that is down: its own line, with the store's hint
    dead = f"clickhouse://default@127.0.0.1:{free_port()}/finsent"
    proc = _status(env, cwd=tmp_path, before=("--store", dead))
    _clean(proc)
    assert proc.returncode == 1
    store_line = next(line for line in proc.stdout.splitlines() if line.startswith("✗ store"))
    assert "unreachable" in store_line, proc.stdout


@pytest.mark.integration
def test_status_of_a_running_worker_then_a_wrong_part_then_a_stopped_worker(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    w = start_worker(kafka_bootstrap, tmp_path, unique_name)
    name = json.loads((w.model_dir / "labels.json").read_text())["model_version"]
    feeder = Feeder(w.settings, prefix="st")
    env = {**w.env, "FINSENT_METRICS_PORT": str(w.port)}  # a user's shell: the worker's own settings
    try:
        feeder.start()
        wait_for(lambda: w.get("/v1/count")["rows"] >= 30, 120, "30 items stored")
        proc = _status(env, cwd=tmp_path)
        _clean(proc)
        assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
        lines = proc.stdout.splitlines()
        assert [line.split()[:2] for line in lines] == [["✓", p] for p in PARTS], lines
        assert f"worker pid {w.proc.pid} at http://127.0.0.1:{w.port} is ready" in proc.stdout
        assert f"through worker pid {w.proc.pid}" in proc.stdout and "event-time lag" in proc.stdout
        assert f"{name} served" in proc.stdout and "none active now" in proc.stdout
        parts = _parts(_status(env, "--json", "-", cwd=tmp_path))
        assert all(p["ok"] for p in parts.values())
        assert parts["store"]["data"]["rows"] >= 30 and parts["store"]["data"]["through_worker"] is True
        assert parts["store"]["data"]["since_last_item_s"] < 60
        assert parts["model"]["data"]["serving"] == name
        assert isinstance(parts["lag"]["data"]["lag"], int) and parts["lag"]["data"]["lag"] <= 1000

        # one part wrong while the rest runs: the registry's production is another version than the one served
        from finsent.models.registry import Registry

        reg = Registry(tmp_path / "registry")
        reg.register(w.model_dir)
        other = reg.register(w.model_dir)  # the same weights registered again: a second, numbered version
        assert other is not None
        reg.set_alias("production", other.version)
        proc = _status({**env, "FINSENT_REGISTRY": str(reg.root)}, cwd=tmp_path)
        _clean(proc)
        assert proc.returncode == 1
        model = [line for line in proc.stdout.splitlines() if "model" in line.split()[1:2]]
        assert model and model[0].startswith("✗ model") and f"production is {other.version}" in model[0]
        assert "FINSENT_RELOAD_INTERVAL_S" in proc.stdout  # its next step
    finally:
        feeder.stopping.set()
        rc = w.stop()
    assert rc == 0, w.log.read_text()[-3000:]

    # the worker stopped: the store is opened directly, the lag read from the broker's committed offsets
    proc = _status(env, "--json", "-", cwd=tmp_path)
    _clean(proc)
    assert proc.returncode == 1
    parts = _parts(proc)
    assert not parts["worker"]["ok"] and "no worker holds the store" in parts["worker"]["detail"]
    assert parts["broker"]["ok"] and parts["store"]["ok"] and not parts["store"]["data"]["through_worker"]
    assert parts["lag"]["ok"] and parts["lag"]["data"]["measured_by"] == "broker offsets", parts["lag"]
    assert parts["alerts"]["ok"] and parts["alerts"]["data"]["how"] == "fired in the last hour"
