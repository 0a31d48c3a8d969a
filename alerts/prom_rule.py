"""The Prometheus layer: one set of parameters renders the rules file AND models it in Python.

``render_rules(PromRuleParams())`` is what ``deploy/prometheus/finsent-rules.yml`` holds (a test
checks the file is up to date, ``finsent alerts rules`` rewrites it); ``evaluate`` computes what
those rules decide over per-minute counts, so the detection benchmark scores the Prometheus rule
on exactly the series the in-stream detectors see (and a sample is confirmed on a real
Prometheus by ``tests/test_alerts_bench_prometheus.py``).

The rule mirrors the in-stream z-test without state: the short window's negative count is tested
against the long window's share (sums divided, never ratios averaged), with the same rise (odds
ratio and share delta) and volume floors. The z is the signed root of the binomial deviance (as
in :func:`alerts.base.binomial_z`; PromQL has ``ln``), not the Wald ``(k - n p) / sqrt(n p (1-p))``
whose tail at a few expected negatives is far heavier than normal (it made all of the rule's false
alarms on the benchmark). Prometheus has no EWMA and no per-topic overdispersion estimate: the
variance is widened by a fixed intra-minute correlation ``rho`` and by the long window's own
sampling error (``n_short * vf_long / n_long``: large when the baseline hour was thin), and the
z threshold is higher than the in-stream one (measured: ``finsent bench alerts``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRIC = "finsent_items_scored_total"
ALERT = "FinsentNegativeSentimentSpike"
DEFAULT_DASHBOARD = "http://localhost:3000/d/finsent-alerts/finsent-alerts"


def _seconds(window: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(window) < 2 or window[-1] not in units or not window[:-1].isdigit():
        raise ValueError(f"window {window!r} must look like 30s, 5m, 1h")
    return int(window[:-1]) * units[window[-1]]


@dataclass(frozen=True, slots=True)
class PromRuleParams:
    short: str = "5m"
    long: str = "1h"
    z_warning: float = 6.0
    z_critical: float = 9.0  # 1.5x the warning: the 10 % -> 60 % at 20 items/min reaches it
    min_ratio: float = 2.0
    critical_ratio: float = 3.0
    min_delta: float = 0.1
    min_volume: int = 30  # items in the short window
    min_baseline: int = 200  # items in the long window
    #: 0s: the deviance z already demands the evidence; `for: 1m` cost a minute on every detection (bench)
    for_: str = "0s"
    #: an alert stays firing this long after its condition last held: a spike whose z dips under the
    #: threshold for a minute (or whose baseline hour starts absorbing it) is one alert, not several
    keep_firing_for: str = "5m"
    p_floor: float = 0.02
    #: intra-minute correlation of items (beta-binomial): the variance of a minute of n items is
    #: n p (1-p) (1 + (n-1) rho). The in-stream detector estimates it per topic; Prometheus uses this.
    rho: float = 0.02
    dashboard_url: str = DEFAULT_DASHBOARD

    @property
    def short_s(self) -> int:
        return _seconds(self.short)

    @property
    def long_s(self) -> int:
        return _seconds(self.long)

    def names(self) -> dict[str, str]:
        s, l = self.short, self.long  # noqa: E741
        return {
            "rate_s": f"topic:finsent_items_scored:rate{s}",
            "neg_rate_s": f"topic:finsent_items_scored_negative:rate{s}",
            "ratio_s": f"topic:finsent_negative_ratio:ratio{s}",
            "rate_l": f"topic:finsent_items_scored:rate{l}",
            "neg_rate_l": f"topic:finsent_items_scored_negative:rate{l}",
            "ratio_l": f"topic:finsent_negative_ratio:ratio{l}",
            "z": f"topic:finsent_negative_spike:zscore{s}",
        }


def alert_expr(p: PromRuleParams, z: float, ratio: float) -> str:
    n = p.names()
    return (
        f"{n['z']} >= {z:g}\n"
        f"and on (topic) {n['ratio_s']} / (1 - {n['ratio_s']}) >= {ratio:g} * {n['ratio_l']} / (1 - {n['ratio_l']})\n"
        f"and on (topic) ({n['ratio_s']} - {n['ratio_l']}) >= {p.min_delta:g}\n"
        f"and on (topic) {n['rate_s']} * {p.short_s} >= {p.min_volume}\n"
        f"and on (topic) {n['rate_l']} * {p.long_s} >= {p.min_baseline}\n"
    )


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "".join(pad + line + "\n" for line in text.rstrip("\n").split("\n"))


def _annotations(p: PromRuleParams) -> str:
    n = p.names()

    def q(name: str, fmt: str) -> str:
        return (
            f'{{{{ with printf `{name}{{topic="%s"}}` $labels.topic | query }}}}'
            f"{{{{ . | first | value | {fmt} }}}}{{{{ end }}}}"
        )

    share = q(n["ratio_s"], "humanizePercentage")
    base = q(n["ratio_l"], "humanizePercentage")
    volume = (
        f'{{{{ with printf `{n["rate_s"]}{{topic="%s"}} * {p.short_s}` $labels.topic | query }}}}'
        f'{{{{ . | first | value | printf "%.0f" }}}}{{{{ end }}}}'
    )
    return (
        f"summary: 'Negative sentiment spike on topic {{{{ $labels.topic }}}}'\n"
        f"description: >-\n"
        f"  Topic {{{{ $labels.topic }}}}: {share} negative over the last {p.short}\n"
        f"  against a {base} baseline over {p.long}, on {volume} items\n"
        f'  (z = {{{{ $value | printf "%.1f" }}}}).\n'
        f"negative_share: '{share}'\n"
        f"baseline_share: '{base}'\n"
        f"volume: '{volume}'\n"
        f"zscore: '{{{{ $value | printf \"%.2f\" }}}}'\n"
        f"dashboard: '{p.dashboard_url}?var-topic={{{{ $labels.topic | urlquery }}}}&from=now-1h&to=now'\n"
    )


def render_rules(p: PromRuleParams | None = None) -> str:
    """The Prometheus rules file (YAML text) for ``p``; Prometheus loads it as is."""
    p = p or PromRuleParams()
    n = p.names()
    sel_all, sel_neg = METRIC, f'{METRIC}{{sentiment="negative"}}'
    pf, pc = p.p_floor, 1 - p.p_floor
    base = f"clamp({n['ratio_l']}, {pf:g}, {pc:g})"
    neg, pos = f"clamp_min({n['neg_rate_s']}, 1e-12)", f"clamp_min({n['rate_s']} - {n['neg_rate_s']}, 1e-12)"
    # signed root of the binomial deviance of (k, n) against the baseline share, k and n = rate * window
    # (the deviance scales with them), over sqrt(intra-minute widening + the baseline's sampling error)
    z_expr = (
        f"sgn({n['neg_rate_s']} - {n['rate_s']} * {base})\n"
        f"* sqrt(clamp_min(2 * {p.short_s} * (\n"
        f"      {neg} * ln({neg} / ({n['rate_s']} * {base}))\n"
        f"    + {pos} * ln({pos} / ({n['rate_s']} * (1 - {base})))\n"
        f"  ), 0))\n"
        f"/ sqrt(1 + {p.rho:g} * clamp_min({n['rate_s']} * 60 - 1, 0)\n"
        f"       + {n['rate_s']} * {p.short_s} * (1 + {p.rho:g} * clamp_min({n['rate_l']} * 60 - 1, 0))"
        f" / ({n['rate_l']} * {p.long_s}))\n"
    )
    rec = [
        (n["rate_s"], f"sum by (topic) (rate({sel_all}[{p.short}]))\n"),
        (n["neg_rate_s"], f"sum by (topic) (rate({sel_neg}[{p.short}]))\n"),
        (n["ratio_s"], f"{n['neg_rate_s']} / {n['rate_s']}\n"),
        (n["rate_l"], f"sum by (topic) (rate({sel_all}[{p.long}] offset {p.short}))\n"),
        (n["neg_rate_l"], f"sum by (topic) (rate({sel_neg}[{p.long}] offset {p.short}))\n"),
        (n["ratio_l"], f"{n['neg_rate_l']} / {n['rate_l']}\n"),
        (n["z"], z_expr),
    ]
    out = [
        "# finsent: negative-sentiment spike detection (Prometheus 2.x rules file, loaded as is).\n",
        "# GENERATED by `finsent alerts rules` from alerts/prom_rule.py (PromRuleParams); edit there, regenerate.\n",
        f"# Short window {p.short} (the spike) against the {p.long} before it (the topic's own baseline, offset\n",
        "# so a spike never raises its own bar). Ratios divide summed rates per topic (never averages of\n",
        "# ratios). z is the signed root of the binomial deviance, its variance widened for items that\n",
        f"# arrive in clusters (beta-binomial, intra-minute correlation {p.rho:g}) and for the baseline's own\n",
        "# sampling error; the rise is an odds ratio plus a share delta. Thresholds: `finsent bench alerts`\n",
        "# (bench/RESULTS.md, Alerts).\n",
        "groups:\n",
        "  - name: finsent-sentiment-recording\n",
        "    rules:\n",
    ]
    for name, expr in rec:
        out.append(f"      - record: {name}\n        expr: |\n{_indent(expr, 10)}")
    out += ["  - name: finsent-sentiment-alerts\n", "    rules:\n"]
    keep = f"        keep_firing_for: {p.keep_firing_for}\n" if _seconds(p.keep_firing_for) else ""
    for severity, z, ratio in (("warning", p.z_warning, p.min_ratio), ("critical", p.z_critical, p.critical_ratio)):
        out.append(
            f"      - alert: {ALERT}\n"
            f"        expr: |\n{_indent(alert_expr(p, z, ratio), 10)}"
            f"        for: {p.for_}\n"
            f"{keep}"
            f"        labels:\n          severity: {severity}\n          source: prometheus\n"
            f"        annotations:\n{_indent(_annotations(p), 10)}"
        )
    return "".join(out)


def _window_sums(x: np.ndarray, w: int) -> np.ndarray:
    """Trailing sums over ``w`` columns (minutes), including the current one."""
    c = np.cumsum(x, axis=-1, dtype=np.float64)
    out = c.copy()
    out[..., w:] = c[..., w:] - c[..., :-w]
    return out


def _deviance_z(k: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Signed root of the binomial deviance, elementwise; what the recording rule computes in PromQL."""
    kk, rest = np.maximum(k, 1e-12), np.maximum(n - k, 1e-12)
    dev = kk * np.log(kk / (n * p)) + rest * np.log(rest / (n * (1 - p)))
    return np.sign(k - n * p) * np.sqrt(np.maximum(2 * dev, 0))


