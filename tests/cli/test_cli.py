"""The command line as a user meets it: every ``--help`` works, and every error is one line with a code.

The error boundary is :func:`finsent.cli.main`: a :class:`~finsent.core.errors.FinsentError` from
any command becomes ``finsent: error: <what> (hint: <what to do>)`` on stderr and its family's
exit code, never a traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from finsent import __version__
from finsent.cli import command_table, main
from finsent.core.errors import EXIT_CODES, BrokerError, ConfigError, FinsentError

REPO = Path(__file__).resolve().parents[2]


#: every command's words after ``finsent`` (``()`` is ``finsent`` itself), from the table the CLI exposes
COMMANDS = [c.path for c in command_table().values()]


def test_every_command_is_reached() -> None:
    assert {c[0] for c in COMMANDS if c} >= {
        "demo",
        "worker",
        "broker",
        "query",
        "ingest",
        "train",
        "eval",
        "alerts",
        "bench",
        "config",
    }
    assert ("bench", "pipeline") in COMMANDS and ("ingest", "replay") in COMMANDS


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "finsent")
def test_every_help_works_and_describes_the_command(command: tuple[str, ...], capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: finsent") and len(out.splitlines()) > 3
    assert ":mod:" not in out and "``" not in out  # no raw reST markup in help texts


def test_version_and_exit_codes_in_help(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"finsent {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "exit codes:" in out and all(f"  {code:<4} {meaning}" in out for code, meaning in EXIT_CODES.items())


def test_global_flags_work_after_the_subcommand(tmp_path: Path, capsys) -> None:
    store = f"chdb://{tmp_path / 'db'}"
    assert main(["config", "--store", store, "--brokers", "k1:9092"]) == 0
    out = capsys.readouterr().out
    assert f'"store": "{store}"' in out and '"brokers": "k1:9092"' in out


def test_every_error_family_has_its_own_exit_code() -> None:
    families = [
        c
        for c in vars(__import__("finsent.core.errors", fromlist=["x"])).values()
        if isinstance(c, type) and issubclass(c, FinsentError) and c is not FinsentError
    ]
    codes = {c.exit_code for c in families} | {1}
    assert codes <= set(EXIT_CODES) and ConfigError.exit_code != BrokerError.exit_code != 1


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "finsent", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def test_worker_with_its_metrics_port_taken_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _run("worker", "--metrics-port", str(port), "--brokers", "127.0.0.1:1")
    assert proc.returncode == ConfigError.exit_code, proc.stderr
    assert proc.stderr.startswith(f"finsent: error: cannot serve metrics on 127.0.0.1:{port}")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and "FINSENT_METRICS_PORT" in proc.stderr


def test_broker_that_fails_to_start_is_one_line(tmp_path: Path) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'tansu: cannot bind' >&2\nexit 3\n")
    fake.chmod(0o755)
    proc = _run("broker", "--port", "0", env={"CALF_TANSU_BIN": str(fake)})
    assert proc.returncode == BrokerError.exit_code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("finsent: error: Tansu exited with code 3 while starting: tansu: cannot bind")
    assert "Traceback" not in proc.stderr and "AttributeError" not in proc.stderr


def test_bad_setting_in_the_environment_is_one_line() -> None:
    proc = _run("alerts", "watch", "--once", env={"FINSENT_ALERT_DETECTOR": "foo"})
    assert proc.returncode == ConfigError.exit_code
    assert proc.stderr == (
        "finsent: error: FINSENT_ALERT_DETECTOR='foo': must be one of 'ewma_z' or 'cusum' "
        "(hint: fix the value named; a flag beats the environment, which beats the file)\n"
    )


def test_worker_without_a_broker_gives_up_in_about_15_s_with_one_line() -> None:
    import time

    t0 = time.monotonic()
    proc = _run("worker", "--brokers", "127.0.0.1:1", "--metrics-port", "0", timeout=90)
    took = time.monotonic() - t0
    assert proc.returncode == 6, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("finsent: error: cannot reach Kafka at 127.0.0.1:1")
    assert "Traceback" not in proc.stderr and took < 25, f"gave up after {took:.1f} s"
