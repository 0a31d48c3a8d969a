"""deploy/compose.yaml, validated offline: Debian's ``docker-compose config`` (no engine needed) renders
it, and the rendered model is checked for what matters: a health check on every service, data on
named volumes, secrets as git-ignored files with templates and no password anywhere in the files,
Kafka in KRaft mode, a ClickHouse LTS, Grafana provisioned with our dashboards and the datasource
uids they use, Prometheus loading our rules (promtool), workers <= partitions, every finsent command
accepted by the real CLI, and the retrain as a one-shot profile.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from finsent.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
SECRETS = DEPLOY / "compose" / "secrets"
FINSENT_SERVICES = {"worker", "ingest-rss", "ingest-mastodon", "ingest-http", "retrain"}


def render(**env: str) -> dict:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is missing: apt-get install docker-compose (.ci/setup does)"
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"), **env}
    res = subprocess.run(
        [exe, "-f", str(COMPOSE), "config"], capture_output=True, text=True, env=clean, cwd=DEPLOY, timeout=60
    )
    assert res.returncode == 0, res.stderr
    return yaml.safe_load(res.stdout)


@pytest.fixture(scope="module")
def model() -> dict:
    return render()


def mounts(svc: dict) -> list[dict]:
    """The service's volumes in the long form (Debian's compose 1.29 renders 'source:target:mode')."""
    out = []
    for vol in svc.get("volumes", []):
        if isinstance(vol, str):
            source, target, *mode = vol.split(":")
            kind = "bind" if source.startswith(("/", ".")) else "volume"
            vol = {"type": kind, "source": source, "target": target, "read_only": mode == ["ro"]}
        out.append(vol)
    return out


def test_docker_compose_rejects_a_broken_file(tmp_path: Path) -> None:
    """The validation means something: an unknown service key fails `config`."""
    bad = tmp_path / "compose.yaml"
    bad.write_text(COMPOSE.read_text().replace("stop_grace_period: 20s", "stop_grace_periods: 20s", 1))
    res = subprocess.run(
        [shutil.which("docker-compose") or "docker-compose", "-f", str(bad), "config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode != 0 and "stop_grace_periods" in res.stderr


def test_every_service_has_a_health_check(model: dict) -> None:
    assert FINSENT_SERVICES | {"kafka", "clickhouse", "prometheus", "alertmanager", "grafana"} <= set(model["services"])
    for name, svc in model["services"].items():
        test = svc.get("healthcheck", {}).get("test")
        assert test and test[0] == "CMD" and not svc["healthcheck"].get("disable"), name


def test_finsent_health_checks_hit_healthz_or_readyz_on_the_served_port(model: dict) -> None:
    for name in FINSENT_SERVICES - {"retrain"}:
        svc = model["services"][name]
        argv = svc["command"]
        port = argv[argv.index("--port") + 1] if "--port" in argv else svc["environment"]["FINSENT_METRICS_PORT"]
        if "--metrics-port" in argv:
            port = argv[argv.index("--metrics-port") + 1]
        probe = " ".join(svc["healthcheck"]["test"])
        assert re.search(rf"http://127\.0\.0\.1:{port}/(healthz|readyz)", probe), (name, probe)
    assert "/readyz" in " ".join(model["services"]["worker"]["healthcheck"]["test"])


def test_data_lives_on_named_volumes_and_binds_are_read_only(model: dict) -> None:
    named = set(model["volumes"])
    for name, svc in model["services"].items():
        for vol in mounts(svc):
            if vol["type"] == "volume":
                assert vol["source"] in named, (name, vol)
            else:
                assert vol["type"] == "bind" and vol.get("read_only"), f"{name}: writable bind mount {vol}"
                assert Path(vol["source"]).exists(), f"{name}: {vol['source']} does not exist"
    for stateful, path in {
        "kafka": "/var/lib/kafka/data",
        "clickhouse": "/var/lib/clickhouse",
        "prometheus": "/prometheus",
        "grafana": "/var/lib/grafana",
    }.items():
        assert any(v["type"] == "volume" and v["target"] == path for v in mounts(model["services"][stateful]))


def test_secrets_are_ignored_files_with_templates(model: dict) -> None:
    assert model["secrets"]
    for name, secret in model["secrets"].items():
        path = Path(secret["file"])
        assert path.parent == SECRETS, name
        assert path.with_name(path.name + ".example").is_file(), f"{name}: no {path.name}.example template"
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT, timeout=30)
        assert ignored.returncode == 0, f"{path} would be committed"
        kept = subprocess.run(["git", "check-ignore", "-q", str(path) + ".example"], cwd=ROOT, timeout=30)
        assert kept.returncode == 1, f"{path}.example must be tracked"
    users = {s: [x["source"] for x in svc.get("secrets", [])] for s, svc in model["services"].items()}
    for name in FINSENT_SERVICES:
        assert "finsent" in users[name]
        assert model["services"][name]["environment"]["FINSENT_CONFIG"] == "/run/secrets/finsent"


SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY$", re.IGNORECASE)


def test_no_password_in_the_files(model: dict) -> None:
    """Secret-looking variables only name files; no URL carries credentials; the templates hold placeholders."""
    for name, svc in model["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert key.endswith("__FILE") or key.endswith("_FILE"), f"{name}: {key}={value!r} in the file"
                assert str(value).startswith("/run/secrets/"), (name, key, value)
            assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", str(value)), f"{name}: credentials in {key}"
    text = "\n".join(p.read_text() for p in [COMPOSE, *DEPLOY.glob("compose/**/*.y*ml")])
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), "a URL with a password in the compose files"
    assert not re.search(r"(?i)(password|token)[ \t]*[:=][ \t]*['\"]?[A-Za-z0-9]{4,}", text.replace("__FILE", "")), (
        "a literal password or token"
    )
    for example in SECRETS.glob("*.example"):
        assert "CHANGE-ME" in example.read_text(), f"{example.name}: must hold a placeholder, not a real value"


def test_kafka_kraft_and_clickhouse_lts(model: dict) -> None:
    kafka = model["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "KAFKA_CONTROLLER_QUORUM_VOTERS" in env and not any("zookeeper" in s for s in model["services"])
    image, _, tag = model["services"]["clickhouse"]["image"].partition(":")
    assert image == "clickhouse/clickhouse-server" and re.fullmatch(r"\d{2}\.(3|8)", tag), "LTS releases are .3/.8"
    assert "CLICKHOUSE_PASSWORD" not in model["services"]["clickhouse"]["environment"]
    assert "/run/secrets/clickhouse_password" in " ".join(model["services"]["clickhouse"]["entrypoint"])


def test_workers_scale_within_the_partitions(model: dict) -> None:
    worker = model["services"]["worker"]
    partitions = int(worker["environment"]["FINSENT_PARTITIONS"])
    assert 1 < worker["deploy"]["replicas"] <= partitions
    assert int(model["services"]["kafka"]["environment"]["KAFKA_NUM_PARTITIONS"]) == partitions
    scaled = render(FINSENT_WORKERS="4", FINSENT_PARTITIONS="8")["services"]
    assert scaled["worker"]["deploy"]["replicas"] == 4 and scaled["worker"]["environment"]["FINSENT_PARTITIONS"] == "8"


def test_finsent_commands_are_accepted_by_the_cli(model: dict) -> None:
    parser = build_parser()
    for name in FINSENT_SERVICES:
        svc = model["services"][name]
        try:
            args = parser.parse_args(svc["command"])
        except SystemExit as exc:
            raise AssertionError(f"{name}: finsent {' '.join(svc['command'])} rejected") from exc
        assert args.command == svc["command"][0]
        assert svc["stop_grace_period"] == "20s" and svc.get("stop_signal", "SIGTERM") == "SIGTERM"
        assert svc["environment"]["FINSENT_BROKERS"] == "kafka:9092"


def test_retrain_is_a_one_shot_profile(model: dict) -> None:
    retrain = model["services"]["retrain"]
    assert retrain["profiles"] == ["retrain"] and retrain["restart"] == "no"
    assert retrain["build"]["target"] == "retrain"
    assert retrain["command"][:3] == ["retrain", "--max-minutes", "60"]
    assert any(v["target"] == "/var/lib/finsent/registry" and not v.get("read_only") for v in mounts(retrain))
    worker_registry = [v for v in mounts(model["services"]["worker"]) if v["target"] == "/var/lib/finsent/registry"]
    assert worker_registry and worker_registry[0]["source"] == "registry" and worker_registry[0]["read_only"]


def _datasource_uids(node: object) -> set[str]:
    """Every ``"datasource": {"uid": ...}`` in a dashboard, less variables and Grafana's built-in ("-- Grafana --")."""
    found: set[str] = set()
    if isinstance(node, dict):
        ds = node.get("datasource")
        if isinstance(ds, dict) and isinstance(ds.get("uid"), str) and not ds["uid"].startswith(("$", "-- ")):
            found.add(ds["uid"])
        for value in node.values():
            found |= _datasource_uids(value)
    elif isinstance(node, list):
        for value in node:
            found |= _datasource_uids(value)
    return found


