"""``finsent bench entities``: story clusters, novelty and entity alerts on real timestamped news, offline.

Reads a CSV of news (``published_at, source, text, url``; default the shared crypto news of December 2022 and
January 2023), finds each headline's entities with the linker (:mod:`finsent.models.linking`; a cashtag and
capitalised-name fallback where it is missing), scores sentiment with the shipped classifier, then runs the
story clusters and novelty (:mod:`finsent.alerts.novelty`) and the entity detector
(:mod:`finsent.alerts.entity_detector`) on *event time*, in published order. It prints the duplicate share, a
sample of multi-item clusters to check by hand, and every alert with its date, entity and first headlines;
``--plot DIR`` writes a PNG timeline per alerted entity.

An entity's sentiment is the model's sentiment for that entity when the model gives one; a name the gazetteer
found without an entity-level opinion (the linker's neutral ``(0, 1, 0)``) takes the headline's sentiment: a
headline is short and almost always about its first name, and without it every gazetteer mention would be
neutral and nothing could fire.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from finsent.alerts.backtest import plot_timelines
from finsent.core.errors import InputError
from finsent.core.events import EntityMention, format_time, parse_time
from finsent.core.jsonout import add_json_option, emit_json, to_stdout

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "crypto_news" / "2022-12_2023-01.csv"


@dataclass(frozen=True, slots=True)
class NewsRow:
    item_id: str
    at: datetime
    source: str
    title: str
    url: str


def read_news(path: Path) -> tuple[list[NewsRow], int]:
    """The CSV's rows in published order (stable), and how many were skipped (no text or no readable time)."""
    rows: list[NewsRow] = []
    skipped = 0
    try:
        with path.open(encoding="utf-8", newline="") as f:
            for n, r in enumerate(csv.DictReader(f)):
                text = (r.get("text") or r.get("title") or "").strip()
                try:
                    at = parse_time(r.get("published_at") or "", "published_at")
                except InputError:
                    at = None
                if not text or at is None:
                    skipped += 1
                    continue
                rows.append(NewsRow(f"row{n}", at, (r.get("source") or "").strip(), text, (r.get("url") or "")))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}", hint="pass the news CSV with --data") from None
    rows.sort(key=lambda r: r.at)
    return rows, skipped


_CASHTAG = re.compile(r"\$([A-Z]{2,6})\b")
_CAPS = re.compile(r"(?<![$\w])([A-Z][\w.&-]*(?:\s+[A-Z][\w.&-]*){0,2})")


def fallback_entities(text: str) -> list[EntityMention]:
    """Cashtags and capitalised names (after the first word), for a tree without the linker."""
    out: dict[str, EntityMention] = {}
    neutral = {"negative": 0.0, "neutral": 1.0, "positive": 0.0}
    for m in _CASHTAG.finditer(text):
        out.setdefault(
            m.group(1), EntityMention(m.group(0), m.start(), m.end(), "neutral", neutral, m.group(1), m.group(1), 100)
        )
    for m in _CAPS.finditer(text):
        if m.start() == 0:
            continue
        name = m.group(1).casefold()
        out.setdefault("~" + name, EntityMention(m.group(1), m.start(), m.end(), "neutral", neutral, None, name, 100))
    return list(out.values())


def _linker() -> Callable[[str], list[EntityMention]]:
    try:
        from finsent.models.linking import default_linker
    except ImportError:
        return fallback_entities
    linker = default_linker()
    return lambda text: linker.extract_entities(text, 0)


