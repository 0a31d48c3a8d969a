"""The operational alerts (worker down, lag, dead letters, store, model) and their Alertmanager routing.

They are rendered by the same generator as the spike rule (``finsent alerts rules``), unit-tested
with promtool (``deploy/prometheus/tests/finsent-ops-rules.test.yml``), and routed by the shipped
Alertmanager config to the ``finsent-ops`` receiver (checked with amtool, never skipped).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from finsent.alerts.deploy_files import RULES_PATH, ops_params, prom_params
from finsent.alerts.prom_rule import OpsRuleParams, ops_alerts, render_rules
from finsent.core.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
OPS_TESTS = DEPLOY / "prometheus" / "tests" / "finsent-ops-rules.test.yml"
ENTITY_TESTS = DEPLOY / "prometheus" / "tests" / "finsent-entity-rules.test.yml"
AM_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
OPS_ALERTS = {
    "FinsentWorkerDown": "critical",
    "FinsentWorkerNotScraped": "critical",
    "FinsentConsumerLagGrowing": "warning",
    "FinsentDeadLetterRateHigh": "warning",
    "FinsentStoreFailing": "critical",
    "FinsentModelNotServing": "critical",
    "FinsentModelReloadFailed": "warning",
}

pytestmark = pytest.mark.integration


def _shipped_ops_rules() -> list[dict]:
    doc = yaml.safe_load(RULES_PATH.read_text(encoding="utf-8"))
    groups = {g["name"]: g["rules"] for g in doc["groups"]}
    # the spike groups come first (the benchmark reads the recording rules from groups[0])
    assert [g["name"] for g in doc["groups"]][:2] == ["finsent-sentiment-recording", "finsent-sentiment-alerts"]
    return groups["finsent-ops-alerts"]


def test_every_ops_alert_has_severity_summary_description_and_runbook():
    rules = _shipped_ops_rules()
    assert {r["alert"]: r["labels"]["severity"] for r in rules} == OPS_ALERTS
    for r in rules:
        assert r["labels"]["category"] == "ops" and r["labels"]["source"] == "prometheus", r["alert"]
        ann = r["annotations"]
        assert set(ann) == {"summary", "description", "runbook", "dashboard"}, r["alert"]
        assert "\n" not in ann["summary"] and len(ann["summary"]) < 100, r["alert"]
        assert "Check" in ann["description"], f"{r['alert']}: the description must say what to check next"
        assert ann["runbook"].startswith("1. ") and " 2. " in ann["runbook"], r["alert"]
        assert ann["dashboard"] == "http://localhost:3000/d/finsent-pipeline/finsent-pipeline"
        assert 'job="finsent-worker"' in r["expr"], r["alert"]
        assert r["for"] != "0s", f"{r['alert']}: one bad scrape or evaluation must not page"


def test_every_ops_alert_is_unit_tested():
    tests = yaml.safe_load(OPS_TESTS.read_text())["tests"]
    tested = {t["alertname"] for test in tests for t in test["alert_rule_test"] if t["exp_alerts"]}
    assert set(OPS_ALERTS) <= tested


def test_without_ops_params_only_the_spike_rules_are_rendered():
    """The benchmark and the end-to-end test load the spike rules alone (no worker health in their setups)."""
    doc = yaml.safe_load(render_rules(prom_params(Settings())))
    assert [g["name"] for g in doc["groups"]] == ["finsent-sentiment-recording", "finsent-sentiment-alerts"]


def test_thresholds_are_constants_the_dashboard_follows_the_settings():
    assert replace(ops_params(Settings()), dashboard_url=OpsRuleParams().dashboard_url) == OpsRuleParams()
    s = Settings(alert_dashboard_url="https://grafana.example.com/d/finsent-alerts/finsent-alerts")
    assert ops_params(s).dashboard_url == "https://grafana.example.com/d/finsent-pipeline/finsent-pipeline"
    assert [a.name for a in ops_alerts()] == list(OPS_ALERTS)


def test_shipped_rules_alert_on_entities_in_an_episode_by_name_labels_only():
    doc = yaml.safe_load(RULES_PATH.read_text(encoding="utf-8"))
    rules = {g["name"]: g["rules"] for g in doc["groups"]}["finsent-entity-alerts"]
    assert [(r["alert"], r["labels"]["severity"]) for r in rules] == [
        ("FinsentEntityNegativeSurge", "warning"),
        ("FinsentEntityNegativeSurge", "critical"),
    ]
    assert all("finsent_entity_alert_active" in r["expr"] and "by (entity, entity_id)" in r["expr"] for r in rules)


@pytest.mark.parametrize("broken", [None, "> 5", "absent"])
def test_promtool_entity_unit_tests_pass_and_catch_a_broken_rule(promtool, tmp_path, broken):
    rules = RULES_PATH.read_text(encoding="utf-8")
    if broken == "> 5":  # a threshold no episode reaches: the alert never fires
        rules = rules.replace("(finsent_entity_alert_active) > 0", "(finsent_entity_alert_active) > 5")
    elif broken == "absent":  # the rule dropped by the generator
        rules = rules.replace("FinsentEntityNegativeSurge", "FinsentSomethingElse")
    (tmp_path / "tests").mkdir()
    (tmp_path / "finsent-rules.yml").write_text(rules, encoding="utf-8")
    (tmp_path / "tests" / ENTITY_TESTS.name).write_text(ENTITY_TESTS.read_text(encoding="utf-8"), encoding="utf-8")
    out = subprocess.run(
        [promtool, "test", "rules", str(tmp_path / "tests" / ENTITY_TESTS.name)], capture_output=True, text=True
    )
    if broken is None:
        assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr
    else:
        assert out.returncode != 0, out.stdout


def test_promtool_ops_unit_tests_pass(promtool):
    out = subprocess.run([promtool, "test", "rules", str(OPS_TESTS)], capture_output=True, text=True)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize(
    "broken",
    [
        {"down_for": "0s"},  # the down worker pages at its first failed scrape
        {"absent_for": "10m"},  # a job without targets goes unnoticed for longer
        {"lag_threshold": 200},  # a small rising lag (300) fires
        {"lag_window": "2m"},  # the slope forgets the rise: the alert resolves while the backlog sits
        {"dead_letter_share": 0.02},  # 3 % dead letters fire
        {"dead_letter_min_volume": 10},  # 25 of 50 messages fire
        {"store_for": "1m"},  # one failed insert, retried once, fires
        {"model_for": "2m"},  # a worker that loads its model in 3 minutes fires
        {"reload_window": "30m"},  # a failed reload is forgotten before the operator is told for long
        {"reload_for": "0s"},  # fires at the failure's first evaluation
    ],
)
def test_promtool_ops_unit_tests_catch_a_broken_rule(promtool, tmp_path, broken):
    """The unit tests are not vacuous: weakening or sharpening any threshold makes them fail."""
    (tmp_path / "tests").mkdir()
    shutil.copy(OPS_TESTS, tmp_path / "tests" / OPS_TESTS.name)
    rules = render_rules(prom_params(Settings()), replace(ops_params(Settings()), **broken))
    (tmp_path / "finsent-rules.yml").write_text(rules)
    out = subprocess.run(
        [promtool, "test", "rules", str(tmp_path / "tests" / OPS_TESTS.name)], capture_output=True, text=True
    )
    assert out.returncode != 0 and "FAILED" in out.stdout + out.stderr, out.stdout


def test_alertmanager_config_is_valid_and_routes_ops_alerts_to_the_ops_receiver(amtool):
    out = subprocess.run([amtool, "check-config", str(AM_CONFIG)], capture_output=True, text=True)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr
    cases = [(["alertname=FinsentNegativeSentimentSpike", "severity=critical", "topic=banking"], "finsent-webhook")]
    cases += [
        ([f"alertname={n}", f"severity={sev}", "category=ops", "job=finsent-worker"], "finsent-ops")
        for n, sev in OPS_ALERTS.items()
    ]
    for labels, receiver in cases:
        out = subprocess.run(
            [
                amtool,
                "config",
                "routes",
                "test",
                f"--config.file={AM_CONFIG}",
                f"--verify.receivers={receiver}",
                *labels,
            ],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0 and out.stdout.strip() == receiver, (labels, out.stdout + out.stderr)


def test_alertmanager_receivers_are_documented_loopback_placeholders():
    """No receiver points anywhere real: each is a loopback webhook, marked as a placeholder."""
    text = AM_CONFIG.read_text()
    cfg = yaml.safe_load(text)
    assert [r["name"] for r in cfg["receivers"]] == ["finsent-webhook", "finsent-ops"]  # the e2e test edits [0]
    lines = text.splitlines()
    for r in cfg["receivers"]:
        (hook,) = r["webhook_configs"]
        assert urlsplit(hook["url"]).hostname == "127.0.0.1", hook["url"]
        i = next(i for i, line in enumerate(lines) if line.strip() == f"- name: {r['name']}")
        assert "PLACEHOLDER" in lines[i - 1], f"receiver {r['name']} must say it is a placeholder"


def test_notification_template_renders_an_ops_alert(amtool, tmp_path):
    rule = next(r for r in _shipped_ops_rules() if r["alert"] == "FinsentStoreFailing")
    labels = {"alertname": rule["alert"], **rule["labels"], "job": "finsent-worker", "instance": "w1:9464"}
    annotations = {
        "summary": "finsent worker w1:9464 cannot store its batches",
        "description": "Worker w1:9464 has been retrying failed store inserts for 5m.",
        "runbook": "1. curl http://w1:9464/readyz: it names the last store error.",
        "dashboard": rule["annotations"]["dashboard"],
    }
    data = {
        "receiver": "finsent-ops",
        "status": "firing",
        "alerts": [{"status": "firing", "labels": labels, "annotations": annotations}],
        "groupLabels": {"alertname": rule["alert"], "job": "finsent-worker"},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "http://127.0.0.1:9093",
    }
    (tmp_path / "data.json").write_text(json.dumps(data))
    out = subprocess.run(
        [
            amtool,
            "template",
            "render",
            f"--template.glob={DEPLOY / 'alertmanager' / 'finsent.tmpl'}",
            f"--template.data={tmp_path / 'data.json'}",
            '--template.text={{ template "finsent.title" . }}\n{{ template "finsent.text" . }}',
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "[FIRING:1] finsent FinsentStoreFailing (finsent-worker)",
        "*CRITICAL* (prometheus) finsent worker w1:9464 cannot store its batches",
        "Worker w1:9464 has been retrying failed store inserts for 5m.",
        "Runbook: 1. curl http://w1:9464/readyz: it names the last store error.",
        "Dashboard (pipeline): http://localhost:3000/d/finsent-pipeline/finsent-pipeline",
    ]
