"""Every scrape target of the compose and systemd deployments is up, against a real Prometheus (issue 25),
and every finsent service of the deployment is a target.

The offline checks (tests/deploy/test_deploy_compose.py) read the scrape config; this one runs it. The rendered
compose model (``docker-compose config``) gives Prometheus' config file and each finsent service's
command. Each ingest service runs for real (``python -m finsent ingest ...``, its compose command with
its ports moved to free loopback ports, its outside sources pointed at a closed local port, a real Tansu
broker); the worker is stood in for by a local /metrics server (a real worker needs a model and a
store, and serves /metrics on FINSENT_METRICS_PORT the same way). Every target of the config is then
rewritten from ``service:port`` to the loopback port where that service serves that same port, so a
target on the wrong port (the push endpoint's token-guarded 8088, issue 25) is scraped there and is down.
Prometheus (Debian's 2.42, tests/fixtures/prom.py) loads the config with the shipped rule files, and
/api/v1/targets must show every target up.

systemd: the same with deploy/prometheus/prometheus.yml (the one-host example) and the units of deploy/systemd,
each ExecStart expanded with the unit's own Environment= defaults and its shipped env example
(tests/deploy/test_deploy_systemd.py), the worker as finsent-worker@9464.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from finsent.stream.broker import free_port
from tests.deploy.test_deploy_compose import mounts, render

TOKEN = "scrape-live-test-token-0123456789abcdef"


class _Process:
    """``python -m finsent ARGS`` in the background with a clean FINSENT_* environment, stderr to a file."""

    def __init__(self, args: list[str], tmp: Path, env: dict[str, str]) -> None:
        self.log = tmp / f"{args[1]}-{time.monotonic_ns()}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")} | env
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "finsent", *args],
            env=full_env,
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def worker_like_metrics() -> Iterator[int]:
    """A /metrics endpoint in the worker's place (200, exposition text); anything else 404."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            body = b'# TYPE finsent_model_info gauge\nfinsent_model_info{version="test"} 1\n'
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield port
    server.shutdown()
    server.server_close()


