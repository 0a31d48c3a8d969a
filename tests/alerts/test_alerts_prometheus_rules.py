"""The Prometheus rules file: generated from the settings, valid, and unit-tested with promtool.

The operational alerts of the same file: tests/alerts/test_alerts_ops_rules.py.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from finsent.alerts.deploy_files import RULES_PATH, ops_params, prom_params, rules_text
from finsent.alerts.prom_rule import render_rules
from finsent.core.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULE_TESTS = DEPLOY / "prometheus" / "tests" / "finsent-rules.test.yml"

pytestmark = pytest.mark.integration


def test_rules_file_is_what_the_default_settings_generate():
    assert RULES_PATH.read_text(encoding="utf-8") == rules_text(Settings()), (
        "deploy/prometheus/finsent-rules.yml is stale: run `finsent alerts rules`"
    )


def test_promtool_check_rules_and_config(promtool):
    out = subprocess.run([promtool, "check", "rules", str(RULES_PATH)], capture_output=True, text=True)
    # 7 recording rules, the spike alert at 2 severities, 7 operational alerts
    assert out.returncode == 0 and "SUCCESS: 18 rules found" in out.stdout, out.stdout + out.stderr
    out = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_pass(promtool):
    out = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize(
    "broken",
    [
        {"min_ratio": 1.0, "min_delta": 0.0},  # no rise floor: the 2 % -> 9 % topic would fire
        {"min_volume": 1},  # no volume floor: the handful-of-items topic would fire
        {"z_warning": 3.0},  # no significance floor: fires before the evidence is there
        {"keep_firing_for": "0s"},  # no keep_firing_for: the critical alert drops out while the spike lasts
    ],
)
def test_promtool_unit_tests_catch_a_broken_rule(promtool, tmp_path, broken):
    """The unit tests are not vacuous: weakening any guard of the rule makes them fail."""
    (tmp_path / "tests").mkdir()
    shutil.copy(RULE_TESTS, tmp_path / "tests" / RULE_TESTS.name)
    rules = render_rules(replace(prom_params(Settings()), **broken), ops_params(Settings()))
    (tmp_path / "finsent-rules.yml").write_text(rules)
    out = subprocess.run(
        [promtool, "test", "rules", str(tmp_path / "tests" / RULE_TESTS.name)], capture_output=True, text=True
    )
    assert out.returncode != 0 and "FAILED" in out.stdout + out.stderr


def test_amtool_check_config(amtool):
    out = subprocess.run(
        [amtool, "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml")], capture_output=True, text=True
    )
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr
    assert "2 inhibit rules" in out.stdout and "2 receivers" in out.stdout and "1 templates" in out.stdout
    tmpl = DEPLOY / "alertmanager" / "finsent.tmpl"
    out = subprocess.run(
        [amtool, "template", "render", f"--template.glob={tmpl}", '--template.text={{ template "finsent.text" . }}'],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "Dashboard (top negative items of the window)" in out.stdout, out.stderr


def test_python_model_of_the_rule_matches_a_real_prometheus(promtool):
    """The benchmark scores the rule in Python; a real Prometheus must fire on the same minutes."""
    from finsent.bench.prom_confirm import confirm_with_prometheus
    from finsent.bench.synth import generate

    traffic = generate(n_topics=10, days=1.0, seed=3, spikes=[(5.0, 30), (3.0, 30), (5.0, 60)], warmup_min=120)
    r = confirm_with_prometheus(traffic, prom_params(Settings()), n_topics=3, days=1.0)
    assert r["firing_minutes_both"] > 0, r["summary"]
    assert r["python_only"] + r["prometheus_only"] <= 0.05 * r["firing_minutes_both"], r["summary"]
    assert r["alarm_starts_matched_within_1min"] == r["alarm_starts_python"] > 0, r["summary"]
