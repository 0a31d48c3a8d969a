"""``finsent alerts ...``: the rules file, the dashboards, the detector over the store, the backtest.

* ``finsent alerts rules``  -- write (or ``--check``) the Prometheus rules file from the settings.
* ``finsent alerts watch``  -- run the detector over counts stored in ClickHouse (no Kafka, no
  Prometheus needed), storing alerts and optionally exporting gauges / posting to Alertmanager.
* ``finsent alerts backtest`` -- the entity detector over stored mentions by event time
  (:mod:`finsent.alerts.backtest`): the alerts it would have raised, timeline PNGs.

``finsent bench alerts`` (detection delay and false alarms of every detector) is :mod:`finsent.bench.alerts`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from finsent.alerts.deploy_files import deploy_dir, rules_text
from finsent.cli.query import time_or_duration
from finsent.cli.tree import Subcommands
from finsent.core.argtypes import port, positive_float
from finsent.core.jsonout import add_json_option
from finsent.core.settings import Settings

log = logging.getLogger(__name__)


def run_rules(args: argparse.Namespace, settings: Settings) -> int:
    text = rules_text(settings)
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


def run_dashboards(args: argparse.Namespace, settings: Settings) -> int:
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


def run_watch(args: argparse.Namespace, settings: Settings) -> int:
    from finsent.alerts.detector import make_detector
    from finsent.alerts.runner import AlertRunner
    from finsent.alerts.sinks import build_sinks
    from finsent.core.errors import StoreError
    from finsent.stream.store import open_store

    store = open_store(settings.storage.store)
    try:
        store.ensure_schema()
    except StoreError:
        store.close()
        raise
    runner = AlertRunner(
        store, make_detector(settings.alerts), settings.alerts.alert_window_s, sinks=build_sinks(settings.alerts, store)
    )
    if args.metrics_port:
        from finsent.stream.metrics import serve_metrics

        serve_metrics(settings.worker.metrics_host, args.metrics_port)
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


def make_backtest_detector(settings: Settings, watchlist: str | None = None, watch_mode: str = "only") -> object:
    """The entity detector with the settings' bucket, window, lateness and cool-down (what the worker runs)."""
    from finsent.alerts.entity_detector import EntityDetector

    wl = None
    if watchlist:
        from finsent.alerts.watchlist import Watchlist

        wl = Watchlist(watchlist)
    return EntityDetector(
        bucket_s=settings.entities.entity_bucket_s,
        window_buckets=settings.entities.entity_window_buckets,
        lateness_s=settings.entities.entity_lateness_s,
        cooldown_s=settings.entities.entity_cooldown_s,
        watchlist=wl,
        watch_mode=watch_mode if wl is not None else "all",
    )


def run_backtest(args: argparse.Namespace, settings: Settings) -> int:
    from finsent.alerts.backtest import backtest, default_window
    from finsent.core.errors import InputError
    from finsent.core.events import format_time, utcnow
    from finsent.core.jsonout import emit_json, to_stdout
    from finsent.stream.store import store_from_settings

    since, until = default_window(args.since, args.until, utcnow())
    if until <= since:
        raise InputError(
            f"--until {format_time(until)} is not after --since {format_time(since)}",
            hint="give a window that ends after it starts, e.g. --since 2023-01-01 --until 2023-02-01",
        )
    detector = make_backtest_detector(settings, args.watchlist, args.watch_mode)
    store = store_from_settings(settings)
    try:
        store.ensure_schema()
        report = backtest(store, detector, since, until, Path(args.plot) if args.plot else None)
    finally:
        store.close()
    for line in report.pop("warnings", []):  # on stderr: --json stays the report alone
        print(f"warning: {line}", file=sys.stderr)
    if args.json:
        emit_json(args.json, report)
        if to_stdout(args.json):
            return 0
    print(
        f"backtest {report['since']} .. {report['until']}: {report['mentions']} mentions of "
        f"{report['entities']} entities in {report['items']} items, {len(report['alerts'])} alert(s)"
    )
    for a in report["alerts"]:
        ev = a["evidence"] or {}
        heads = ev.get("headlines") or []
        first = f" | {heads[0]['title']}" + (f" <{heads[0]['url']}>" if heads[0].get("url") else "") if heads else ""
        print(
            f"{a['at']} {a['severity'].upper():8} {a['entity_name']} ({a['entity_id'] or '-'}): "
            f"{a['negative']} novel negative of {a['total']} novel, index {a['score']:.1f}, "
            f"sources {', '.join(ev.get('sources') or [])}{first}"
        )
    for path in report.get("plots", []):
        print(f"plot: {path}")
    return 0


BACKTEST_DESCRIPTION = """\
Run the entity detector (negative-news surges per entity, on event time) over the mentions stored in
FINSENT_STORE with event time in [--since, --until): story clusters and novelty are computed from the stored
items in event-time order, as the worker's entity stage does, so live and backtest give the same alerts for the
same data. Prints the alerts it would have raised (entity, window end, counts, index, sources, first headline)
and, with --plot DIR, one timeline PNG per alerted entity. The detector's bucket, window, lateness and
cool-down are the worker's settings (FINSENT_ENTITY_*). WHEN is a duration back from now (30d) or an ISO 8601
time (2023-01-19).

examples:
  finsent alerts backtest --since 2022-12-01 --until 2023-02-01 --plot backtest-plots
  finsent alerts backtest --since 30d --watchlist watch.csv --json
"""