def evaluate(neg: np.ndarray, tot: np.ndarray, p: PromRuleParams | None = None, step_s: int = 60) -> np.ndarray:
    """Severity the rules give at the end of every step: 0 none, 1 warning, 2 critical (with ``for``).

    ``neg``/``tot`` are per-step counts (topics x steps). ``increase()`` over a window is modelled as
    the exact sum of the steps in it (Prometheus extrapolates; the ratios are unaffected, the
    z-score and volume slightly: see the benchmark's Prometheus confirmation).
    """
    p = p or PromRuleParams()
    ws, wl = max(1, p.short_s // step_s), max(1, p.long_s // step_s)
    ks, ns = _window_sums(neg, ws), _window_sums(tot, ws)
    kl, nl = np.zeros(neg.shape), np.zeros(tot.shape)  # the long window ends where the short one starts
    kl[..., ws:], nl[..., ws:] = _window_sums(neg, wl)[..., :-ws], _window_sums(tot, wl)[..., :-ws]
    with np.errstate(divide="ignore", invalid="ignore"):
        rs = ks / ns
        rl = kl / nl
        pl = np.clip(rl, p.p_floor, 1 - p.p_floor)
        per_min = ns / (ws * step_s / 60.0)
        per_min_l = nl / (wl * step_s / 60.0)
        spread = 1 + p.rho * np.maximum(per_min - 1, 0) + ns * (1 + p.rho * np.maximum(per_min_l - 1, 0)) / nl
        z = _deviance_z(ks, ns, pl) / np.sqrt(spread)
        odds_s, odds_l = rs / (1 - rs), rl / (1 - rl)
    common = (rs - rl >= p.min_delta) & (ns >= p.min_volume) & (nl >= p.min_baseline)
    warn = common & (z >= p.z_warning) & (odds_s >= p.min_ratio * odds_l)
    crit = common & (z >= p.z_critical) & (odds_s >= p.critical_ratio * odds_l)
    hold = _seconds(p.for_) // step_s
    keep = _seconds(p.keep_firing_for) // step_s
    out = np.zeros(neg.shape, dtype=np.int8)
    for level, cond in ((1, warn), (2, crit)):
        ok = cond.copy()
        for h in range(1, hold + 1):  # `for`: true at this and the previous `hold` evaluations
            ok[..., h:] &= cond[..., :-h]
            ok[..., :h] = False
        firing = ok.copy()
        for h in range(1, keep + 1):  # `keep_firing_for`: still firing `keep` evaluations after the last `ok`
            firing[..., h:] |= ok[..., :-h]
        out[firing] = level
    return out
