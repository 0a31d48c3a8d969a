"""Ctrl-C is one rule for every command: exit 130 and one line on stderr that says what was done and how to resume.

Each test runs a real ``finsent`` process and sends it a real SIGINT (what a terminal's Ctrl-C sends),
at a moment when the command has done some of its work. The rule matters for scripts: ``finsent ingest
replay x.csv && next`` must not carry on after an interrupted replay (exit 0 did). SIGTERM keeps its
service meaning (exit 0: a service asked to stop has stopped) and is tested with each service.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from finsent.core.wait import WaitTimeout, wait_until
from finsent.stream.broker import free_port

pytestmark = pytest.mark.integration

DATA = Path(__file__).parents[1] / "data" / "ingest"
INTERRUPTED = 130


class Finsent:
    """``python -m finsent ARGS`` in the background with stdout/stderr in files (no pipe to fill up)."""

    def __init__(self, args: list[str], tmp: Path, **env: str) -> None:
        stem = tmp / f"finsent-{args[0]}-{time.monotonic_ns()}"
        self.out_path, self.err_path = stem.with_suffix(".out"), stem.with_suffix(".err")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")}
        full_env.update(
            FINSENT_INGEST_STATE_DIR=str(tmp / "state"),
            FINSENT_CACHE_DIR=str(tmp / "cache"),
            FINSENT_REGISTRY="",
            **env,
        )
        if "FINSENT_CACHE_DIR" in os.environ:  # the derived model variants: reuse the session's cache
            full_env["FINSENT_CACHE_DIR"] = os.environ["FINSENT_CACHE_DIR"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "finsent", *args],
            env=full_env,
            cwd=tmp,
            stdout=self.out_path.open("w"),
            stderr=self.err_path.open("w"),
        )

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_for(self, cond: Callable[[], bool], timeout_s: float, what: str) -> None:
        """finsent.core.wait.wait_until, failing at once (with its stderr) when the command has exited."""

        def running() -> None:
            if self.proc.poll() is not None:
                raise AssertionError(f"finsent exited ({self.proc.returncode}) before {what}:\n{self.stderr[-3000:]}")

        try:
            wait_until(cond, timeout_s, 0.1, what=what, check=running)
        except WaitTimeout as exc:
            raise AssertionError(f"{exc}:\n{self.stderr[-3000:]}") from None

    def ctrl_c(self, timeout_s: float = 30.0) -> str:
        """SIGINT, wait, check the rule; returns the one ``finsent: interrupted:`` line."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"still running {timeout_s} s after Ctrl-C:\n{self.stdout[-2000:]}\n{self.stderr[-3000:]}"
            ) from None
        err = self.stderr
        assert self.proc.returncode == INTERRUPTED, err[-3000:]
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
        lines = [ln for ln in err.splitlines() if ln.startswith("finsent: ")]
        assert len(lines) == 1 and lines[0].startswith("finsent: interrupted: "), err[-3000:]
        assert err.rstrip().endswith(lines[0]), f"the interrupted line is not the last one:\n{err[-2000:]}"
        assert "(hint: " in lines[0], lines[0]
        return lines[0]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return -1


def _summary(out: str) -> dict[str, Any]:
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert lines, out
    return json.loads(lines[-1])


def test_replay_ctrl_c_exits_130_saying_how_many_were_published(tmp_path, kafka_bootstrap, unique_name) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(json.dumps({"id": f"r{i}", "text": f"row {i}: acme shares move"}) + "\n" for i in range(5000))
    )
    run = Finsent(
        ["ingest", "replay", str(rows), "--rate", "40"],
        tmp_path,
        FINSENT_BROKERS=kafka_bootstrap,
        FINSENT_TOPIC_RAW=f"raw.{unique_name}",
        FINSENT_PARTITIONS="1",
    )
    try:
        # the progress line on stderr (every 5 s without a terminal) counts what was published: wait for some
        run.wait_for(
            lambda: re.search(r"rows read, [1-9]\d* published", run.stderr) is not None, 60, "some rows published"
        )
        line = run.ctrl_c()
    finally:
        run.kill()
    summary = _summary(run.stdout)
    assert summary["stopped"] == "SIGINT" and 0 < summary["produced"] < 5000, summary
    m = re.search(r"replay stopped by Ctrl-C: ([\d,]+) item\(s\) published", line)
    assert m and int(m.group(1).replace(",", "")) == summary["produced"], line
    assert "rerun the same command to resume" in line


def test_replay_of_a_directory_says_it_is_a_directory(tmp_path) -> None:
    run = Finsent(["ingest", "replay", str(tmp_path)], tmp_path)
    run.proc.wait(60)
    assert run.proc.returncode == 4, run.stderr
    assert run.stderr.strip() == (
        f"finsent: error: {tmp_path} is a directory, not a file (hint: name the files in it, e.g. {tmp_path / '*.csv'})"
    )


