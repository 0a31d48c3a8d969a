"""The generated deploy files: where ``finsent alerts rules|dashboards`` write them, and the rules from the settings.

The Prometheus rules file is rendered by :mod:`finsent.alerts.prom_rule` from parameters taken from the
settings here; the benchmark (:mod:`finsent.bench.alerts`) and the tests use the same functions, so the
checked-in ``deploy/prometheus/finsent-rules.yml`` is exactly what ``finsent alerts rules`` writes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from finsent.core.settings import Settings

#: the checked-in rules file of a source checkout (what the tests compare against)
RULES_PATH = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "finsent-rules.yml"


def deploy_dir(package_root: Path | None = None) -> Path:
    """Where ``finsent alerts rules|dashboards`` write by default.

    In a source checkout (``pyproject.toml`` and ``deploy/`` next to the packages, editable installs
    included) that is the repository's ``deploy/``, so regenerating updates the checked-in files. An
    installed wheel has neither next to it (its parent is ``site-packages``): then ``./deploy`` under
    the current directory, never a path inside the Python installation.
    """
    root = package_root if package_root is not None else Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "deploy").is_dir():
        return root / "deploy"
    return Path("deploy")


def prom_params(settings: Settings):  # -> PromRuleParams (lazy import keeps --help fast)
    from finsent.alerts.prom_rule import PromRuleParams

    return replace(
        PromRuleParams(),
        min_ratio=settings.alerts.alert_min_ratio,
        min_delta=settings.alerts.alert_min_delta,
        min_volume=settings.alerts.alert_min_volume,
        dashboard_url=settings.alerts.alert_dashboard_url,
    )


def ops_params(settings: Settings):  # -> OpsRuleParams: constant thresholds, the settings' Grafana
    from finsent.alerts.prom_rule import PIPELINE_DASHBOARD_PATH, OpsRuleParams

    url = settings.alerts.alert_dashboard_url
    base = url.split("/d/", 1)[0] if "/d/" in url else url.rstrip("/")
    return replace(OpsRuleParams(), dashboard_url=base + PIPELINE_DASHBOARD_PATH)


def rules_text(settings: Settings) -> str:
    """What ``finsent alerts rules`` writes: the spike rules and the operational ones."""
    from finsent.alerts.prom_rule import render_rules

    return render_rules(prom_params(settings), ops_params(settings))
