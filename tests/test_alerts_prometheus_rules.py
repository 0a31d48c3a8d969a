"""The Prometheus rules file: generated from the settings, valid, and unit-tested with promtool."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from alerts.cli import RULES_PATH, prom_params
from alerts.prom_rule import render_rules
from stream.settings import Settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULE_TESTS = DEPLOY / "prometheus" / "tests" / "finsent-rules.test.yml"

pytestmark = pytest.mark.integration


def test_rules_file_is_what_the_default_settings_generate():
    assert RULES_PATH.read_text(encoding="utf-8") == render_rules(prom_params(Settings())), (
        "deploy/prometheus/finsent-rules.yml is stale: run `finsent alerts rules`"
    )


def test_promtool_check_rules_and_config(promtool):
    out = subprocess.run([promtool, "check", "rules", str(RULES_PATH)], capture_output=True, text=True)
    assert out.returncode == 0 and "SUCCESS: 9 rules found" in out.stdout, out.stdout + out.stderr
    out = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_pass(promtool):
    out = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize(
    "broken",
    [
        {"min_ratio": 1.0, "min_delta": 0.0},  # no rise floor: the 2 % -> 9 % topic would fire
        {"min_volume": 1},  # no volume floor: the handful-of-items topic would fire
        {"for_": "0s"},  # no `for`: fires a minute early
    ],
)
def test_promtool_unit_tests_catch_a_broken_rule(promtool, tmp_path, broken):
    """The unit tests are not vacuous: weakening any guard of the rule makes them fail."""
    (tmp_path / "tests").mkdir()
    shutil.copy(RULE_TESTS, tmp_path / "tests" / RULE_TESTS.name)
    (tmp_path / "finsent-rules.yml").write_text(render_rules(replace(prom_params(Settings()), **broken)))
    out = subprocess.run([promtool, "test", "rules", str(tmp_path / "tests" / RULE_TESTS.name)],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "FAILED" in out.stdout + out.stderr


def test_amtool_check_config(amtool):
    out = subprocess.run([amtool, "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml")],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr
    assert "1 inhibit rules" in out.stdout and "1 templates" in out.stdout
    tmpl = DEPLOY / "alertmanager" / "finsent.tmpl"
    out = subprocess.run([amtool, "template", "render", f"--template.glob={tmpl}",
                          '--template.text={{ template "finsent.text" . }}'], capture_output=True, text=True)
    assert out.returncode == 0 and "Dashboard (top negative items of the window)" in out.stdout, out.stderr