def test_grafana_provisions_our_dashboards_with_their_datasources(model: dict) -> None:
    grafana = model["services"]["grafana"]
    assert "grafana-clickhouse-datasource" in grafana["environment"]["GF_PLUGINS_PREINSTALL"]
    binds = {v["target"]: Path(v["source"]) for v in mounts(grafana) if v["type"] == "bind"}
    dashboards = binds["/etc/grafana/finsent/dashboards"]
    assert dashboards == DEPLOY / "grafana" / "dashboards" and list(dashboards.glob("*.json"))
    provider = yaml.safe_load(binds["/etc/grafana/provisioning/dashboards/finsent.yml"].read_text())
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/finsent/dashboards"
    sources = yaml.safe_load(binds["/etc/grafana/provisioning/datasources/finsent.yml"].read_text())["datasources"]
    uids = {d["uid"] for d in sources}
    used: set[str] = set()
    for p in dashboards.glob("*.json"):
        dash = json.loads(p.read_text())
        used |= _datasource_uids(dash)
        # panels name ${DS_...} inputs (importable anywhere); provisioned, the datasource variables of those
        # names resolve them: their current values must be provisioned uids
        variables = {v["name"]: v for v in dash["templating"]["list"] if v["type"] == "datasource"}
        for name in set(re.findall(r"\$\{(DS_\w+)\}", p.read_text())):
            assert name in variables, f"{p.name}: ${{{name}}} resolves to nothing when provisioned"
            used.add(variables[name]["current"]["value"])
    assert used and used <= uids
    ch = next(d for d in sources if d["type"] == "grafana-clickhouse-datasource")
    assert ch["jsonData"]["host"] == "clickhouse" and ch["secureJsonData"]["password"].startswith("$__file{/run/")


