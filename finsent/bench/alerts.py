"""``finsent bench alerts``: detection delay and false alarms of every detector on the same traffic.

Two synthetic runs (``finsent.bench.synth``): a *spike* run with injected rises of several sizes and
durations, and a longer *clean* run with none. Every detector -- the in-stream ones fed minute
windows exactly as ``AlertRunner``/the Faust agent feed them, and the Prometheus rule modelled
by ``alerts.prom_rule.evaluate`` -- sees the same counts. An alarm (a rising edge, any severity)
on a spiked topic between the spike's start and ``grace`` minutes after its end is a detection;
any other alarm after the warm-up is a false alarm. Delay = minutes from the spike's start to
the end of the window in which the alarm was raised.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from finsent.alerts.base import Detector
from finsent.alerts.cusum import BinomialCusum
from finsent.alerts.ewma_z import EwmaZ
from finsent.alerts.prom_rule import PromRuleParams, evaluate
from finsent.bench.synth import Spike, Traffic, generate
from finsent.core.jsonout import add_json_option, emit_json, to_stdout
from finsent.core.settings import Settings

#: Monday 2026-01-05 00:00 UTC: minute 0 of every synthetic run.
UTC = timezone.utc  # noqa: UP017 (datetime.UTC is 3.11+; finsent supports 3.10)
T0 = datetime(2026, 1, 5, tzinfo=UTC)
SIZES = (1.5, 2.0, 3.0, 5.0)
DURATIONS = (5, 15, 60)
WARMUP_MIN = 180
GRACE_MIN = 10

Alarm = tuple[int, int, str]  # (topic index, minute index, severity)


def run_detector(det: Detector, traffic: Traffic, progress: Callable[[int], None] | None = None) -> list[Alarm]:
    """Feed minute windows in order; return rising edges as (topic, minute, severity)."""
    index = {name: i for i, name in enumerate(traffic.topics)}
    out: list[Alarm] = []
    neg, tot = traffic.neg, traffic.tot
    for m in range(traffic.minutes):
        live = np.nonzero(tot[:, m])[0]
        counts = {traffic.topics[i]: (int(neg[i, m]), int(tot[i, m])) for i in live}
        for a in det.observe(T0 + timedelta(minutes=m + 1), counts):
            out.append((index[a.topic], m, a.severity))
        if progress and m % 1440 == 0:
            progress(1440)
    return out


def run_prom(params: PromRuleParams, traffic: Traffic) -> list[Alarm]:
    sev = evaluate(traffic.neg, traffic.tot, params)
    prev = np.zeros_like(sev)
    prev[:, 1:] = sev[:, :-1]
    topics, minutes = np.nonzero(sev > prev)  # rising edges, incl. warning -> critical
    return [(int(t), int(m), "critical" if sev[t, m] == 2 else "warning") for t, m in zip(topics, minutes, strict=True)]


def score(alarms: Iterable[Alarm], traffic: Traffic) -> dict[str, Any]:
    """Match alarms to spikes; return per-spike delays and the unmatched (false) alarms."""
    by_topic: dict[int, list[Spike]] = defaultdict(list)
    for s in traffic.spikes:
        by_topic[s.topic].append(s)
    first: dict[Spike, int] = {}
    false: list[Alarm] = []
    for topic, minute, sev in sorted(alarms, key=lambda a: a[1]):
        hit = next((s for s in by_topic[topic] if s.start <= minute < s.end + GRACE_MIN), None)
        if hit is not None:
            first.setdefault(hit, minute)
        elif minute >= WARMUP_MIN:
            false.append((topic, minute, sev))
    spikes = []
    for s in traffic.spikes:
        m = first.get(s)
        vol = float(traffic.tot[s.topic, s.start : s.end].mean())
        spikes.append(
            {
                "topic": traffic.topics[s.topic],
                "class": traffic.classes[s.topic],
                "size": s.size,
                "duration": s.duration,
                "items_per_min": round(vol, 1),
                "base_share": round(float(traffic.share[s.topic, s.start - 30 : s.start].mean()), 3),
                "delay_min": None if m is None else m + 1 - s.start,
            }
        )
    return {"spikes": spikes, "false_alarms": false}


def summarize(spike_res: dict[str, Any], clean_res: dict[str, Any], spiky: Traffic, clean: Traffic) -> dict[str, Any]:
    rows = []
    for size in SIZES:
        for floor in (0.0, 10.0, 20.0):
            sel = [s for s in spike_res["spikes"] if s["size"] == size and s["items_per_min"] >= floor]
            delays = [s["delay_min"] for s in sel if s["delay_min"] is not None]
            rows.append(
                {
                    "size": size,
                    "min_items_per_min": floor,
                    "spikes": len(sel),
                    "detected": len(delays),
                    "median_delay_min": float(np.median(delays)) if delays else None,
                    "p90_delay_min": float(np.percentile(delays, 90)) if delays else None,
                    "max_delay_min": max(delays) if delays else None,
                    "within_5_min": sum(1 for d in delays if d <= 5),
                }
            )

    def topic_days(tr: Traffic) -> float:
        return len(tr.topics) * (tr.minutes - WARMUP_MIN) / 1440.0

    fa_classes: dict[str, int] = defaultdict(int)
    for tr, res in ((spiky, spike_res), (clean, clean_res)):
        for t, _, _ in res["false_alarms"]:
            fa_classes[tr.classes[t]] += 1
    n_fa = len(spike_res["false_alarms"]) + len(clean_res["false_alarms"])
    days = topic_days(spiky) + topic_days(clean)
    return {
        "by_size": rows,
        "false_alarms": n_fa,
        "topic_days": round(days, 1),
        "false_alarms_per_100_topic_days": round(100.0 * n_fa / days, 3),
        "false_alarms_by_class": dict(fa_classes),
    }


def detectors(window_s: int = 60) -> dict[str, Callable[[], Detector]]:
    return {"ewma_z": lambda: EwmaZ(window_s=window_s), "cusum": lambda: BinomialCusum(window_s=window_s)}


def run_bench(
    topics: int = 50,
    days: float = 7.0,
    clean_days: float = 14.0,
    reps: int = 6,
    seed: int = 1,
    prom: PromRuleParams | None = None,
    only: Iterable[str] | None = None,
    factories: dict[str, Callable[[], Detector]] | None = None,
) -> tuple[dict[str, Any], Traffic, dict[str, list[Alarm]]]:
    """Run every detector on a spike run and a clean run; return (report, spike traffic, alarms)."""
    from rich.progress import Progress

    prom = prom or PromRuleParams()
    plan = [(size, dur) for size in SIZES for dur in DURATIONS for _ in range(reps)]
    t_gen = time.perf_counter()
    spiky = generate(topics, days, seed=seed, spikes=plan, warmup_min=WARMUP_MIN)
    clean = generate(topics, clean_days, seed=seed + 1000)
    gen_s = time.perf_counter() - t_gen
    factories = factories or detectors()
    if only:
        factories = {k: v for k, v in factories.items() if k in set(only)}
    report: dict[str, Any] = {
        "setup": {
            "topics": topics,
            "spike_run_days": days,
            "clean_run_days": clean_days,
            "spikes_injected": len(spiky.spikes),
            "sizes": list(SIZES),
            "durations_min": list(DURATIONS),
            "seed": seed,
            "items": int(spiky.tot.sum() + clean.tot.sum()),
            "generate_s": round(gen_s, 2),
            "prometheus_rule": {k: v for k, v in asdict(prom).items() if k != "dashboard_url"},
            "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.python_implementation()} "
            f"{platform.python_version()}",
        },
        "detectors": {},
    }
    alarms_spiky: dict[str, list[Alarm]] = {}
    with Progress(transient=True) as bar:
        total = (spiky.minutes + clean.minutes) * len(factories)
        task = bar.add_task("replaying minute windows", total=total)
        for name, make in factories.items():
            t = time.perf_counter()
            a_sp = run_detector(make(), spiky, lambda n: bar.advance(task, n))
            a_cl = run_detector(make(), clean, lambda n: bar.advance(task, n))
            elapsed = time.perf_counter() - t
            alarms_spiky[name] = a_sp
            summary = summarize(score(a_sp, spiky), score(a_cl, clean), spiky, clean)
            windows = spiky.minutes * topics + clean.minutes * topics
            summary["topic_windows_per_s"] = round(windows / elapsed)
            report["detectors"][name] = summary
    t = time.perf_counter()
    a_sp, a_cl = run_prom(prom, spiky), run_prom(prom, clean)
    alarms_spiky["prometheus_rule"] = a_sp
    summary = summarize(score(a_sp, spiky), score(a_cl, clean), spiky, clean)
    summary["topic_windows_per_s"] = round((spiky.minutes + clean.minutes) * topics / (time.perf_counter() - t))
    report["detectors"]["prometheus_rule"] = summary
    report["spikes"] = {name: score(a, spiky)["spikes"] for name, a in alarms_spiky.items()}
    return report, spiky, alarms_spiky


def plot_timeline(traffic: Traffic, alarms: dict[str, list[Alarm]], path: Path, window_s: int = 60) -> Path:
    """One topic around a 3x spike: minute share, 5-min share, EWMA baseline, spike, detections."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # a typical case: of the 3x spikes at >= 15 items/min that ewma_z caught, the one with the median delay
    hits = {(t, m) for t, m, _ in alarms.get("ewma_z", [])}

    def delay(sp: Spike) -> int | None:
        ms = [m for t, m in hits if t == sp.topic and sp.start <= m < sp.end + GRACE_MIN]
        return min(ms) + 1 - sp.start if ms else None

    cands = [
        sp
        for sp in traffic.spikes
        if sp.size == 3.0
        and sp.duration >= 15
        and traffic.tot[sp.topic, sp.start : sp.end].mean() >= 15
        and delay(sp) is not None
    ]
    cands.sort(key=lambda sp: delay(sp) or 0)
    spike = cands[len(cands) // 2] if cands else traffic.spikes[0]
    lo, hi = max(0, spike.start - 120), min(traffic.minutes, spike.end + 45)
    neg, tot = traffic.neg[spike.topic], traffic.tot[spike.topic]
    det = EwmaZ(window_s=window_s)
    name = traffic.topics[spike.topic]
    base = np.full(hi - lo, np.nan)
    for m in range(hi):
        det.observe(T0 + timedelta(minutes=m + 1), {name: (int(neg[m]), int(tot[m]))} if tot[m] else {})
        st = det.states().get(name)
        if m >= lo and st is not None and st.baseline_share is not None:
            base[m - lo] = st.baseline_share
    x = np.arange(lo, hi) - spike.start
    k5 = np.convolve(neg[lo:hi], np.ones(5))[: hi - lo]
    n5 = np.convolve(tot[lo:hi], np.ones(5))[: hi - lo]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    with np.errstate(invalid="ignore", divide="ignore"):
        ax.scatter(x, neg[lo:hi] / tot[lo:hi], s=6, color="0.6", label="negative share, 1-min window")
        ax.plot(x, k5 / n5, color="tab:blue", lw=1.2, label="negative share, 5-min window")
    ax.plot(x, base, color="black", lw=1.5, ls="--", label="EWMA baseline (ewma_z)")
    ax.axvspan(0, spike.duration, color="tab:red", alpha=0.15, label=f"injected {spike.size:g}x spike")
    colors = {"ewma_z": "tab:green", "cusum": "tab:purple", "prometheus_rule": "tab:orange"}
    for det_name, al in alarms.items():
        hits = [m for t, m, _ in al if t == spike.topic and lo <= m < hi]
        for i, m in enumerate(hits):
            ax.axvline(
                m + 1 - spike.start,
                color=colors.get(det_name, "k"),
                lw=1.5,
                label=f"{det_name} alarm (+{m + 1 - spike.start} min)" if i == 0 else None,
            )
    ax2 = ax.twinx()
    ax2.bar(x, tot[lo:hi], color="tab:gray", alpha=0.12, width=1.0)
    ax2.set_ylim(0, 3 * max(1, int(tot[lo:hi].max())))
    ax2.set_ylabel("items / minute")
    ax.set_xlabel("minutes from spike start")
    ax.set_ylabel("negative share")
    ax.set_ylim(0, 1)
    ax.set_title(
        f"topic {name}: {tot[spike.start : spike.end].mean():.0f} items/min, "
        f"{spike.size:g}x negative-share spike for {spike.duration} min"
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(report: dict[str, Any]) -> str:
    lines = [
        "| detector | size | spike volume (items/min) | spikes | detected | median delay (min) | p90 delay | <=5 min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, d in report["detectors"].items():
        for r in d["by_size"]:
            if r["min_items_per_min"] == 0.0:
                continue
            lines.append(
                f"| {name} | {r['size']:g}x | >= {r['min_items_per_min']:g} | {r['spikes']} | {r['detected']} | "
                f"{r['median_delay_min']} | {r['p90_delay_min']} | {r['within_5_min']} |"
            )
    lines += [
        "",
        "| detector | all spikes detected (any volume) | false alarms | topic-days | per 100 topic-days |",
        "|---|---|---|---|---|",
    ]
    for name, d in report["detectors"].items():
        det = "; ".join(
            f"{r['size']:g}x {r['detected']}/{r['spikes']}" for r in d["by_size"] if r["min_items_per_min"] == 0.0
        )
        lines.append(
            f"| {name} | {det} | {d['false_alarms']} | {d['topic_days']} | {d['false_alarms_per_100_topic_days']} |"
        )
    return "\n".join(lines)


def run_alerts(args: argparse.Namespace, settings: Settings) -> int:
    from finsent.alerts.deploy_files import prom_params

    report, spiky, alarms = run_bench(
        topics=args.topics,
        days=args.days,
        clean_days=args.clean_days,
        reps=args.reps,
        seed=args.seed,
        prom=prom_params(settings),
    )
    if args.promtool_sample:
        from finsent.bench.prom_confirm import confirm_with_prometheus

        report["prometheus_confirmation"] = confirm_with_prometheus(spiky, prom_params(settings))
    if not to_stdout(args.json):
        print(format_table(report))
        if "prometheus_confirmation" in report:
            print("prometheus confirmation:", report["prometheus_confirmation"]["summary"])
    emit_json(args.json, report)
    if args.json and not to_stdout(args.json):
        print(f"wrote {args.json}")
    if args.png:
        plot_timeline(spiky, alarms, Path(args.png))
        print(f"wrote {args.png}")
    return 0


def register(bench_subparsers: Any) -> None:
    b = bench_subparsers.add_parser(
        "alerts",
        help="detection delay and false alarms of the spike detectors on synthetic traffic",
        description="Replays synthetic days of per-topic scored traffic (daily seasonality, bursts, drift,\n"
        "chronically negative and quiet topics) with injected negative-share spikes, through every in-stream\n"
        "detector and the Prometheus rule, and reports detection delay per spike size and false alarms per\n"
        "100 topic-days.",
        epilog="examples:\n"
        "  finsent bench alerts --topics 10 --days 1 --clean-days 1      a quick look\n"
        "  finsent bench alerts --reps 10 --promtool-sample --json alerts.json --png alerts_timeline.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_json_option(b, "the full report")
    b.add_argument("--png", metavar="OUT", help="plot one topic's timeline around a 3x spike here")
    b.add_argument("--topics", type=int, default=50, help="topics per run (default 50)")
    b.add_argument("--days", type=float, default=7.0, help="days of the run with spikes (default 7)")
    b.add_argument("--clean-days", type=float, default=14.0, help="days of the run without spikes (default 14)")
    b.add_argument("--reps", type=int, default=6, help="spikes per (size, duration) pair (default 6)")
    b.add_argument("--seed", type=int, default=1)
    b.add_argument(
        "--promtool-sample",
        action="store_true",
        help="also confirm the Python model of the rule on a real Prometheus (backfilled sample)",
    )
    b.set_defaults(func=run_alerts)
