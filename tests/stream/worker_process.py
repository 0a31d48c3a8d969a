"""A real ``finsent worker`` process for tests that need one the way a user runs it (own process, own /metrics
and /v1 API on a port, the embedded store's owner file): started on the tiny model, a real broker and a fresh
``chdb://`` path, stopped with SIGTERM (exit 0 expected)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finsent.core.settings import Settings
from finsent.stream.broker import free_port
from finsent.stream.store import owner
from tests.stream_helpers import stream_settings, wait_for, worker_env


@dataclass
class WorkerProcess:
    """The worker, its settings (topics, group), store URL and data path, its port and the env it ran with."""

    proc: subprocess.Popen[Any]
    settings: Settings
    url: str
    path: Path
    port: int
    env: dict[str, str]
    log: Path
    model_dir: Path

    def get(self, path: str) -> Any:
        """``GET`` a path of the worker's HTTP server (``/metrics`` as text, everything else as JSON)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as resp:
            body = resp.read().decode()
        return body if path == "/metrics" else json.loads(body)

    def finsent(self, *argv: str, timeout_s: float = 180.0, **env: str) -> subprocess.CompletedProcess[str]:
        """``python -m finsent ARGV`` with the worker's settings but another metrics port (it finds the worker
        through the owner file, as a user's command does)."""
        return subprocess.run(
            [sys.executable, "-m", "finsent", *argv],
            env={**self.env, "FINSENT_METRICS_PORT": str(free_port()), **env},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=self.path.parent,
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def start_worker(kafka_bootstrap: str, base: Path, suffix: str, **env: str) -> WorkerProcess:
    """Start ``finsent worker`` under ``base`` (model, data, cache, log) and wait for its owner file."""
    from finsent.models.testing import make_tiny_model

    model_dir = make_tiny_model(base / "model")
    path = base / "data"
    url = f"chdb://{path}"
    s = stream_settings(kafka_bootstrap, url, suffix, partitions=2)
    common = worker_env(
        s,
        model_dir,
        clean=True,
        **{
            "FINSENT_REGISTRY": "",
            "FINSENT_BATCH_MAX": "16",
            "FINSENT_BATCH_WITHIN_S": "0.05",
            "FINSENT_CACHE_DIR": str(base / "cache"),
            **env,
        },
    )
    port = free_port()
    log = base / "worker.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "finsent", "worker"],
        env={**common, "FINSENT_METRICS_PORT": str(port)},
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        cwd=base,
    )
    w = WorkerProcess(proc, s, url, path, port, common, log, model_dir)
    try:
        wait_for(lambda: owner.read_owner(path) is not None or proc.poll() is not None, 240, "the owner file")
    except AssertionError as exc:
        w.stop()
        raise AssertionError(f"{exc}; the worker's log:\n{log.read_text()[-3000:]}") from None
    if proc.poll() is not None:
        raise AssertionError(f"the worker exited {proc.returncode}:\n{log.read_text()[-3000:]}")
    return w
