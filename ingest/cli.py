"""``finsent ingest ...``: replay files, poll RSS/Atom feeds and social APIs, accept HTTP pushes.

Every subcommand goes through the same pipeline (normalise -> dedup -> publish with acks ->
mark), writes logs to stderr and, with ``--dry-run``, prints the normalised items as JSON lines
on stdout instead of publishing. Exit status: 0 when at least one source succeeded, 1 when all
failed, 2 on bad arguments or input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from stream.settings import Settings

log = logging.getLogger("ingest")

EPILOG_COMMON = """\
dedup: items already published (same canonical URL, source GUID or id) are dropped; the state
lives in FINSENT_INGEST_STATE_DIR and is written only after the broker acknowledged the item.
--dry-run prints normalised items as JSON lines on stdout and publishes nothing.
"""


def _add_common(p: argparse.ArgumentParser, *, polling: bool) -> None:
    p.add_argument("--dry-run", action="store_true", help="print normalised items as JSON lines; publish nothing")
    if polling:
        p.add_argument("--once", action="store_true", help="poll every source once, publish, and exit")
        p.add_argument(
            "--interval", type=float, metavar="S", help="seconds between polls of a source (FINSENT_INGEST_INTERVAL_S)"
        )
        p.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus /metrics on this port")


def build_pipeline(settings: Settings, *, dry_run: bool, use_dedup: bool = True, delivery_timeout_s: float = 30.0):
    """(pipeline, publisher or None): the dedup state is persisted only when really publishing."""
    from ingest.dedup import DedupStore
    from ingest.pipeline import Pipeline
    from ingest.publisher import Publisher

    if dry_run:
        return Pipeline(publisher=None, dedup=DedupStore(None), max_text_chars=settings.max_text_chars,
                        use_dedup=use_dedup), None
    from stream.kafka import quiet_client_logs

    quiet_client_logs(settings)
    publisher = Publisher(settings, delivery_timeout_s=delivery_timeout_s)
    dedup = DedupStore.from_settings(settings) if use_dedup else DedupStore(None)
    return Pipeline(publisher=publisher, dedup=dedup, max_text_chars=settings.max_text_chars,
                    use_dedup=use_dedup), publisher


def _summary(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


# -- replay ------------------------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from ingest.replay import ReplayInputError, replay

    if args.rate is not None and args.speedup is not None:
        print("finsent ingest replay: use either --rate or --speedup, not both", file=sys.stderr)
        return 2
    pipeline, publisher = build_pipeline(settings, dry_run=args.dry_run, use_dedup=args.dedup)
    try:
        stats = replay(
            args.paths, pipeline, rate=args.rate, speedup=args.speedup, limit=args.limit,
            source=args.source, source_type=args.source_type, encoding=args.encoding,
            progress=not args.dry_run,
        )
    except ReplayInputError as exc:
        print(f"finsent ingest replay: {exc}", file=sys.stderr)
        return 2
    finally:
        if publisher is not None:
            publisher.close()
    _summary(produced=stats.produced, skipped=stats.skipped)
    return 0


# -- registration ------------------------------------------------------------------------------


def _positive(value: str) -> float:
    v = float(value)
    if v <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v


def register(subparsers: Any) -> None:
    ingest = subparsers.add_parser(
        "ingest",
        help="publish news/social items to Kafka (replay, rss, mastodon, reddit, http)",
        description="Ingesters: every item is normalised (clean text, UTC times, canonical URL, tickers), "
        "deduplicated and published to the raw topic with acks=all.",
        epilog=EPILOG_COMMON,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ingest.add_subparsers(dest="ingest_command", metavar="SOURCE", required=True)

    p = sub.add_parser(
        "replay",
        help="replay CSV/JSONL files (demo, backfill, benchmarks)",
        description="Replay CSV (header with a 'text' column; title, url, published_at, source, source_type, "
        "author, tickers, id used when present) or JSONL files onto the raw topic. Ids are stable: "
        "stable_id('replay', file name, row, text) unless an 'id' column exists. Ends by printing one JSON "
        'line {"produced": N, "skipped": M} on stdout.',
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="CSV or JSONL (.jsonl/.ndjson) files")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=_positive, metavar="N", help="items per second (default: as fast as possible)")
    pace.add_argument(
        "--speedup", type=_positive, metavar="X",
        help="follow the rows' published_at spacing, X times faster (rows without a time go immediately)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="stop after N items")
    p.add_argument("--source", metavar="NAME", help="source of rows without a 'source' column (default replay:<file>)")
    p.add_argument("--source-type", choices=("news", "social"), default="news", help="default source_type (news)")
    p.add_argument("--encoding", default="utf-8-sig", help="file encoding (default utf-8; e.g. latin-1)")
    p.add_argument("--dedup", action="store_true", help="also drop items already published (off: replays repeat)")
    p.add_argument("--dry-run", action="store_true", help="print normalised items as JSON lines; publish nothing")
    p.set_defaults(func=cmd_replay)

