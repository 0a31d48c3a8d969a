"""The systemd units (deploy/systemd) and the retrain schedules (timer, cron line), checked offline.

``systemd-analyze verify`` needs every ExecStart binary to exist, so the units are copied to a temp
directory with ``/opt/finsent/bin/`` rewritten to this virtualenv's bin (where ``finsent`` and ``python``
are) and verified with that copy as the unit path: the shared ``finsent-.service.d`` drop-in and the
templates' instances load as they would in /etc/systemd/system. Any warning counts as a failure
(verify exits 0 on an unknown key). ``systemd-analyze security --offline`` scores the sandbox.
Beyond the validators: the properties that matter (hardening, restart limits, stop timeout against
finsent's bounded SIGTERM, a health check on the port each unit serves, flags the real CLI accepts).
"""

from __future__ import annotations

import argparse
import http.server
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from finsent.cli import build_parser
from finsent.stream.service import STOP_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
PROM = ROOT / "deploy" / "prometheus"
DROPIN = UNITS / "finsent-.service.d" / "10-hardening.conf"
CRON = ROOT / "deploy" / "schedule" / "finsent-retrain.cron"
CRONJOB = ROOT / "deploy" / "k8s" / "base" / "retrain-cronjob.yaml"
VENV_BIN = Path(sys.executable).parent
#: every unit, templates as one instance each (the instance of a worker is its metrics port)
INSTANCES = {
    "finsent-worker@.service": "finsent-worker@9464.service",
    "finsent-worker-health@.service": "finsent-worker-health@9464.service",
    "finsent-worker-health@.timer": "finsent-worker-health@9464.timer",
    "finsent-ingest-social@.service": "finsent-ingest-social@mastodon.service",
    "finsent-ingest-rss.service": "finsent-ingest-rss.service",
    "finsent-ingest-http.service": "finsent-ingest-http.service",
    "finsent-retrain.service": "finsent-retrain.service",
    "finsent-retrain.timer": "finsent-retrain.timer",
    "finsent.target": "finsent.target",
}
#: values for the variables the units expand, as their env files would set them
EXAMPLE_ENV = {
    "METRICS_PORT": "9480",
    "HTTP_HOST": "127.0.0.1",
    "HTTP_PORT": "8088",
    "FEEDS_FILE": "/etc/finsent/feeds.opml",
    "EXTRA_ARGS": "",
}


def _example_env(unit: str) -> dict[str, str]:
    """The variables a unit expands: the defaults above, the unit's own ``Environment=`` assignments, then the
    shipped example env file of that unit (the order systemd applies them: EnvironmentFile= wins)."""
    env = dict(EXAMPLE_ENV)
    for key, value in parse_unit(UNITS / unit).get("Service", []):
        if key == "Environment":
            env.update(a.partition("=")[::2] for a in shlex.split(value))
    if unit == "finsent-ingest-social@.service":  # its env file is required: the example must work
        for line in (UNITS / "ingest-mastodon.env.example").read_text().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                env[key] = value
    return env


def _analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:  # .ci/setup installs it (apt: systemd); a machine without it cannot check units
        pytest.skip("systemd-analyze not installed (apt-get install systemd; .ci/setup does)")
    return exe


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """``{section: [(key, value), ...]}``, repeated keys kept in order (systemd allows them)."""
    out: dict[str, list[tuple[str, str]]] = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, [])
            continue
        key, _, value = line.partition("=")
        out[section].append((key.strip(), value.strip()))
    return out


def effective(unit: str) -> dict[str, dict[str, str]]:
    """The unit with the shared drop-in applied (last assignment wins; enough for single-valued keys)."""
    merged: dict[str, dict[str, str]] = {}
    for part in (
        (DROPIN, UNITS / unit) if unit.startswith("finsent-") and unit.endswith(".service") else (UNITS / unit,)
    ):
        for section, pairs in parse_unit(part).items():
            merged.setdefault(section, {}).update(dict(pairs))
    return merged


def _services() -> list[str]:
    return sorted(p.name for p in UNITS.glob("*.service"))


def _long_running() -> list[str]:
    return [u for u in _services() if effective(u)["Service"].get("Type") == "exec"]


