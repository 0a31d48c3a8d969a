"""Fuzz the argument space of every leaf command: no argv may end in a traceback.

The test walks the real argparse tree (so a new command is fuzzed without touching this file) and
draws, per leaf, a random subset of its flags and positionals with values of the kind each expects
and of every kind it does not: negative and huge numbers, ``nan``/``inf``, ``-1h``, unknown choices,
paths that are missing, directories, files, under a file or in ``/proc``, plus the global flags with
bad store URLs, bad config files and bad brokers. ``finsent.cli.main(argv)`` runs in-process and
must end with 0, argparse's 2, or a documented exit code (``EXIT_CODES``), with stderr free of
tracebacks; a sample also runs as real processes.

What keeps it fast and harmless: every argv carries a ``--store`` that fails before any engine opens
(a bad URL or a closed port with a 1 s timeout: this process must never open a chdb path of its own)
and a closed broker port; commands that start servers or long work (worker, broker, demo, training,
benchmarks, the pollers, the push endpoint, scoring) get their random flags followed by an unknown
flag, so argparse's type checks run but the command does not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from finsent.cli import command_table, main
from finsent.core.errors import EXIT_CODES
from finsent.stream.broker import free_port

REPO = Path(__file__).resolve().parents[2]
ALLOWED = {0, 2, *EXIT_CODES}
#: leaf commands (or their first words) that start a server or long work: parse checks only
LONG = {
    ("broker",),
    ("worker",),
    ("demo",),
    ("train",),
    ("distill",),
    ("retrain",),
    ("eval",),
    ("score",),
    ("rescore",),
    ("bench",),
    ("ingest", "rss"),
    ("ingest", "mastodon"),
    ("ingest", "reddit"),
    ("ingest", "bluesky"),
    ("ingest", "http"),
}
STOP = "--finsent-fuzz-stops-here"  # an unknown flag: argparse exits 2 after converting every value


#: every leaf command (its words after ``finsent``) and its parser, from the table the CLI exposes
LEAVES = sorted(((c.path, c.parser) for c in command_table().values() if c.run is not None), key=lambda leaf: leaf[0])
GLOBAL_DESTS = {"config", "brokers", "store", "log_level", "help", "version"}


def _is_long(path: tuple[str, ...]) -> bool:
    return any(path[: len(words)] == words for words in LONG)


@pytest.fixture(scope="module")
def pools(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Values for paths, stores, configs and brokers; everything lives in a temporary directory."""
    tmp = tmp_path_factory.mktemp("fuzz")
    afile = tmp / "afile.txt"
    afile.write_text("text\nnot a csv header\n")
    (tmp / "adir").mkdir()
    good_json = tmp / "good.json"
    good_json.write_text(json.dumps({"batch_max": 3, "store": "chdb:///proc/forbidden"}))
    configs = {
        "bad_value.toml": "batch_max = 0\n",
        "unknown.yaml": "batchmax: 3\n",
        "broken.json": '{"a": ',
        "list.yaml": "- 1\n",
        "noext": "store: 5\n",
        "deep.json": "[" * 5000 + "]" * 5000,
    }
    for name, text in configs.items():
        (tmp / name).write_text(text)
    closed = free_port()
    return {
        "path": [
            str(tmp / "missing.csv"),
            str(tmp / "adir"),
            str(afile),
            str(afile / "under"),
            "/proc/forbidden",
            "",
            "-",
            str(tmp / "new-out.txt"),
            str(good_json),
            "ünïcödé ✓.csv",
            "a" * 300,
        ],
        "store": [
            "chdb:///proc/forbidden",
            f"chdb://{afile}",
            f"chdb://{afile}/sub",
            "chdb://",
            "chdb://~nobody-x/y",
            "clickhouse://[::1/db",
            "clickhouse://h:99999/db",
            "clickhouse:///db",
            "postgres://x/y",
            f"clickhouse://127.0.0.1:{closed}/db?connect_timeout=1&send_receive_timeout=1",
            f"clickhouse://u:p%40ss@127.0.0.1:{closed}/db?connect_timeout=soon",
            f"chdb://{tmp / 'adir'}?x=1",
            f"chdb://{tmp / ('n' * 300)}",
        ],
        "config": [str(tmp / name) for name in configs]
        + [str(good_json), str(tmp / "missing.toml"), str(tmp), "c" * 300 + ".toml"],
        "brokers": ["bad", f"127.0.0.1:{closed}", "a:1,b", "", "h:99999999"],
        "log_level": ["debug", "bogus", "WARNING"],
    }


