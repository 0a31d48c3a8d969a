"""``finsent demo``: the whole pipeline locally for about two minutes (:mod:`finsent.demo` runs it).

The handler checks the flags before a two-minute run and imports the demo lazily so that
``finsent --help`` stays fast. Errors are raised, never printed: :func:`finsent.cli.main` turns
them into a line and a code.
"""

from __future__ import annotations

import argparse
import math

from finsent.cli.tree import Subcommands
from finsent.core.errors import ConfigError
from finsent.core.settings import Settings


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    from finsent.demo import MIN_DEMO_SECONDS, WINDOW_S
    from finsent.demo import run_demo as run_the_demo

    if not math.isfinite(args.seconds) or not math.isfinite(args.rate):
        raise ConfigError(
            "finsent demo: --seconds and --rate must be finite numbers", hint="e.g. --seconds 75 --rate 40"
        )
    if args.seconds < MIN_DEMO_SECONDS:
        raise ConfigError(
            f"finsent demo: --seconds {args.seconds:g} is too short to see a spike",
            hint=f"use at least {MIN_DEMO_SECONDS:g}: the spike runs for 30% of the replay, in {WINDOW_S} s windows",
        )
    if args.rate <= 0:
        raise ConfigError("finsent demo: --rate must be > 0", hint="e.g. --rate 40")
    if args.plot:
        try:
            import matplotlib  # noqa: F401 - checked before a two-minute run, not after it
        except ImportError:
            raise ConfigError("finsent demo --plot needs matplotlib", hint="pip install matplotlib") from None
    summary = run_the_demo(
        settings,
        seconds=args.seconds,
        rate=args.rate,
        summary_json=args.summary_json,
        model_dir=args.model_dir,
        store_url=args.store,  # the global --store: keep the results there instead of a temporary chdb
        history=args.history,
        plot=args.plot,
        keep=args.keep,
    )
    ok = summary.get("spike_detected") and summary.get("duplicates_in_store") == 0 and summary.get("lost") == 0
    return 0 if ok else 1


def register(sub: Subcommands) -> None:
    d = sub.leaf(
        "demo",
        run_demo,
        help="run everything locally for about two minutes: broker, worker, replay with a negative spike, alert",
        description=(
            "Start an embedded broker and the scoring worker with the shipped model and a fresh embedded "
            "ClickHouse (chdb), score four minutes of back-filled history, then replay the bundled seed tweets "
            "live for --seconds (default 75) at --rate items/s, inject negative news about one named company "
            "(JPMorgan, from several outlets) for 30% of the replay plus a few malformed messages, and detect it: "
            "the worker's entity alert names the company (topic spike alerts from the stored counts stay). Shows live "
            "progress and ends on its own, about two minutes in all. Exit code 0 when the entity alert was raised and "
            "nothing was lost or duplicated.\n\n"
            "examples:\n"
            "  finsent demo\n"
            "  finsent demo --seconds 120 --plot timeline.png --summary-json run.json\n"
            "  finsent demo --store chdb:///tmp/demo-store    keep the scored items afterwards\n"
            "  finsent demo --keep                            then query it from another terminal; Ctrl-C stops it"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument(
        "--seconds",
        type=float,
        default=75.0,
        help="length of the live replay in seconds, after the history (default 75, at least 40)",
    )
    d.add_argument("--rate", type=float, default=40.0, help="background items per second (default 40)")
    d.add_argument("--summary-json", metavar="PATH", help="write the run's summary (counts, alerts, latency) here")
    d.add_argument(
        "--plot",
        metavar="PNG",
        help="write a timeline of per-topic negative share, volume and alerts here (needs matplotlib)",
    )
    d.add_argument(
        "--keep",
        action="store_true",
        help="after the summary, leave the broker, the worker and the store running (the commands to query them "
        "are printed) until Ctrl-C; the store then stays on disk",
    )
    d.add_argument("--model-dir", help="model directory (default: the shipped model)")
    d.add_argument(
        "--no-history",
        dest="history",
        action="store_false",
        help="skip the back-filled history (the detector then has little baseline)",
    )