@pytest.fixture(scope="module")
def unit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units as installed, with the binaries pointing at this venv."""
    d = tmp_path_factory.mktemp("units")
    shutil.copytree(UNITS / "finsent-.service.d", d / "finsent-.service.d")
    for p in UNITS.iterdir():
        if p.suffix in (".service", ".timer", ".target"):
            (d / p.name).write_text(p.read_text(encoding="utf-8").replace("/opt/finsent/bin/", f"{VENV_BIN}/"))
    return d


def _verify(unit_dir: Path, *units: str) -> subprocess.CompletedProcess[str]:
    env = {"SYSTEMD_UNIT_PATH": f"{unit_dir}:", "PATH": "/usr/bin:/bin", "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run(
        [_analyze(), "verify", *units], cwd=unit_dir, env=env, capture_output=True, text=True, timeout=60
    )


def test_every_unit_file_is_checked() -> None:
    files = {p.name for p in UNITS.iterdir() if p.suffix in (".service", ".timer", ".target")}
    assert files == set(INSTANCES)


def test_systemd_analyze_verify_is_clean(unit_dir: Path) -> None:
    res = _verify(unit_dir, *INSTANCES.values())
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr


def test_verify_reports_a_broken_unit(unit_dir: Path, tmp_path: Path) -> None:
    """The check above means something: a typo'd key and a missing binary are reported."""
    broken = tmp_path / "broken"
    shutil.copytree(unit_dir, broken)
    unit = broken / "finsent-ingest-rss.service"
    unit.write_text(
        unit.read_text()
        .replace("TimeoutStopSec=", "TimeoutStopSecs=")
        .replace(f"{VENV_BIN}/finsent", "/nonexistent/finsent")
    )
    res = _verify(broken, "finsent-ingest-rss.service")
    out = res.stdout + res.stderr
    assert "Unknown key 'TimeoutStopSecs'" in out and "/nonexistent/finsent" in out


@pytest.mark.parametrize("unit", _services())
def test_sandbox_exposure_is_low(unit_dir: Path, unit: str) -> None:
    """systemd's own score of the sandbox: 2.5 or less of 10 ('OK'; an unhardened service scores 9.6)."""
    name = INSTANCES[unit]
    env = {"SYSTEMD_UNIT_PATH": f"{unit_dir}:", "PATH": "/usr/bin:/bin", "SYSTEMD_LOG_COLOR": "0"}
    res = subprocess.run(
        [_analyze(), "security", "--offline=true", "--threshold=25", "--no-pager", name],
        cwd=unit_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", res.stdout)
    assert res.returncode == 0 and level is not None, res.stdout[-2000:] + res.stderr
    assert float(level.group(1)) <= 2.5


@pytest.mark.parametrize("unit", _services())
def test_hardening_restart_and_limits(unit: str) -> None:
    svc = effective(unit)["Service"]
    for key, want in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "SystemCallFilter": "@system-service",
        "CapabilityBoundingSet": "",
        "StateDirectory": None,
        "CacheDirectory": "finsent",
    }.items():
        assert key in svc, f"{unit}: no {key}="
        if want is not None:
            assert svc[key] == want, f"{unit}: {key}={svc[key]}"
    assert set(svc["RestrictAddressFamilies"].split()) <= {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "EnvironmentFile" in svc
    # the health check is a one-shot that its timer runs again every minute; everything else restarts
    assert svc.get("Restart") == (None if "health" in unit else "on-failure")
    assert int(effective(unit)["Unit"]["StartLimitBurst"]) >= 1
    assert "MemoryMax" in svc
    assert "WatchdogSec" not in svc and svc.get("Type") != "notify", "finsent sends no sd_notify"
    # the health checker runs as root only to call systemctl; every finsent process is the finsent user
    assert svc.get("User") == ("finsent" if "health" not in unit else None)
    assert "DynamicUser" not in svc  # one uid: the registry is written by retrain and read by the workers


def _seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "min": 60, "h": 3600}
    m = re.fullmatch(r"(\d+)(ms|s|min|h)?", value)
    assert m, value
    return int(m.group(1)) * units[m.group(2) or "s"]


