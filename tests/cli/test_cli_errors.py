"""Errors a new user meets keep the one-line promise: a bad store path, a config file, an argument, a hint.

Each case runs the real ``finsent`` (a subprocess where chdb or stderr itself is part of what is
tested) and checks the exit code, that stderr is exactly one ``finsent: error:`` line with no
traceback, and what the line says. Hints must lead somewhere: a settings error never sends the user
to ``finsent config`` (which fails the same way), a one-shot command never promises that "the next
call reconnects", and a ``clickhouse://`` URL never gets the embedded store's hint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from finsent.core.argtypes import MIN_TOKEN_CHARS, parse_duration, token_problem
from finsent.core.errors import ConfigError, InputError, StoreError, StoreUnavailable
from finsent.stream.broker import free_port

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")}
    full.update(PYTHONPATH=str(REPO), FINSENT_REGISTRY="", **env)
    return subprocess.run(
        [sys.executable, "-m", "finsent", *args], capture_output=True, text=True, env=full, cwd=cwd, timeout=120
    )


def one_error_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("finsent: error: "), proc.stderr
    return lines[0]


# -- store paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["file", "under_file", "proc", "sys"])
def test_a_chdb_path_that_cannot_be_a_directory_is_one_line_and_exit_3(tmp_path: Path, where: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    path = {
        "file": str(afile),
        "under_file": str(afile / "sub"),
        "proc": "/proc/forbidden",
        "sys": "/sys/finsent-forbidden",
    }[where]
    line = one_error_line(run("--store", f"chdb://{path}", "query", "count"), ConfigError.exit_code)
    assert path in line and "hint: point --store / FINSENT_STORE at a directory you can write" in line
    if where == "file":
        assert "is a file, not a directory" in line
    if where == "under_file":
        assert f"is under {afile}, which is a file" in line


@pytest.mark.parametrize(
    "url",
    [
        "clickhouse://[::1/db",
        "clickhouse://h:99999/db",
        "clickhouse:///db",
        "clickhouse://h/db?connect_timeout=soon",
        "clickhouse://h/db?bogus=1",
        "chdb://",
        "chdb://~no-such-user-here/x",
    ],
)
def test_bad_store_urls_are_one_line_and_exit_3(url: str) -> None:
    line = one_error_line(run("--store", url, "query", "count"), ConfigError.exit_code)
    assert "finsent config" not in line  # it would print the same URL


HOLD = textwrap.dedent("""
    import sys, time
    from chdb import session
    s = session.Session(sys.argv[1])
    print("held", flush=True)
    time.sleep(120)