def _flag(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command else None


def _run_locally(command: list[str], tmp: Path, dead_port: int) -> tuple[list[str], dict[int, int]]:
    """The compose command with every port flag moved to a free loopback port (and the map from the
    compose port to the local one), the push endpoint bound to loopback, and the sources that would
    reach the internet pointed at a closed local port."""
    local = list(command)
    ports: dict[int, int] = {}
    for flag in ("--port", "--metrics-port"):
        if flag in local:
            i = local.index(flag) + 1
            ports[int(local[i])] = free_port()
            local[i] = str(ports[int(local[i])])
    if "--host" in local:
        local[local.index("--host") + 1] = "127.0.0.1"
    if "--feeds" in local:
        feeds = tmp / "feeds.txt"
        feeds.write_text(f"http://127.0.0.1:{dead_port}/feed.xml 600\n")
        local[local.index("--feeds") + 1] = str(feeds)
    if local[:2] == ["ingest", "mastodon"]:
        if "--instance" in local:  # the systemd env example names mastodon.social
            local[local.index("--instance") + 1] = f"http://127.0.0.1:{dead_port}"
        else:
            local[2:2] = ["--instance", f"http://127.0.0.1:{dead_port}"]
    return local, ports


def _targets(prom: Any) -> list[dict[str, Any]]:
    return prom.get_json("/api/v1/targets?state=active")["data"]["activeTargets"]


def _scrape_until_all_up(
    prometheus_factory: Any,
    config: dict[str, Any],
    rule_sources: dict[str, Path],
    local: dict[tuple[str, int], int],
    processes: list[_Process],
) -> set[tuple[str, int]]:
    """Run ``config`` on a real Prometheus with each target moved to where ``local`` says that (host, port) is
    served here; fail unless every target is up and every rule file loads. Returns the (host, port) scraped."""
    # Prometheus' own target is its listen address: known once it runs, so the config is loaded by SIGHUP
    prom = prometheus_factory("global: {scrape_interval: 1s}\nscrape_configs: []\n")
    prom_port = int(prom.url.rsplit(":", 1)[1])
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    config.pop("alerting", None)  # alertmanager:9093 is no scrape target; its own test covers it
    for rule_file in config["rule_files"]:
        (prom.dir / Path(rule_file).name).write_text(rule_sources[rule_file].read_text())
    config["rule_files"] = [str(prom.dir / Path(r).name) for r in config["rule_files"]]
    expected: set[str] = set()
    scraped: set[tuple[str, int]] = set()
    for job in config["scrape_configs"]:
        targets = [t for s in job.pop("static_configs", []) for t in s["targets"]]
        targets += [f"{n}:{d['port']}" for d in job.pop("dns_sd_configs", []) for n in d["names"]]
        rewritten = []
        for target in targets:
            host, _, port = target.rpartition(":")
            if job["job_name"] == "prometheus":
                assert target in ("127.0.0.1:9090", "localhost:9090"), target
                rewritten.append(f"127.0.0.1:{prom_port}")
                continue
            assert (host, int(port)) in local, f"{job['job_name']}: {target} is served by no finsent service"
            scraped.add((host, int(port)))
            rewritten.append(f"127.0.0.1:{local[(host, int(port))]}")
        job["static_configs"] = [{"targets": rewritten}]
        expected.update(f"{job['job_name']}/{t}" for t in rewritten)
    (prom.dir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    prom.proc.send_signal(signal.SIGHUP)

    deadline = time.monotonic() + 60
    while True:
        seen = {f"{t['labels']['job']}/{t['labels']['instance']}": t for t in _targets(prom)}
        if set(seen) == expected and all(t["health"] == "up" for t in seen.values()):
            break
        if time.monotonic() > deadline:
            report = {k: (t["health"], t["lastError"]) for k, t in seen.items()}
            logs = "\n".join(f"{p.proc.args[3:5]}: {p.log.read_text()[-800:]}" for p in processes)
            pytest.fail(
                f"targets not all up: expected {sorted(expected)}, got {report}\n{prom.log.read_text()[-1500:]}\n{logs}"
            )
        time.sleep(0.5)
    # the rules loaded too (the drift rules among them), without errors
    groups = prom.get_json("/api/v1/rules")["data"]["groups"]
    assert {Path(g["file"]).name for g in groups} == {Path(r).name for r in config["rule_files"]}
    assert all(r["health"] != "err" for g in groups for r in g["rules"])
    return scraped


def test_every_compose_scrape_target_is_up(
    model: dict, prometheus_factory, kafka_bootstrap: str, unique_name: str, worker_like_metrics: int, tmp_path: Path
) -> None:
    services = model["services"]
    prom_svc = services["prometheus"]
    binds = {v["target"]: Path(v["source"]) for v in mounts(prom_svc) if v["type"] == "bind"}
    config = yaml.safe_load(binds["/etc/prometheus/prometheus.yml"].read_text())

    # where each (service, compose port) is served on this machine
    local: dict[tuple[str, int], int] = {
        ("worker", int(services["worker"]["environment"]["FINSENT_METRICS_PORT"])): worker_like_metrics
    }
    dead_port = free_port()  # nothing listens: feeds and the Mastodon instance fail fast, offline
    env = {
        "FINSENT_BROKERS": kafka_bootstrap,
        "FINSENT_TOPIC_RAW": f"raw.{unique_name}",
        "FINSENT_PARTITIONS": "2",
        "FINSENT_HTTP_TOKEN": TOKEN,
        "FINSENT_METRICS_HOST": "127.0.0.1",
        "FINSENT_LOG_LEVEL": "INFO",
    }
    processes: list[_Process] = []
    try:
        for name, svc in sorted(services.items()):
            command = svc.get("command")
            if not command or command[0] != "ingest" or "profiles" in svc:
                continue
            argv, ports = _run_locally(command, tmp_path, dead_port)
            state = tmp_path / name
            state.mkdir()
            processes.append(_Process(argv, tmp_path, env | {"FINSENT_INGEST_STATE_DIR": str(state)}))
            local.update({(name, compose_port): port for compose_port, port in ports.items()})
        assert {name for name, _ in local} >= {"ingest-rss", "ingest-mastodon", "ingest-http"}

        scraped = _scrape_until_all_up(prometheus_factory, config, binds, local, processes)
        # and every finsent service is scraped, on its token-free metrics port
        metrics = {
            (name, int(_flag(svc["command"], "--metrics-port")))
            for name, svc in services.items()
            if (svc.get("command") or [""])[0] == "ingest" and "profiles" not in svc
        }
        metrics.add(("worker", int(services["worker"]["environment"]["FINSENT_METRICS_PORT"])))
        assert metrics <= scraped, f"finsent services not scraped: {sorted(metrics - scraped)}"
    finally:
        for p in processes:
            p.stop()


def test_every_systemd_service_is_scraped_by_the_example_prometheus(
    prometheus_factory, kafka_bootstrap: str, unique_name: str, worker_like_metrics: int, tmp_path: Path
) -> None:
    """deploy/prometheus/prometheus.yml scrapes every long-running finsent unit of deploy/systemd, each target up."""
    from tests.deploy.test_deploy_systemd import INSTANCES, PROM, UNITS, _example_env, _expand, effective

    dead_port = free_port()
    env = {
        "FINSENT_BROKERS": kafka_bootstrap,
        "FINSENT_TOPIC_RAW": f"raw.{unique_name}",
        "FINSENT_PARTITIONS": "2",
        "FINSENT_HTTP_TOKEN": TOKEN,
        "FINSENT_LOG_LEVEL": "INFO",
    }
    local: dict[tuple[str, int], int] = {}
    metrics: dict[tuple[str, int], str] = {}  # (host, metrics port) -> the unit serving it
    processes: list[_Process] = []
    try:
        for unit in sorted(p.name for p in UNITS.glob("finsent-*.service")):
            svc = effective(unit)["Service"]
            if svc.get("Type") != "exec":  # the one-shots (retrain, the health check) serve nothing
                continue
            instance = INSTANCES[unit].split("@")[1].split(".")[0] if "@" in unit else ""
            argv = _expand(svc["ExecStart"], instance, _example_env(unit))[1:]
            port = int(_flag(argv, "--metrics-port") or 0)
            assert port, f"{unit}: no --metrics-port, so Prometheus cannot scrape it without a token"
            metrics[("127.0.0.1", port)] = unit
            if argv[0] == "worker":  # stood in for (a real worker needs a model and a store)
                local[("127.0.0.1", port)] = worker_like_metrics
                continue
            local_argv, ports = _run_locally(argv, tmp_path, dead_port)
            state = tmp_path / unit
            state.mkdir()
            processes.append(_Process(local_argv, tmp_path, env | {"FINSENT_INGEST_STATE_DIR": str(state)}))
            local.update({("127.0.0.1", unit_port): here for unit_port, here in ports.items()})
        assert set(metrics.values()) >= {
            "finsent-worker@.service",
            "finsent-ingest-rss.service",
            "finsent-ingest-social@.service",
            "finsent-ingest-http.service",
        }
        config = yaml.safe_load((PROM / "prometheus.yml").read_text())
        sources = {r: PROM / r for r in config["rule_files"]}
        workers = {
            t
            for job in config["scrape_configs"]
            if job["job_name"] == "finsent-worker"
            for s in job["static_configs"]
            for t in s["targets"]
        }
        scraped = _scrape_until_all_up(prometheus_factory, config, sources, local, processes)
        missing = {unit: port for (_, port), unit in metrics.items() if ("127.0.0.1", port) not in scraped}
        assert not missing, f"prometheus.yml does not scrape these units' metrics ports: {missing}"
        # the operational rules select job="finsent-worker": only workers there
        assert workers == {f"127.0.0.1:{p}" for (_, p), u in metrics.items() if u.startswith("finsent-worker@")}
    finally:
        for p in processes:
            p.stop()


@pytest.fixture(scope="module")
def model() -> dict:
    return render()