def test_prometheus_loads_our_rules_and_scrapes_every_worker(model: dict, promtool: str, tmp_path: Path) -> None:
    prom = model["services"]["prometheus"]
    binds = {v["target"]: Path(v["source"]) for v in mounts(prom) if v["type"] == "bind"}
    assert binds["/etc/prometheus/finsent-rules.yml"] == DEPLOY / "prometheus" / "finsent-rules.yml"
    config = yaml.safe_load(binds["/etc/prometheus/prometheus.yml"].read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["finsent-worker"]["dns_sd_configs"][0]["names"] == ["worker"]  # every replica, by DNS
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    # issue 25: every rule file we ship is loaded (the drift rules were not), from a file mounted there
    shipped = {p.name for p in (DEPLOY / "prometheus").glob("finsent-*rules.yml")}
    assert {Path(r).name for r in config["rule_files"]} == shipped
    # promtool with the rules where the container has them (paths rewritten into a temp dir)
    for rule_file in config["rule_files"]:
        assert binds[rule_file] == DEPLOY / "prometheus" / Path(rule_file).name, rule_file
        shutil.copy(binds[rule_file], tmp_path / Path(rule_file).name)
    config["rule_files"] = [str(tmp_path / Path(r).name) for r in config["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    res = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_alertmanager_gets_our_config_and_template(model: dict) -> None:
    am = model["services"]["alertmanager"]
    binds = {v["target"]: Path(v["source"]) for v in mounts(am) if v["type"] == "bind"}
    config = yaml.safe_load(binds["/etc/alertmanager/alertmanager.yml"].read_text())
    for template in config["templates"]:
        assert binds[f"/etc/alertmanager/{template}"].is_file()


def test_published_ports_default_to_loopback(model: dict) -> None:
    for name, svc in model["services"].items():
        for port in svc.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} published beyond loopback by default: {port}"
    assert not model["services"]["kafka"].get("ports") and not model["services"]["clickhouse"].get("ports")
    json.dumps(model)  # the rendered model is plain data


def test_workers_data_api_token_comes_from_the_settings_secret(model: dict) -> None:
    """Issue 22, item 6: the workers listen on 0.0.0.0 for Prometheus, so the secret settings file carries the
    data API's token (a placeholder), and no worker port is published."""
    from finsent.core.settings import Settings

    worker = model["services"]["worker"]
    assert worker["environment"]["FINSENT_METRICS_HOST"] == "0.0.0.0" and "ports" not in worker
    assert "FINSENT_API_TOKEN" not in worker["environment"], "a token literal in compose.yaml"
    values = yaml.safe_load((SECRETS / "finsent.yaml.example").read_text())
    assert values["api_token"] == "CHANGE-ME"
    assert Settings(**values).worker.api_token is not None


def _metrics_port(svc: dict) -> int:
    """The port where a finsent service serves /metrics without a token: --metrics-port, else the
    FINSENT_METRICS_PORT it is given (a worker)."""
    command = svc["command"]
    if "--metrics-port" in command:
        return int(command[command.index("--metrics-port") + 1])
    return int(svc["environment"]["FINSENT_METRICS_PORT"])


def test_prometheus_scrapes_every_finsent_service_where_metrics_need_no_token(model: dict) -> None:
    """Issue 25: the push endpoint was scraped on its public port, whose /metrics answers 401 without the
    bearer token, so the target was always down. Each long-running finsent service is a target on its
    --metrics-port (open, on the compose network), and none on an `ingest http --port`."""
    prom = model["services"]["prometheus"]
    binds = {v["target"]: Path(v["source"]) for v in mounts(prom) if v["type"] == "bind"}
    config = yaml.safe_load(binds["/etc/prometheus/prometheus.yml"].read_text())
    targets: set[tuple[str, int]] = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                targets.add((host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            targets.update((name, int(dns["port"])) for name in dns["names"])
        assert "authorization" not in job, "no token copy: finsent's /metrics ports need none"
    long_running = {n for n in FINSENT_SERVICES if "profiles" not in model["services"][n]}
    for name in long_running:
        svc = model["services"][name]
        assert (name, _metrics_port(svc)) in targets, f"{name} is not scraped on its metrics port"
        assert svc["environment"]["FINSENT_METRICS_HOST"] == "0.0.0.0", name
        command = svc["command"]
        if command[:2] == ["ingest", "http"]:
            assert (name, int(command[command.index("--port") + 1])) not in targets, "the token-guarded port"
    assert {host for host, _ in targets} == long_running | {"127.0.0.1"}