@pytest.mark.parametrize("unit", _long_running())
def test_stop_timeout_fits_the_bounded_sigterm(unit: str) -> None:
    """finsent stops within 10 s of SIGTERM (its stop is cut off after STOP_TIMEOUT_S): systemd waits longer."""
    svc = effective(unit)["Service"]
    assert svc.get("KillSignal", "SIGTERM") == "SIGTERM"
    assert 10 + STOP_TIMEOUT_S <= _seconds(svc["TimeoutStopSec"]) <= 60


def _expand(value: str, instance: str, env: dict[str, str] = EXAMPLE_ENV) -> list[str]:
    for name, example in env.items():
        value = value.replace("${" + name + "}", shlex.quote(example)).replace(f"${name}", example)
    value = value.replace("%S", "/var/lib").replace("%i", instance)
    assert "$" not in value and "%" not in value, value
    return shlex.split(value)


@pytest.mark.parametrize("unit", _long_running())
def test_health_check_hits_the_port_it_serves(unit: str) -> None:
    svc = effective(unit)["Service"]
    instance = INSTANCES[unit].split("@")[1].split(".")[0] if "@" in unit else ""
    start = _expand(svc["ExecStart"], instance, _example_env(unit))
    port = start[start.index("--metrics-port" if "--metrics-port" in start else "--port") + 1]
    post = _expand(svc["ExecStartPost"], instance, _example_env(unit))
    assert post[1].endswith("finsent-healthcheck") and post[-1] == f"http://127.0.0.1:{port}/healthz"


