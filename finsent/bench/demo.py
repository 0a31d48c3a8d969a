"""``finsent bench demo``: does the demo detect its spike on a busy machine? Runs it N times and counts.

Each run is a fresh ``finsent demo`` process (its own broker, worker and embedded store) with
``--summary-json``; with ``--busy-core`` a bounded CPU-burning process keeps one core busy for the
whole benchmark (it ends with it). Reported: runs, spikes detected, detection delay after the
spike began (median, worst), lost and duplicated items, the rate the demo chose, and the load
average before and after.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from finsent.bench.common import hardware, load_average
from finsent.core.errors import ConfigError
from finsent.core.jsonout import add_json_option, emit_json
from finsent.core.settings import Settings


def _burn(seconds: float) -> None:  # pragma: no cover - runs in a child process
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x = (x * 31 + 7) % 1_000_003


def run_bench(runs: int, seconds: float, busy_core: bool, progress: Any = print) -> dict[str, Any]:
    burner = None
    if busy_core:
        burner = multiprocessing.get_context("spawn").Process(target=_burn, args=(runs * (seconds + 120),), daemon=True)
        burner.start()
    load_before = load_average()
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="finsent-bench-demo-") as tmp:
            for i in range(runs):
                out = Path(tmp) / f"run{i}.json"
                t0 = time.monotonic()
                proc = subprocess.run(
                    [sys.executable, "-m", "finsent", "demo", "--seconds", f"{seconds:g}", "--summary-json", str(out)],
                    capture_output=True,
                    text=True,
                    timeout=seconds + 600,
                )
                summary = json.loads(out.read_text()) if out.is_file() else {}
                spike_start = (summary.get("spike_window_s") or [None])[0]
                hits = [a["t_s"] for a in summary.get("alerts", []) if a["topic"] == summary.get("spike_topic")]
                row = {
                    "run": i + 1,
                    "rc": proc.returncode,
                    "detected": bool(summary.get("spike_detected")),
                    "delay_s": round(min(hits) - spike_start, 1) if hits and spike_start is not None else None,
                    "lost": summary.get("lost"),
                    "duplicates": summary.get("duplicates_in_store"),
                    "rate": summary.get("rate_msgs_per_s"),
                    "spike_topic": summary.get("spike_topic"),
                    "wall_s": round(time.monotonic() - t0, 1),
                    "load_1m": (load_average() or (None,))[0],
                }
                results.append(row)
                progress(json.dumps(row))
    finally:
        if burner is not None:
            burner.terminate()
            burner.join(5)
    delays = [r["delay_s"] for r in results if r["delay_s"] is not None]
    return {
        "hardware": hardware(),
        "runs": runs,
        "seconds": seconds,
        "busy_core": busy_core,
        "detected": sum(r["detected"] for r in results),
        "exit_0": sum(r["rc"] == 0 for r in results),
        "lost_total": sum(r["lost"] or 0 for r in results),
        "duplicates_total": sum(r["duplicates"] or 0 for r in results),
        "delay_s_median": statistics.median(delays) if delays else None,
        "delay_s_max": max(delays) if delays else None,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "results": results,
    }


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    if args.runs < 1:
        raise ConfigError("finsent bench demo: --runs must be >= 1")
    report = run_bench(args.runs, args.seconds, args.busy_core, progress=lambda line: print(line, file=sys.stderr))
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=2))
    emit_json(args.json, report)
    return 0


def register(bench_sub: Any) -> None:
    from finsent.bench.common import plain_help

    p = bench_sub.add_parser(
        "demo",
        help="run the demo N times (optionally with one core kept busy) and count the detected spikes",
        description=plain_help(__doc__) + "\n\nexample:\n  finsent bench demo --runs 20 --busy-core --json demo.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", type=int, default=20, help="demo runs (default 20)")
    p.add_argument("--seconds", type=float, default=75.0, help="--seconds of each demo run (default 75)")
    p.add_argument("--busy-core", action="store_true", help="keep one core busy with a CPU burner meanwhile")
    add_json_option(p, "every run's row and the totals")
    p.set_defaults(func=run_demo)