def score_sentiment(texts: list[str]) -> list[tuple[str, dict[str, float]]]:
    from finsent.models.runtime import Classifier

    try:
        clf = Classifier.load(entities=False)  # entities: linked here, the same way for every model version
    except TypeError:
        clf = Classifier.load()
    out: list[tuple[str, dict[str, float]]] = []
    for i in range(0, len(texts), 256):
        out += [(p.sentiment, p.sentiment_probs) for p in clf.predict(texts[i : i + 256])]
    return out


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from finsent.alerts.entity_detector import BucketStats, EntityDetector, Mention, Thresholds
    from finsent.alerts.novelty import Novelty, StoryClusterer
    from finsent.alerts.watchlist import Watchlist

    t_start = time.perf_counter()
    rows, skipped = read_news(Path(args.data))
    if not rows:
        raise InputError(f"{args.data}: no rows with text and a readable published_at")
    link = _linker()
    t0 = time.perf_counter()
    sentiments = score_sentiment([r.title for r in rows])
    score_s = time.perf_counter() - t0
    thresholds = Thresholds(
        score=args.score,
        min_novel_negative=args.min_novel_negative,
        min_sources=args.min_sources,
        min_ratio=args.min_ratio,
        min_negative_share=args.min_negative_share,
    )
    series: dict[str, list[BucketStats]] = defaultdict(list)
    watchlist = Watchlist(args.watchlist) if args.watchlist else None
    det = EntityDetector(
        bucket_s=args.bucket_s,
        window_buckets=args.window_buckets,
        cooldown_s=args.cooldown_s,
        prior_rate=args.prior_rate,
        thresholds=thresholds,
        watchlist=watchlist,
        watch_mode=args.watch_mode if watchlist else "all",
        on_bucket=lambda b: series[b.key].append(b),
    )
    novelty = Novelty(StoryClusterer(threshold=args.cluster_threshold))
    clusters: dict[str, list[NewsRow]] = defaultdict(list)
    alerts = []
    mentions = 0
    with_entities = 0
    t1 = time.perf_counter()
    for row, (sentiment, _) in zip(rows, sentiments, strict=True):
        ents = link(row.title)
        with_entities += bool(ents)
        story = novelty.observe(
            row.item_id, row.at, row.source, row.title, "", [e.entity_id or "~" + e.name for e in ents]
        )
        clusters[story.cluster_id].append(row)
        for e in ents:
            opinion = e.sentiment if max(e.sentiment_probs.values(), default=1.0) < 1.0 else sentiment
            m = Mention.of(
                e, row.item_id, row.at, row.source, row.title, row.url, story.novelty[e.entity_id or "~" + e.name]
            )
            alerts += det.add(
                Mention(
                    m.item_id,
                    m.at,
                    m.key,
                    m.entity_id,
                    m.name,
                    opinion,
                    m.relevance,
                    m.novelty,
                    m.source,
                    m.title,
                    m.url,
                )
            )
            mentions += 1
    alerts += det.flush()
    loop_s = time.perf_counter() - t1
    dup_items = sum(len(v) - 1 for v in clusters.values())
    multi = sorted((v for v in clusters.values() if len(v) > 1), key=lambda v: (-len(v), v[0].at))
    sent_counts = Counter(s for s, _ in sentiments)
    report: dict[str, Any] = {
        "data": str(args.data),
        "items": len(rows),
        "skipped": skipped,
        "items_with_entities": with_entities,
        "mentions": mentions,
        "sentiment": dict(sent_counts),
        "score_s": round(score_s, 1),
        "link_novelty_detect_s": round(loop_s, 2),
        "duplicate_items": dup_items,
        "duplicate_share": round(dup_items / len(rows), 4),
        "clusters_with_copies": len(multi),
        "late_ignored": det.late,
        "thresholds": asdict(thresholds),
        "cluster_sample": [
            {"size": len(v), "headlines": [f"{format_time(r.at)} {r.source}: {r.title}" for r in v[:4]]}
            for v in multi[: args.sample_clusters]
        ],
        "alerts": [
            {
                "at": format_time(a.window_end),
                "entity_id": a.entity_id,
                "entity_name": a.entity_name,
                "score": a.score,
                "novel_negative": a.negative,
                "novel": a.total,
                "expected": (a.evidence or {}).get("expected_novel_negative"),
                "sources": (a.evidence or {}).get("sources"),
                "headlines": [h["title"] for h in (a.evidence or {}).get("headlines", [])[:3]],
            }
            for a in alerts
        ],
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    if args.plot:
        report["plots"] = plot_timelines(Path(args.plot), alerts, series)
    return report


def print_report(r: dict[str, Any]) -> None:
    out = sys.stdout
    out.write(
        f"{r['items']} items ({r['skipped']} skipped), {r['items_with_entities']} with entities, "
        f"{r['mentions']} mentions; sentiment {r['sentiment']}; scored in {r['score_s']} s; linking + novelty + "
        f"detector in {r['link_novelty_detect_s']} s\n"
    )
    out.write(
        f"duplicate share: {r['duplicate_share']:.1%} ({r['duplicate_items']} items are copies, in "
        f"{r['clusters_with_copies']} clusters)\n"
    )
    for c in r["cluster_sample"]:
        out.write(f"  cluster of {c['size']}:\n" + "".join(f"    {h}\n" for h in c["headlines"]))
    out.write(f"{len(r['alerts'])} entity alerts (late mentions ignored: {r['late_ignored']}):\n")
    for a in r["alerts"]:
        out.write(
            f"  {a['at'][:16]}  {a['entity_name']} [{a['entity_id'] or 'unlinked'}]  index {a['score']:.1f}  "
            f"novel neg {a['novel_negative']}/{a['novel']} (expected {a['expected']}) "
            f"from {len(a['sources'] or [])} sources\n"
        )
        for h in a["headlines"]:
            out.write(f"      - {h}\n")
    for p in r.get("plots", []):
        out.write(f"wrote {p}\n")
    out.write(f"total {r['total_s']} s\n")


def run_entities(args: argparse.Namespace, settings: object = None) -> int:
    if getattr(args, "plumbing", False):
        from finsent.bench.entities_stack import run_entity_plumbing

        plumbing = run_entity_plumbing(args.plumbing_items, args.plumbing_rounds, progress=print)
        if not to_stdout(args.json):
            on, men, off = plumbing["on"], plumbing["mentions"], plumbing["off"]
            print(
                f"items/s through one worker: {on['items_per_s']} entities on, {men['items_per_s']} mentions stored "
                f"only, {off['items_per_s']} off (today's pipeline plumbing): on/off {on['items_per_s_ratio']:.2f}; "
                f"CPU per item {on['cpu_ms_per_item']} / {men['cpu_ms_per_item']} / {off['cpu_ms_per_item']} ms "
                f"(on/off {on['cpu_ratio']:.2f}); load {plumbing['load_before'][0]} -> {plumbing['load_after'][0]}"
            )
        emit_json(args.json, plumbing)
        return 0
    report = run_bench(args)
    if getattr(args, "through_stack", False):
        from finsent.bench.entities_stack import compare, print_stack, run_through_stack

        report["stack"] = run_through_stack(args)
        compare(report, read_news(Path(args.data))[0])
    if not to_stdout(args.json):
        print_report(report)
        if "stack" in report:
            print_stack(report, sys.stdout)
    emit_json(args.json, report)
    return 0


def register(bench_subparsers: Any) -> None:
    from finsent.alerts.entity_detector import Thresholds

    th = Thresholds()
    b = bench_subparsers.add_parser(
        "entities",
        help="story clusters, novelty and entity alerts on real timestamped news (offline)",
        description="Links each headline's entities, scores it with the shipped model, clusters near-duplicate\n"
        "stories, scores novelty and runs the entity detector on event time; prints the duplicate share,\n"
        "a sample of clusters and every alert with its first headlines.",
        epilog="examples:\n"
        "  finsent bench entities                                   the shared crypto news\n"
        "  finsent bench entities --json entities.json --plot plots/\n"
        "  finsent bench entities --data news.csv --watchlist watch.csv --watch-mode wider\n"
        "  finsent bench entities --through-stack                   also through broker, worker, clickhouse-server\n"
        "  finsent bench entities --plumbing                        the entity stage's CPU, entities on vs off",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_json_option(b, "the full report")
    b.add_argument("--data", default=str(DEFAULT_DATA), help="news CSV: published_at,source,text,url")
    b.add_argument("--plot", metavar="DIR", help="write a PNG timeline per alerted entity here")
    b.add_argument("--watchlist", metavar="FILE", help="a watchlist file (CSV or JSON lines)")
    b.add_argument("--watch-mode", choices=("only", "wider"), default="only", help="with --watchlist (default only)")
    b.add_argument("--sample-clusters", type=int, default=12, help="multi-item clusters to print (default 12)")
    b.add_argument("--cluster-threshold", type=float, default=0.5, help="Jaccard to join a cluster (default 0.5)")
    b.add_argument("--bucket-s", type=int, default=3600)
    b.add_argument("--window-buckets", type=int, default=6)
    b.add_argument("--cooldown-s", type=int, default=24 * 3600)
    b.add_argument("--prior-rate", type=float, default=0.1, help="novel negatives per bucket a new name is given")
    b.add_argument("--score", type=float, default=th.score)
    b.add_argument("--min-novel-negative", type=float, default=th.min_novel_negative)
    b.add_argument("--min-sources", type=int, default=th.min_sources)
    b.add_argument("--min-ratio", type=float, default=th.min_ratio)
    b.add_argument("--min-negative-share", type=float, default=th.min_negative_share)
    b.add_argument(
        "--through-stack",
        action="store_true",
        help="also replay the file through a local Tansu broker, one worker (shipped model, entity agent) and a "
        "private clickhouse-server, on event time, and compare its alerts with the offline run's (the worker's "
        "default thresholds, no watchlist; about a minute more on 2 cores)",
    )
    b.add_argument(
        "--stack-lateness-s",
        type=int,
        default=None,
        help="with --through-stack: the worker's FINSENT_ENTITY_LATENESS_S (default: the file's time span, since a "
        "full-speed replay is a backlog read unevenly across partitions)",
    )
    b.add_argument(
        "--stack-default-lateness",
        action="store_true",
        help="with --through-stack: keep the worker's own FINSENT_ENTITY_LATENESS_S (1 h unless set), to count "
        "the mentions a full-speed backfill makes late with it",
    )
    b.add_argument(
        "--plumbing",
        action="store_true",
        help="instead: the entity stage's plumbing cost -- one worker with a classifier that costs nothing, as "
        "bench pipeline --plumbing (off), naming two entities per item with the mentions stored, and with the "
        "entity agent on too; rounds interleaved on one Tansu broker, a fresh chdb database per round",
    )
    b.add_argument("--plumbing-items", type=int, default=2000, help="with --plumbing: items per round (2000)")
    b.add_argument("--plumbing-rounds", type=int, default=4, help="with --plumbing: rounds per mode (default 4)")
    b.add_argument("--partitions", type=int, default=2, help="with --through-stack: topic partitions (default 2)")
    b.add_argument("--timeout-s", type=float, default=900, help="with --through-stack: give up after (default 900)")
    b.set_defaults(func=run_entities)