def _parses(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:  # argparse's way of saying no
        raise AssertionError(f"finsent {shlex.join(argv)}: rejected by the CLI") from exc


@pytest.mark.parametrize("unit", [u for u in _services() if "health" not in u])
def test_exec_start_is_accepted_by_the_cli(unit: str) -> None:
    svc = effective(unit)["Service"]
    instance = INSTANCES[unit].split("@")[1].split(".")[0] if "@" in unit else ""
    argv = _expand(svc["ExecStart"], instance, _example_env(unit))
    assert argv[0] == "/opt/finsent/bin/finsent"
    args = _parses(argv[1:])
    assert args.command == argv[1]


def _retrain_argv_of_cron() -> list[str]:
    line = next(ln for ln in CRON.read_text().splitlines() if ln and not ln.startswith("#") and "=" not in ln[:12])
    fields = line.split(None, 6)
    assert len(fields) == 7, "cron.d line: 5 time fields, a user, a command"
    cmd = shlex.split(fields[6].split(">>")[0])
    return fields[:6] + cmd[cmd.index("/opt/finsent/bin/finsent") + 1 :]


def test_the_three_schedules_agree() -> None:
    """Cron line, systemd timer and CronJob run the same command at the same time (Sunday 03:00)."""
    cron = _retrain_argv_of_cron()
    minute, hour, dom, month, dow, user, *argv = cron
    assert (minute, hour, dom, month, dow, user) == ("0", "3", "*", "*", "0", "finsent")
    timer = effective("finsent-retrain.timer")["Timer"]
    assert timer["OnCalendar"] == "Sun *-*-* 03:00:00" and timer["Persistent"] == "true"
    job = yaml.safe_load(CRONJOB.read_text())
    assert job["spec"]["schedule"] == f"{minute} {hour} {dom} {month} {dow}"
    k8s_argv = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    unit_argv = _expand(effective("finsent-retrain.service")["Service"]["ExecStart"], "")[1:]
    for each in (argv, k8s_argv, unit_argv):
        args = _parses(each)
        out = each[each.index("--json") + 1]
        assert args.command == "retrain" and args.max_minutes == 60 and out in map(str, vars(args).values())
    res = subprocess.run([_analyze(), "calendar", timer["OnCalendar"]], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "Sun " in res.stdout, res.stderr


def test_cron_line_guards_against_overlap() -> None:
    line = CRON.read_text().splitlines()[-1]
    assert "flock -n" in line and "timeout 90m" in line


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        status = 200 if self.path == "/healthz" else 503
        body = b"ok\n" if status == 200 else b"not yet joined the consumer group\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_healthcheck_script() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    script = [sys.executable, str(UNITS / "finsent-healthcheck")]
    try:
        ok = subprocess.run([*script, f"http://127.0.0.1:{port}/healthz"], capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
        bad = subprocess.run([*script, f"http://127.0.0.1:{port}/readyz"], capture_output=True, text=True, timeout=30)
        assert bad.returncode == 1 and "HTTP 503: not yet joined the consumer group" in bad.stderr
    finally:
        server.shutdown()
        server.server_close()
    gone = subprocess.run(
        [*script, "--wait", "1", f"http://127.0.0.1:{port}/healthz"], capture_output=True, text=True, timeout=30
    )
    assert gone.returncode == 1 and "refused" in gone.stderr.lower()


def test_secrets_example_carries_the_workers_data_api_token() -> None:
    """Issue 22, item 6: workers listen on 0.0.0.0 (finsent.env.example), so the secret settings carry api_token."""
    from finsent.core.settings import Settings

    env = (UNITS / "finsent.env.example").read_text()
    assert re.search(r"^FINSENT_METRICS_HOST=0\.0\.0\.0$", env, flags=re.MULTILINE)
    assert "FINSENT_API_TOKEN" not in env, "the token belongs in secrets.yaml (mode 0600), not the env file"
    values = yaml.safe_load((UNITS / "secrets.yaml.example").read_text())
    assert values["api_token"] == "CHANGE-ME"
    assert Settings(**values).worker.api_token is not None


#: ``KEY=value``, and ``#KEY=value``: an example assignment the operator uncomments as it stands
_ENV_ASSIGNMENT = re.compile(r"^#?\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def systemd_env_file(text: str, *, uncommented: bool = True) -> dict[str, str]:
    """The variables of an EnvironmentFile= as systemd reads them: a value is everything after the first
    ``=`` on its line (an inline ``# comment`` stays part of it), less surrounding whitespace and one pair
    of enclosing quotes. With ``uncommented``, the ``#KEY=value`` examples count too: an operator enables
    them by deleting the ``#``, so they must be valid as they stand."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or (stripped[0] in "#;" and not uncommented):
            continue
        match = _ENV_ASSIGNMENT.match(stripped)
        if match is None or (stripped[0] == ";"):
            continue
        key, value = match.group(1), match.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


def test_env_file_parser_keeps_an_inline_comment_in_the_value() -> None:
    """The parser below reads files as systemd does, so it sees the bug issue 25 reported (exit 3)."""
    env = systemd_env_file("#FINSENT_MODEL_THREADS=1   # per model call\n# just prose: a=b\nFINSENT_LOG_LEVEL=INFO\n")
    assert env == {"FINSENT_MODEL_THREADS": "1   # per model call", "FINSENT_LOG_LEVEL": "INFO"}


@pytest.mark.parametrize("example", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "deploy").rglob("*.env.example")))
def test_env_examples_have_no_inline_comments_and_finsent_accepts_every_value(
    example: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 25: ``FINSENT_MODEL_THREADS=1 # per model call`` reached finsent as '1 # per model call' and the
    worker exited 3. Every value of every shipped env example (commented-out examples too) goes through
    finsent's own settings parser, with nothing else FINSENT_* set, and every FINSENT_* name is a setting."""
    from finsent.core.settings import OTHER_ENV, Settings, load_settings

    env = systemd_env_file((ROOT / example).read_text())
    assert env, f"{example}: no assignments found"
    for key, value in env.items():
        assert "#" not in value, f"{example}: {key}={value!r}: systemd keeps the comment as part of the value"
    finsent_env = {k: v for k, v in env.items() if k.startswith("FINSENT_")}
    known = {f"FINSENT_{name}".upper() for name in Settings.flat_fields()} | OTHER_ENV
    assert set(finsent_env) <= known, f"{example}: not a finsent setting: {sorted(set(finsent_env) - known)}"
    for key in [k for k in os.environ if k.startswith("FINSENT_")]:
        monkeypatch.delenv(key)
    for key, value in finsent_env.items():
        monkeypatch.setenv(key, value)
    load_settings()  # raises ConfigError naming the variable on a bad value
