"""Real ``finsent worker`` processes in one consumer group, for the scale-out benchmark and tests.

Scale-out is Kafka's consumer-group protocol plus ClickHouse's dedup by id, so it is only shown
with separate processes, each with its own consumer, model and store connection: threads in one
process would share the GIL, the Prometheus registry and (with chdb) the one embedded store.
Each :class:`WorkerProcess` gets the settings as ``FINSENT_*`` environment variables (the way
systemd units and Kubernetes pass them) and its own metrics port, and is observed only through
what an operator has: ``/readyz``, ``/metrics`` and its log.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import SecretStr

from finsent.core.settings import Settings
from finsent.stream.broker import free_port

_STOPPED = re.compile(r"worker stopped: consumed (\d+), stored (\d+)")


def settings_env(settings: Settings) -> dict[str, str]:
    """Every setting as its ``FINSENT_<NAME>`` variable (secrets included: the child needs them)."""
    env = {}
    for name, value in settings.flat().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"FINSENT_{name.upper()}"] = str(value)
    return env


class WorkerProcess:
    """One ``python -m finsent worker`` with its log in ``log_path`` and ``/metrics`` on a free port."""

    def __init__(self, settings: Settings, log_path: Path, name: str = "worker") -> None:
        self.name = name
        self.port = free_port()
        self.log_path = Path(log_path)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_") or k == "FINSENT_CACHE_DIR"}
        self.env.update(
            settings_env(settings.model_copy(update={"metrics_port": self.port, "metrics_host": "127.0.0.1"}))
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "finsent", "worker"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        """``/readyz`` says 200: joined the group, model loaded, store reachable."""
        return self.alive() and self._get("/readyz")[0] == 200

    def metric(self, name: str) -> float | None:
        """The value of an unlabelled metric on ``/metrics`` (None while it cannot be read)."""
        status, text = self._get("/metrics")
        if status != 200:
            return None
        m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(m.group(1)) if m else None

    def stored(self) -> int | None:
        """``finsent_items_stored_total``: rows this worker's store accepted."""
        v = self.metric("finsent_items_stored_total")
        return None if v is None else int(v)

    def stop(self, timeout_s: float = 30.0) -> float:
        """SIGTERM and wait; returns the seconds it took (SIGKILL after ``timeout_s``)."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        return time.monotonic() - t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def final_counts(self) -> tuple[int, int] | None:
        """(consumed, stored) from the worker's last log line, once it has stopped."""
        found = _STOPPED.findall(self.log_text())
        return (int(found[-1][0]), int(found[-1][1])) if found else None


def exited(procs: Sequence[WorkerProcess]) -> Callable[[], None]:
    """A ``check`` for :func:`finsent.core.wait.wait_until`: give up at once, with its log tail, when one of
    ``procs`` has exited with an error (a worker that died will not become ready; waiting it out hides why)."""

    def check() -> None:
        for p in procs:
            if p.proc is not None and p.proc.poll() is not None and p.returncode != 0:
                raise RuntimeError(f"{p.name} exited with {p.returncode}:\n{p.log_text()[-3000:]}")

    return check