def test_poller_ctrl_c_exits_130(tmp_path) -> None:
    from tests.ingest.test_ingest_support import LocalHTTP

    srv = LocalHTTP()
    srv.static("/a.xml", (DATA / "feed_a.xml").read_bytes())
    run = Finsent(["ingest", "rss", srv.url("/a.xml"), "--interval", "3600", "--dry-run"], tmp_path)
    try:
        run.wait_for(lambda: "fetched" in run.stderr, 60, "the first poll")
        line = run.ctrl_c()
    finally:
        run.kill()
        srv.close()
    assert "polling stopped by Ctrl-C" in line and "items already published are skipped" in line
    assert _summary(run.stdout)["stopped"] == "SIGINT"


def test_push_endpoint_ctrl_c_exits_130_and_sigterm_0(tmp_path) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        port = free_port()
        run = Finsent(["ingest", "http", "--port", str(port), "--dry-run"], tmp_path)
        try:
            run.wait_for(lambda: _status(f"http://127.0.0.1:{port}/readyz") == 200, 60, "/readyz")  # noqa: B023
            if sig == signal.SIGINT:
                line = run.ctrl_c()
                assert "push endpoint stopped by Ctrl-C: 0 item(s) acknowledged" in line
            else:
                run.proc.send_signal(sig)
                assert run.proc.wait(30) == 0, run.stderr
                assert "finsent: " not in run.stderr
        finally:
            run.kill()


def test_broker_ctrl_c_exits_130(tmp_path) -> None:
    run = Finsent(["broker", "--port", str(free_port()), "--no-create-topics"], tmp_path)
    try:
        run.wait_for(lambda: "listening" in run.stdout, 60, "the broker")
        line = run.ctrl_c()
    finally:
        run.kill()
    assert "broker stopped by Ctrl-C" in line and "broker stopped\n" not in run.stderr


def test_a_command_without_its_own_handler_gets_the_general_line(tmp_path) -> None:
    run = Finsent(["alerts", "watch", "--interval", "1", "--store", f"chdb://{tmp_path / 'store'}"], tmp_path)
    try:
        run.wait_for(lambda: (tmp_path / "store" / "status").exists(), 60, "the store opened")
        time.sleep(1.5)
        line = run.ctrl_c()
    finally:
        run.kill()
    assert line.startswith("finsent: interrupted: `finsent alerts watch` stopped by Ctrl-C before it finished")


def test_worker_ctrl_c_exits_130_saying_what_was_stored(tmp_path, kafka_bootstrap, unique_name) -> None:
    from finsent.models.testing import make_tiny_model

    model = make_tiny_model(tmp_path / "model")
    port = free_port()
    env = {
        "FINSENT_BROKERS": kafka_bootstrap,
        "FINSENT_STORE": f"chdb://{tmp_path / 'store'}",
        "FINSENT_TOPIC_RAW": f"raw.{unique_name}",
        "FINSENT_TOPIC_SCORED": f"scored.{unique_name}",
        "FINSENT_TOPIC_DLQ": f"dlq.{unique_name}",
        "FINSENT_TOPIC_ALERTS": f"alerts.{unique_name}",
        "FINSENT_PARTITIONS": "1",
        "FINSENT_SESSION_TIMEOUT_MS": "6000",
        "FINSENT_MODEL_DIR": str(model),
        "FINSENT_METRICS_PORT": str(port),
        "FINSENT_DRIFT_INTERVAL_S": "0",
    }
    run = Finsent(["worker", "--group", f"g.{unique_name}"], tmp_path, **env)
    try:
        run.wait_for(lambda: _status(f"http://127.0.0.1:{port}/readyz") == 200, 120, "the worker ready")
        line = run.ctrl_c(timeout_s=30)
    finally:
        run.kill()
    assert re.search(r"worker stopped by Ctrl-C: stored \d+ item\(s\)", line), line
    assert "goes on from the committed offsets" in line


def test_demo_ctrl_c_exits_130_saying_what_it_did(tmp_path) -> None:
    run = Finsent(["demo", "--seconds", "40"], tmp_path)
    try:
        run.wait_for(lambda: "spike: negative news about" in run.stdout, 240, "the model loaded")
        time.sleep(3.0)
        line = run.ctrl_c(timeout_s=60)
    finally:
        run.kill()
    assert re.search(r"demo stopped by Ctrl-C after \d+ s, before its summary: [\d,]+ item\(s\) produced", line)
    assert "temporary store were removed" in line and "run `finsent demo` again" in line
