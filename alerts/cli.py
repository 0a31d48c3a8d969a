"""``finsent alerts ...`` subcommands and ``finsent bench alerts``.

* ``finsent alerts rules``  -- write (or ``--check``) the Prometheus rules file from the settings.
* ``finsent alerts watch``  -- run the detector over counts stored in ClickHouse (no Kafka, no
  Prometheus needed), storing alerts and optionally exporting gauges / posting to Alertmanager.
* ``finsent bench alerts``  -- detection delay and false alarms of every detector (see
  :mod:`finsent.bench.alerts`), as JSON, a markdown table and a PNG timeline.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

from finsent.core.settings import Settings

log = logging.getLogger(__name__)
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
        min_ratio=settings.alert_min_ratio,
        min_delta=settings.alert_min_delta,
        min_volume=settings.alert_min_volume,
        dashboard_url=settings.alert_dashboard_url,
    )


def _rules(args: argparse.Namespace, settings: Settings) -> int:
    from finsent.alerts.prom_rule import render_rules

    text = render_rules(prom_params(settings))
    out = Path(args.out)
    if args.check:
        current = out.read_text(encoding="utf-8") if out.is_file() else ""
        if current != text:
            print(f"{out} is out of date: run `finsent alerts rules --out {out}`", file=sys.stderr)
            return 1
        print(f"{out} is up to date")
        return 0
    if str(out) == "-":
        sys.stdout.write(text)
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}; check it with `promtool check rules {out}`")
    return 0


def _dashboards(args: argparse.Namespace, settings: Settings) -> int:
    from finsent.alerts.dashboards import files

    root = Path(args.out)
    stale = []
    for rel, text in files().items():
        path = root / rel
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run `finsent alerts dashboards --out {root}`", file=sys.stderr)
        return 1
    return 0


def _watch(args: argparse.Namespace, settings: Settings) -> int:
    from finsent.alerts.detector import make_detector
    from finsent.alerts.runner import AlertRunner
    from finsent.alerts.sinks import build_sinks
    from finsent.core.errors import StoreError
    from finsent.stream.store import open_store

    store = open_store(settings.store)
    try:
        store.ensure_schema()
    except StoreError:
        store.close()
        raise
    runner = AlertRunner(store, make_detector(settings), settings.alert_window_s, sinks=build_sinks(settings, store))
    if args.metrics_port:
        from finsent.stream.metrics import serve_metrics

        serve_metrics(settings.metrics_host, args.metrics_port)
    try:
        while True:
            try:
                raised = runner.poll()
            except StoreError as exc:  # the store is down: keep the detector state, try again
                log.warning("store unavailable (%s); next try in %.0f s", exc, args.interval)
                raised = []
            for a in raised:
                print(
                    f"{a.fired_at:%H:%M:%S} {a.severity.upper():8} {a.topic}: {a.negative_share:.0%} negative "
                    f"({a.negative}/{a.total}) vs baseline {a.baseline_share:.0%}, score {a.score:.1f}",
                    flush=True,
                )
            if args.once:
                return 0
            time.sleep(args.interval)
    finally:
        store.close()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("alerts", help="negative-sentiment spike alerting (rules, detector over the store)")
    sub = p.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)
    r = sub.add_parser("rules", help="write the Prometheus rules file from the Alerts settings")
    rules_default = deploy_dir() / "prometheus" / "finsent-rules.yml"
    r.add_argument("--out", default=str(rules_default), help=f"'-' = stdout; default {rules_default}")
    r.add_argument("--check", action="store_true", help="exit 1 if the file differs from what would be written")
    r.set_defaults(func=_rules)
    d = sub.add_parser("dashboards", help="write the Grafana dashboards and provisioning files")
    d.add_argument("--out", default=str(deploy_dir() / "grafana"), help=f"default: {deploy_dir() / 'grafana'}")
    d.add_argument("--check", action="store_true", help="exit 1 if the files differ from what would be written")
    d.set_defaults(func=_dashboards)
    w = sub.add_parser("watch", help="run the spike detector over counts stored in ClickHouse, store the alerts")
    w.add_argument("--interval", type=float, default=5.0, help="seconds between polls of the store (default 5)")
    w.add_argument("--once", action="store_true", help="poll once (backfilling the baseline) and exit")
    w.add_argument("--metrics-port", type=int, default=0, help="serve the spike gauges on this port (0 = off)")
    w.set_defaults(func=_watch)