""")


def _hold(path: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_store_held_by_another_process_prints_no_chdb_noise(tmp_path: Path) -> None:
    path = tmp_path / "held"
    holder = _hold(path)
    try:
        proc = run("--store", f"chdb://{path}", "query", "count", FINSENT_METRICS_PORT=str(free_port()))
    finally:
        holder.kill()
        holder.wait()
    line = one_error_line(proc, StoreUnavailable.exit_code)
    assert f"is in use by process {holder.pid}" in line
    assert "Code: 76" not in proc.stderr and "DB::Exception" not in proc.stderr


def test_when_the_lock_holder_cannot_be_told_chdb_output_is_still_caught(tmp_path: Path) -> None:
    """Without /proc/locks the open itself decides; chdb prints 'Cannot lock file' to fd 2, which is caught."""
    path = tmp_path / "held"
    holder = _hold(path)
    probe = textwrap.dedent("""
        import sys
        import finsent.stream.store.embedded as e
        e._lock_holder = lambda path: None  # as on a system without /proc/locks
        try:
            e.ChdbStore(sys.argv[1])
        except Exception as exc:
            print(type(exc).__name__, exc)
    """)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", probe, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    finally:
        holder.kill()
        holder.wait()
    assert proc.stdout.startswith("StoreInUse chdb data path"), proc.stdout + proc.stderr
    assert proc.stderr == "", proc.stderr  # chdb wrote "Code: 76. DB::Exception: Cannot lock file" here before


# -- config files --------------------------------------------------------------------------------


def config_shown(stdout: str) -> dict[str, Any]:
    """``finsent config``'s JSON, grouped by section (kafka, worker, ...; a few top-level values such as
    log_level), as one flat dict: the setting names are unique across the sections."""
    shown = json.loads(stdout)
    flat = {name: value for name, value in shown.items() if not isinstance(value, dict)}
    for section in (value for value in shown.values() if isinstance(value, dict)):
        flat.update(section)
    return flat


def test_a_json_config_is_parsed_as_json(tmp_path: Path) -> None:
    cfg = tmp_path / "x.json"
    cfg.write_text(json.dumps({"batch_max": 7, "topic_raw": "my.raw"}, indent=2))
    proc = run("--config", str(cfg), "config")
    assert proc.returncode == 0, proc.stderr
    shown = config_shown(proc.stdout)
    assert (shown["batch_max"], shown["topic_raw"]) == (7, "my.raw")


def test_a_config_without_extension_is_read_by_its_content(tmp_path: Path) -> None:
    """compose mounts its YAML settings file at /run/secrets/finsent, with no extension."""
    for name, text in (
        ("yaml-secret", "finsent:\n  batch_max: 9\n"),
        ("toml-secret", "batch_max = 9\n"),
        ("json-secret", '{"batch_max": 9}'),
    ):
        (tmp_path / name).write_text(text)
        proc = run("config", FINSENT_CONFIG=str(tmp_path / name))
        assert proc.returncode == 0 and config_shown(proc.stdout)["batch_max"] == 9, (name, proc.stderr)


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("c.toml", '# settings\nbrokers = "k:9092"\n\nbatch_max = 0\n', 4),
        ("c.json", '{\n  "brokers": "k:9092",\n  "batch_max": 0\n}\n', 3),
        ("c.yaml", "finsent:\n  brokers: k:9092\n  batch_max: 0\n", 3),
    ],
)
def test_a_bad_value_in_a_file_names_the_file_and_the_line(tmp_path: Path, name: str, text: str, line: int) -> None:
    cfg = tmp_path / name
    cfg.write_text(text)
    err = one_error_line(run("--config", str(cfg), "query", "count"), ConfigError.exit_code)
    assert f"config file {cfg}, line {line}: batch_max=0: Input should be greater than or equal to 1" in err
    assert "finsent config" not in err  # `finsent config` fails with the same error


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("c.toml", 'brokers = "k:9092"\nbatch_maxx = 3\n', 2),
        ("c.json", '{"brokers": "k:9092",\n "batch_maxx": 3}', 2),
        ("c.yaml", "brokers: k:9092\nbatch_maxx: 3\n", 2),
    ],
)
def test_an_unknown_key_in_a_file_is_warned_with_a_suggestion_like_an_unknown_variable(
    tmp_path: Path, name: str, text: str, line: int
) -> None:
    cfg = tmp_path / name
    cfg.write_text(text)
    proc = run("--config", str(cfg), "config", FINSENT_BATCHMAX="4")
    assert proc.returncode == 0, proc.stderr
    assert config_shown(proc.stdout)["batch_max"] == 128  # neither was taken
    assert (
        f"config file {cfg}, line {line}: unknown setting batch_maxx is ignored (did you mean batch_max?)"
        in proc.stderr
    )
    assert "unknown setting FINSENT_BATCHMAX is ignored (did you mean FINSENT_BATCH_MAX?)" in proc.stderr


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("dir.toml", None, "is a directory, not a file"),
        ("bin.toml", b"batch_max = 3\n\xff\xfe", "is not UTF-8 text"),
        ("comma.json", b'{"batch_max": 3,}', "invalid JSON at line 1, column 17"),
        ("list.json", b"[1, 2]", "must hold a mapping of settings"),
        ("deep.json", b"[" * 100_000 + b"]" * 100_000, "invalid JSON"),
        ("int-key.yaml", b"1: 2\n", None),
    ],
)
def test_unusable_config_files_are_one_line(
    tmp_path: Path, name: str, content: bytes | None, expected: str | None
) -> None:
    cfg = tmp_path / name
    if content is None:
        cfg.mkdir()
    else:
        cfg.write_bytes(content)
    proc = run("--config", str(cfg), "config")
    if expected is None:  # a key that is no name: warned and ignored like any unknown name
        assert proc.returncode == 0 and "unknown setting 1 is ignored" in proc.stderr, proc.stderr
        return
    assert expected in one_error_line(proc, ConfigError.exit_code)


# -- arguments -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["query", "top", "--limit", "-3"], "argument --limit: must be >= 1, got -3"),
        (["query", "top", "--limit", "0"], "argument --limit: must be >= 1, got 0"),
        (["query", "top", "--since", "-1h"], "'-1h': durations are positive and count back from now: use 1h"),
        (["query", "count", "--since=-30d"], "durations are positive and count back from now: use 30d"),
        (["query", "count", "--since", "1e400w"], "is not a duration"),
        (["query", "count", "--since", "99999999999w"], "is longer than 100 years"),
        (["ingest", "replay", "x.csv", "--limit", "-1"], "argument --limit: must be >= 1"),
        (["ingest", "http", "--port", "70000"], "must be a port from 0 to 65535"),
        (["worker", "--batch-max", "0"], "argument --batch-max: must be >= 1"),
        (["worker", "--batch-within", "nan"], "must be a number > 0"),
    ],
)
def test_bad_arguments_are_usage_errors_that_say_why(args: list[str], expected: str, capsys) -> None:
    from finsent.cli import main

    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "expected one argument" not in err, err


def test_durations_are_positive() -> None:
    assert parse_duration("1h").total_seconds() == 3600
    assert parse_duration("30d").days == 30
    for bad in ("-1h", "0s", "1y", "h", "", "1.5.h"):
        with pytest.raises(Exception, match="duration|positive"):
            parse_duration(bad)


def test_replay_of_a_missing_file_and_of_a_directory(tmp_path: Path) -> None:
    line = one_error_line(run("ingest", "replay", str(tmp_path)), InputError.exit_code)
    assert f"{tmp_path} is a directory, not a file" in line and "no such file" not in line
    line = one_error_line(run("ingest", "replay", str(tmp_path / "nope.csv")), InputError.exit_code)
    assert "no such file" in line


# -- hints that lead somewhere -------------------------------------------------------------------


def test_a_settings_error_does_not_send_the_user_to_finsent_config() -> None:
    for args in (["query", "count"], ["config"]):
        line = one_error_line(run(*args, FINSENT_BATCH_MAX="zero"), ConfigError.exit_code)
        assert line.startswith("finsent: error: FINSENT_BATCH_MAX='zero'")
        assert "finsent config" not in line and "fix the value named" in line


def test_an_unreachable_server_gets_a_server_hint_not_the_embedded_one() -> None:
    port = free_port()  # nothing listens there
    line = one_error_line(
        run("--store", f"clickhouse://127.0.0.1:{port}/db?connect_timeout=2", "query", "count"),
        StoreUnavailable.exit_code,
    )
    assert "is unreachable" in line and "is the ClickHouse server running" in line
    assert "next call reconnects" not in line and "embedded" not in line


# -- tokens ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "CHANGE-ME",
        "changeme",
        "change_me",
        "Change-Me-Now",
        "token",
        "secret",
        "password",
        "xxx",
        "xxxxxxxxxxxxxxxxxxxxxxxx",
        "short-random",
        "a1b2c3",
    ],
)
def test_placeholder_and_short_tokens_are_refused(token: str) -> None:
    problem = token_problem(token, "FINSENT_HTTP_TOKEN")
    assert problem is not None and problem.startswith("FINSENT_HTTP_TOKEN is ") and "openssl rand" in problem


def test_a_random_token_is_accepted() -> None:
    assert token_problem("3f9c2a7e41b0d8c65e1a9f2b", "FINSENT_API_TOKEN") is None
    assert token_problem(None, "FINSENT_API_TOKEN") is None  # unset: each server decides


def test_the_token_length_boundary() -> None:
    assert MIN_TOKEN_CHARS == 16
    assert token_problem("k0123456789abcd", "X") is not None  # 15 characters
    assert token_problem("k0123456789abcde", "X") is None  # 16


def test_the_worker_refuses_a_placeholder_api_token_at_start() -> None:
    t0 = time.monotonic()
    line = one_error_line(run("worker", FINSENT_API_TOKEN="CHANGE-ME"), ConfigError.exit_code)
    assert "FINSENT_API_TOKEN is the placeholder 'CHANGE-ME'" in line and time.monotonic() - t0 < 60


def test_store_error_codes_are_documented() -> None:
    from finsent.core.errors import EXIT_CODES

    assert {ConfigError.exit_code, StoreError.exit_code, StoreUnavailable.exit_code, 130} <= set(EXIT_CODES)


# -- the push endpoint: no broker address on the open /readyz, no placeholder token ------------------


@pytest.mark.parametrize("token", ["CHANGE-ME", "changeme", "svc-token"])
def test_the_push_endpoint_refuses_a_placeholder_or_short_token_at_start(token: str) -> None:
    for host in ("127.0.0.1", "0.0.0.0"):
        line = one_error_line(
            run("ingest", "http", "--host", host, "--port", str(free_port()), "--dry-run", FINSENT_HTTP_TOKEN=token),
            ConfigError.exit_code,
        )
        assert line.startswith("finsent: error: finsent ingest http: FINSENT_HTTP_TOKEN is ")
        assert token not in line or "placeholder" in line  # a short real token is never echoed


def test_the_open_readyz_of_the_push_endpoint_says_only_ready_or_not(tmp_path: Path, kafka_bootstrap: str) -> None:
    import urllib.error
    import urllib.request

    def readyz(port: int) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return -1, ""

    dead = f"127.0.0.1:{free_port()}"
    for brokers, want in ((dead, 503), (kafka_bootstrap, 200)):
        port = free_port()
        full = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")}
        full.update(
            PYTHONPATH=str(REPO),
            FINSENT_BROKERS=brokers,
            FINSENT_INGEST_STATE_DIR=str(tmp_path / "s"),
            FINSENT_HTTP_TOKEN="a-real-token-0123456789",
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "finsent", "ingest", "http", "--port", str(port)],
            env=full,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            status, body = readyz(port)
            while status != want and time.monotonic() < deadline:
                time.sleep(0.2)
                status, body = readyz(port)
        finally:
            proc.terminate()
            proc.wait(30)
        assert status == want, body
        assert json.loads(body) == {"ready": want == 200, "status": "ready" if want == 200 else "not ready"}
        assert brokers not in body and "Kafka" not in body and "127.0.0.1" not in body