RULES_DESCRIPTION = """\
Write the Prometheus rules file: the negative-sentiment spike rule (from the Alerts settings:
FINSENT_ALERT_MIN_RATIO, FINSENT_ALERT_MIN_DELTA, FINSENT_ALERT_MIN_VOLUME, FINSENT_ALERT_DASHBOARD_URL)
and the operational alerts on job="finsent-worker": worker down or not scraped, consumer lag growing,
dead-letter share above 5 %, store retries for 5 minutes, a worker without a model, a promoted model
that a worker cannot load. Each alert has a severity label and summary, description and runbook
annotations. The file is generated: edit alerts/prom_rule.py or the settings, never the file; --check
(e.g. in CI) fails when it is stale.

examples:
  finsent alerts rules                       # rewrite deploy/prometheus/finsent-rules.yml
  finsent alerts rules --check               # exit 1 if the checked-in file is out of date
  finsent alerts rules --out - | less        # print it
  promtool check rules deploy/prometheus/finsent-rules.yml
  promtool test rules deploy/prometheus/tests/*.test.yml
"""

DASHBOARDS_DESCRIPTION = """\
Write the Grafana dashboards (finsent / sentiment, finsent / alerts, finsent / pipeline) and the
provisioning files for their ClickHouse and Prometheus data sources, under --out. Point Grafana's
provisioning directory at OUT/provisioning; the alert annotations link to these dashboards.
--check fails when a written file would differ.

examples:
  finsent alerts dashboards                  # rewrite deploy/grafana/
  finsent alerts dashboards --check          # exit 1 if a file is out of date
  finsent alerts dashboards --out /etc/grafana/finsent
"""

WATCH_DESCRIPTION = """\
Run the in-stream spike detector (FINSENT_ALERT_DETECTOR) over the per-minute counts already stored
in ClickHouse (FINSENT_STORE): no Kafka and no Prometheus needed. Alerts are printed and stored; with
FINSENT_ALERTMANAGER_URL set they are also posted to Alertmanager (source="stream"), and
--metrics-port serves the detector's score and state per topic as Prometheus gauges.

examples:
  finsent alerts watch --once                # one poll (backfills the baseline), print alerts, exit
  finsent alerts watch --interval 10 --metrics-port 9465
  FINSENT_ALERTMANAGER_URL=http://127.0.0.1:9093 finsent alerts watch
"""


def register(sub: Subcommands) -> None:
    alerts = sub.group(
        "alerts",
        dest="alerts_command",
        metavar="ACTION",
        help="negative-sentiment spike alerting (rules, detector over the store)",
    )
    _add_rules(alerts)
    _add_dashboards(alerts)
    _add_watch(alerts)
    _add_backtest(alerts)


def _add_rules(alerts: Subcommands) -> None:
    r = alerts.leaf(
        "rules",
        run_rules,
        help="write the Prometheus rules file (spike and operational alerts)",
        description=RULES_DESCRIPTION,
    )
    rules_default = deploy_dir() / "prometheus" / "finsent-rules.yml"
    r.add_argument(
        "--out",
        default=str(rules_default),
        help="'-' = stdout; default: deploy/prometheus/finsent-rules.yml of the source checkout "
        "(./deploy/... when finsent is installed from a wheel)",
    )
    r.add_argument("--check", action="store_true", help="exit 1 if the file differs from what would be written")


def _add_dashboards(alerts: Subcommands) -> None:
    d = alerts.leaf(
        "dashboards",
        run_dashboards,
        help="write the Grafana dashboards and provisioning files",
        description=DASHBOARDS_DESCRIPTION,
    )
    d.add_argument(
        "--out",
        default=str(deploy_dir() / "grafana"),
        help="default: deploy/grafana of the source checkout (./deploy/grafana when installed from a wheel)",
    )
    d.add_argument("--check", action="store_true", help="exit 1 if the files differ from what would be written")


def _add_watch(alerts: Subcommands) -> None:
    w = alerts.leaf(
        "watch",
        run_watch,
        help="run the spike detector over counts stored in ClickHouse, store the alerts",
        description=WATCH_DESCRIPTION,
    )
    w.add_argument(
        "--interval", type=positive_float, default=5.0, help="seconds between polls of the store (default 5)"
    )
    w.add_argument("--once", action="store_true", help="poll once (backfilling the baseline) and exit")
    w.add_argument("--metrics-port", type=port, default=0, help="serve the spike gauges on this port (0 = off)")


def _add_backtest(alerts: Subcommands) -> None:
    b = alerts.leaf(
        "backtest",
        run_backtest,
        help="run the entity detector over stored history (event time) and print the alerts it would raise",
        description=BACKTEST_DESCRIPTION,
    )
    b.add_argument(
        "--since",
        type=time_or_duration,
        default=None,
        metavar="WHEN",
        help="window start: a duration back from now or an ISO 8601 time (default: 30d)",
    )
    b.add_argument(
        "--until",
        type=time_or_duration,
        default=None,
        metavar="WHEN",
        help="window end: a duration back from now or an ISO 8601 time (default: now)",
    )
    b.add_argument(
        "--watchlist",
        default=None,
        metavar="FILE",
        help="entities to watch (CSV or JSON lines: ids, tickers or names, optional thresholds)",
    )
    b.add_argument(
        "--watch-mode",
        choices=("only", "wider"),
        default="only",
        help="with --watchlist: only its entities (default), or every entity with stricter thresholds "
        "for those not on it",
    )
    b.add_argument("--plot", default=None, metavar="DIR", help="write one timeline PNG per alerted entity to DIR")
    add_json_option(b, "{since, until, mentions, items, entities, alerts: [...], plots: [...]}")
