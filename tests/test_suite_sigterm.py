"""The test suite stops cleanly on SIGTERM: exit 2 (interrupted) within seconds, and the real servers its
fixtures started are gone (before, SIGTERM killed pytest at once and left a Tansu broker running) -- also
after an earlier test let an in-process worker install its own SIGTERM handler."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

_INNER = """
import os, time
from pathlib import Path

def _children(root):
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out

def test_a_worker_in_process_takes_sigterm():
    import signal
    signal.signal(signal.SIGTERM, lambda *a: None)  # what mode/Faust do for an in-process worker

def test_holds_a_broker(kafka_bootstrap, tmp_path):
    Path(os.environ["PIDS_FILE"]).write_text(" ".join(map(str, _children(os.getpid()))))
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purpose
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


def test_sigterm_stops_the_run_and_its_servers(tmp_path: Path) -> None:
    inner = Path(__file__).parent / "_sigterm_inner_test.py"
    inner.write_text(_INNER)
    pids_file = tmp_path / "pids"
    proc: subprocess.Popen[str] | None = None
    try:
        env = {k: v for k, v in os.environ.items() if k != "FINSENT_TEST_BROKERS"}
        env["PIDS_FILE"] = str(pids_file)
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(inner)],
            cwd=Path(__file__).parent.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 90
        while not (pids_file.exists() and pids_file.read_text()) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.2)
        kids = [int(p) for p in pids_file.read_text().split()]
        assert kids, "the broker fixture started no process"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            out = "pytest ignored SIGTERM for 60 s"
        took = time.monotonic() - t0
    finally:
        inner.unlink(missing_ok=True)
        if proc is not None and proc.poll() is None:  # never leave the inner run behind, whatever failed
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 2, out[-2000:]  # pytest's "interrupted"
    assert took < 30, took
    time.sleep(1)
    assert [p for p in kids if _alive(p)] == [], out[-2000:]
