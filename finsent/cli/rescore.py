"""``finsent rescore``: score stored items again with another model version (:mod:`finsent.stream.rescore`).

Ctrl-C or SIGTERM finishes the page in hand, checkpoints it and stops with exit 130; the same command
resumes.
"""

from __future__ import annotations

import argparse
import signal
from typing import Any

from finsent.cli.tree import Subcommands
from finsent.core.argtypes import parse_duration
from finsent.core.jsonout import add_json_option, emit_json, to_stdout
from finsent.core.settings import Settings
from finsent.stream.rescore import DEFAULT_BATCH, rescore


def run_rescore(args: argparse.Namespace, settings: Settings) -> int:
    stopping: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        stopping.append(signum)  # finish the page in hand, checkpoint it, stop

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = rescore(
            settings,
            args.since,
            topic=args.topic,
            version=args.version,
            batch_size=args.batch_size,
            restart=args.restart,
            max_batches=args.max_batches,
            stop=lambda: bool(stopping),
        )
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    emit_json(args.json, summary)
    if not to_stdout(args.json):
        state = "done" if summary["finished"] else "stopped; run the same command again to resume"
        print(
            f"rescored {summary['done']} of {summary['total']} items with {summary['version']} "
            f"({summary['failed']} failed, {summary['batches_this_run']} batches this run): {state}"
        )
    return 130 if stopping else 0


RESCORE_DESCRIPTION = (
    "Re-score the items ingested in the last DURATION with the registry's production version, with "
    "--version V, or with FINSENT_MODEL_DIR when there is no registry. Default queries then see the new "
    "score; `finsent query compare --versions A B` shows both. Works in batches with a progress line on "
    "stderr and a checkpoint after each batch: run the same command again after an interruption and it "
    "resumes where it stopped (--restart starts over). Needs the store to itself when it is chdb (stop "
    "the worker); a clickhouse:// server is shared with the running worker.\n\n"
    "examples:\n"
    "  finsent rescore --since 7d\n"
    "  finsent rescore --since 24h --topic Earnings --version v0003-1a2b3c4d\n"
    "  finsent rescore --since 30d --max-batches 100     a bounded slice now, the rest later"
)


def register(sub: Subcommands) -> None:
    p = sub.leaf(
        "rescore",
        run_rescore,
        help="score stored items again with the production model or --version V (resumable)",
        description=RESCORE_DESCRIPTION,
    )
    p.add_argument(
        "--since",
        type=parse_duration,
        required=True,
        metavar="DURATION",
        help="items ingested in the last DURATION (30m, 24h, 7d)",
    )
    p.add_argument("--topic", default=None, help="only items whose current topic is this one")
    p.add_argument("--version", default=None, help="registry version to score with (default: production)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help=f"items per batch (default {DEFAULT_BATCH})")
    p.add_argument("--max-batches", type=int, default=None, help="stop after N batches (resume later)")
    p.add_argument("--restart", action="store_true", help="ignore an unfinished checkpoint and start over")
    add_json_option(p, "the summary")