def _mostly(valid: st.SearchStrategy[str], invalid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Valid values 7 times in 10, so that most argv get past argparse and into the command."""
    return st.integers(0, 9).flatmap(lambda i: valid if i < 7 else invalid)


def _number_text() -> st.SearchStrategy[str]:
    return _mostly(st.integers(1, 64).map(str), _any_number_text())


def _any_number_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(-(10**6), 10**6).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(str),
        st.sampled_from(["0", "-0", "1", "nan", "inf", "-inf", "1e400", "9" * 40, "0x10", "", " 3", "abc", "1_000"]),
    )


def _duration_text() -> st.SearchStrategy[str]:
    return _mostly(st.sampled_from(["30s", "15m", "1h", "2h", "7d", "30d", "1w"]), _any_duration_text())


def _any_duration_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.from_regex(r"-?[0-9]{1,13}(\.[0-9]{1,3})?[smhdwy]?", fullmatch=True),
        st.sampled_from(["1h", "-1h", "30d", "0s", "1e9w", "h", "", "1 h", "99999999999w", "-5"]),
    )


TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)


def _value(action: argparse.Action, pools: dict[str, list[str]]) -> st.SearchStrategy[str]:
    name = getattr(action.type, "__name__", "") if action.type is not None else ""
    if action.choices:
        return _mostly(st.sampled_from([str(c) for c in action.choices]), TEXT)
    if name in ("int", "float", "positive_int", "positive_float", "non_negative_int", "port", "_nonneg_int"):
        return _number_text()
    if name == "parse_duration":
        return _duration_text()
    pathish = name == "Path" or any(
        w in action.dest
        for w in ("path", "dir", "csv", "file", "out", "json", "png", "plot", "data", "feeds", "model", "teacher")
    )
    if pathish:
        return st.one_of(st.sampled_from(pools["path"]), TEXT)
    return st.one_of(TEXT, _number_text(), st.sampled_from(pools["path"]))


@st.composite
def argvs(draw: st.DrawFn, pools: dict[str, list[str]]) -> list[str]:
    path, parser = draw(st.sampled_from(LEAVES))
    argv = ["x1y2z3" if word == "ITEM_ID" else word for word in path]
    for action in parser._actions:
        if action.dest in GLOBAL_DESTS:
            continue
        positional = not action.option_strings
        if not positional and not draw(st.booleans()):
            continue
        values: list[str] = []
        if action.nargs == 0:
            pass
        elif action.nargs in ("+", "*") or isinstance(action.nargs, int):
            n = action.nargs if isinstance(action.nargs, int) else draw(st.integers(1, 3))
            values = [draw(_value(action, pools)) for _ in range(n)]
        elif action.nargs == "?":
            values = draw(st.lists(_value(action, pools), max_size=1))
        else:
            values = [draw(_value(action, pools))]
        if positional:
            argv += values
        else:
            argv += [draw(st.sampled_from(action.option_strings)), *values]
    if path == ("alerts", "watch"):
        argv.append("--once")  # one poll of the (unreachable) store, never a loop
    # half the time the store is a server that is not there (the command runs up to its first query)
    argv += ["--store", draw(_mostly(st.just(pools["store"][9]), st.sampled_from(pools["store"])))]
    for flag in ("config", "brokers", "log_level"):
        if draw(st.integers(0, 3)) == 0:
            argv += [f"--{flag.replace('_', '-')}", draw(st.sampled_from(pools[flag]))]
    if "--brokers" not in argv:
        argv += ["--brokers", pools["brokers"][1]]  # never the default 127.0.0.1:9092, which may be a real one
    if _is_long(path):
        argv.append(STOP)
    return argv


@pytest.fixture
def fuzz_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith("FINSENT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FINSENT_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("FINSENT_INGEST_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("FINSENT_METRICS_PORT", str(free_port()))  # no worker API answers there
    monkeypatch.setenv("FINSENT_PUBLISH_TIMEOUT_S", "2")
    monkeypatch.chdir(tmp_path)  # relative paths and default outputs land here
    return tmp_path


def test_every_leaf_command_is_fuzzed() -> None:
    paths = {path for path, _ in LEAVES}
    assert ("query", "top") in paths and ("ingest", "replay") in paths and ("config",) in paths
    assert len(paths) >= 30


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_no_argv_ends_in_a_traceback(data: st.DataObject, pools, fuzz_env, capsys) -> None:
    argv = data.draw(argvs(pools), label="argv")
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        code = exc.code if isinstance(exc.code, int) else 2
    err = capsys.readouterr().err
    event(f"exit {code}")
    assert code in ALLOWED, f"exit {code} for {argv}:\n{err[-2000:]}"
    assert "Traceback" not in err, f"{argv}:\n{err[-3000:]}"
    # a FinsentError is one line; exit 1 may also be a command's own verdict (a --check that found drift)
    lines = [ln for ln in err.splitlines() if ln.startswith("finsent: ")]
    assert len(lines) <= 1, f"{argv}: more than one finsent line:\n{err[-2000:]}"
    assert code in (0, 1, 2) or len(lines) == 1, f"{argv}: exit {code} without its finsent line:\n{err[-2000:]}"


@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_sample_as_real_processes(data: st.DataObject, pools, fuzz_env) -> None:
    """The same argv as a real process: what a shell sees (exit status, stderr), chdb's fd-2 output included."""
    argv = data.draw(argvs(pools), label="argv")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "finsent", *argv], capture_output=True, text=True, env=env, timeout=60, cwd=fuzz_env
    )
    assert proc.returncode in ALLOWED, f"exit {proc.returncode} for {argv}:\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr and "DB::Exception" not in proc.stderr, f"{argv}:\n{proc.stderr[-3000:]}"
