"""Confirm the Python model of the Prometheus rule on a real Prometheus (``bench alerts --promtool-sample``).

A sample of the benchmark's synthetic topics is written as OpenMetrics counter samples every 15 s
(each minute's counts spread over its four scrapes, as a worker scraped every 15 s would show
them), turned into TSDB blocks with ``promtool tsdb create-blocks-from openmetrics``, served by a
real ``prometheus``, and the alert expressions (recording rules inlined: Prometheus does not
evaluate rules over backfilled data) are queried minute by minute with ``query_range``. The
result is compared with :func:`alerts.prom_rule.evaluate` on the same counts.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from finsent.alerts.prom_rule import PromRuleParams, alert_expr, evaluate, render_rules
from finsent.bench.synth import Traffic
from finsent.stream.broker import free_port

HINT = "apt-get install prometheus"


def inline_expr(p: PromRuleParams, severity: str = "warning") -> str:
    """The alert expression with every recording rule replaced by its definition."""
    import yaml

    doc = yaml.safe_load(render_rules(p))
    rec = {r["record"]: r["expr"].strip() for r in doc["groups"][0]["rules"]}
    z, ratio = (p.z_warning, p.min_ratio) if severity == "warning" else (p.z_critical, p.critical_ratio)
    expr = alert_expr(p, z, ratio).strip()
    for _ in range(5):
        for name, body in rec.items():
            expr = re.sub(rf"(?<![\w:]){re.escape(name)}(?![\w:])", f"({body})", expr)
    return " ".join(expr.split())


def _openmetrics(traffic: Traffic, topics: list[int], t0: float) -> str:
    lines = ["# TYPE finsent_items_scored counter"]
    cum = {(t, s): 0 for t in topics for s in ("negative", "other")}
    for m in range(traffic.minutes):
        parts = {}
        for t in topics:
            neg, tot = int(traffic.neg[t, m]), int(traffic.tot[t, m])
            for s, n in (("negative", neg), ("other", tot - neg)):
                q = [n // 4] * 4
                q[-1] += n - sum(q)
                parts[(t, s)] = q
        for k in range(4):
            ts = t0 + m * 60 + 15 * (k + 1)
            for (t, s), q in parts.items():
                cum[(t, s)] += q[k]
                lines.append(
                    f'finsent_items_scored_total{{topic="{traffic.topics[t]}",sentiment="{s}",'
                    f'instance="bench",job="finsent-worker"}} {cum[(t, s)]} {ts:.0f}'
                )
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def confirm_with_prometheus(
    traffic: Traffic, params: PromRuleParams, n_topics: int = 6, days: float = 2.0
) -> dict[str, Any]:
    """Compare firing minutes of the real Prometheus vs the Python model on a sample of topics."""
    for b in ("prometheus", "promtool"):
        if shutil.which(b) is None:
            raise RuntimeError(f"{b} not found: {HINT}")
    spiked = sorted({s.topic for s in traffic.spikes if s.start < days * 1440 - 60})
    topics = spiked[:n_topics]
    minutes = int(days * 1440)
    sub = Traffic(
        [traffic.topics[t] for t in topics],
        [traffic.classes[t] for t in topics],
        traffic.neg[topics, :minutes],
        traffic.tot[topics, :minutes],
        traffic.share[topics, :minutes],
        [],
    )
    t0 = 1767571200.0  # 2026-01-05T00:00:00Z, minute 0 of the benchmark
    p = replace(params, for_="0s", keep_firing_for="0s")  # the raw expression on both sides, no alert state
    with tempfile.TemporaryDirectory(prefix="finsent-promconfirm-") as tmp:
        d = Path(tmp)
        (d / "in.om").write_text(_openmetrics(sub, list(range(len(topics))), t0))
        subprocess.run(
            ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(d / "in.om"), str(d / "data")],
            check=True,
            capture_output=True,
        )
        (d / "prometheus.yml").write_text("global: {scrape_interval: 15s}\n")
        port = free_port()
        proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={d / 'prometheus.yml'}",
                f"--storage.tsdb.path={d / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=100y",
                "--query.lookback-delta=5m",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if _get(base + "/api/v1/status/buildinfo")["status"] == "success":
                        break
                except OSError:
                    time.sleep(0.1)
            prom = np.zeros((len(topics), minutes), dtype=bool)
            idx = {name: i for i, name in enumerate(sub.topics)}
            expr = inline_expr(p)
            chunk = 10_000  # query_range returns at most 11,000 points per series
            for start_m in range(0, minutes, chunk):
                end_m = min(minutes, start_m + chunk) - 1
                q = urllib.parse.urlencode(
                    {"query": expr, "start": t0 + (start_m + 1) * 60, "end": t0 + (end_m + 1) * 60, "step": 60}
                )
                body = _get(f"{base}/api/v1/query_range?{q}")
                if body["status"] != "success":
                    raise RuntimeError(f"query_range failed: {body}")
                for series in body["data"]["result"]:
                    i = idx[series["metric"]["topic"]]
                    for ts, _ in series["values"]:
                        prom[i, int(round((float(ts) - t0) / 60)) - 1] = True
        finally:
            proc.terminate()
            proc.wait(10)
    py = evaluate(sub.neg, sub.tot, p) >= 1
    both, only_py, only_prom = int((py & prom).sum()), int((py & ~prom).sum()), int((~py & prom).sum())
    edges_py = {(i, m) for i, m in zip(*np.nonzero(py[:, 1:] & ~py[:, :-1]), strict=True)}
    edges_prom = {(i, m) for i, m in zip(*np.nonzero(prom[:, 1:] & ~prom[:, :-1]), strict=True)}
    near = sum(1 for (i, m) in edges_py if any((i, m + k) in edges_prom for k in (-1, 0, 1)))
    summary = (
        f"{len(topics)} topics x {days:g} days at 15 s scrapes: firing minutes both {both}, Python only "
        f"{only_py}, Prometheus only {only_prom}; alarm starts Python {len(edges_py)}, Prometheus "
        f"{len(edges_prom)}, matched within 1 min {near}"
    )
    return {
        "topics": sub.topics,
        "days": days,
        "firing_minutes_both": both,
        "python_only": only_py,
        "prometheus_only": only_prom,
        "alarm_starts_python": len(edges_py),
        "alarm_starts_prometheus": len(edges_prom),
        "alarm_starts_matched_within_1min": near,
        "expression": expr,
        "summary": summary,
    }
