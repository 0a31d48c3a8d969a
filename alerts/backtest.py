"""``finsent alerts backtest``: the entity detector over stored history, on event time, as the live worker runs it.

What it does: reads the stored mentions (one per (item, entity), ``finsent.stream.store.schema``) and their
items with event time in [since, until), computes story clusters and novelty (:mod:`finsent.alerts.novelty`),
feeds the entity detector (:mod:`finsent.alerts.entity_detector`) and closes every bucket at the end; prints
the alerts it would have raised and, with ``--plot DIR``, one timeline PNG per alerted entity.

**Why novelty is computed here and not stored.** Novelty and clusters live in the alerts layer, above ``stream``,
and stages import downwards only, so the store cannot compute them at insert; ``mentions.novelty`` holds what a
caller passed (default 100). The backtest recomputes both from the stored items in event-time order: the same
composition as the live entity stage (the worker's reorder buffer releases mentions in (event time, item id,
entity key) order, and each is observed by :class:`~finsent.alerts.novelty.Novelty` with its source, title and
first :data:`TEXT_CHARS` characters of text, then counted). :func:`run` is that composition, and both the
backtest (:func:`stored_mentions`) and a direct run on scored items (:func:`scored_mentions`) go through it, so
the same items give the same alerts.

**Equality with live, and its limits.** Event time is stored in whole seconds (ClickHouse ``DateTime``): both
paths here use whole seconds. A live run orders two mentions of one second by their milliseconds, so it can differ
from a backtest only when two sub-second-apart mentions are near-duplicates of one story (which one is "first"
for novelty). Mentions later than the detector's allowed lateness were ignored live (``late``) but are counted by
a backtest (it sees them in order): the backtest says what the detector *would* have raised with complete data.

**A store without (all) its mentions.** Items stored before the entity layer, or by a worker that wrote no
mentions, have none: a backtest over them would say "0 alerts" as if the news were quiet. :func:`coverage_warnings`
names a window with items but no mentions, or its days with :data:`GAP_DAY_ITEMS` or more items and not one
mention, with the ``finsent rescore`` command that writes them (``warnings`` in the report; the CLI prints them on
stderr).

Memory: all mentions of the window are held at once (the crypto news replay, ~40,000 items, is ~100 MB).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from finsent.alerts.entity_detector import BucketStats, EntityDetector, Mention, entity_key, story_title
from finsent.alerts.novelty import Novelty
from finsent.core.events import Alert, ScoredItem, format_time

#: characters of an item's text that novelty compares (the live entity stage carries the same)
TEXT_CHARS = 1000


@dataclass(frozen=True, slots=True)
class Pending:
    """One mention to replay, with the text novelty compares."""

    mention: Mention
    text: str


def _second(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(microsecond=0)


def scored_mentions(items: Iterable[ScoredItem]) -> list[Pending]:
    """The mentions of scored items as the detector sees them (event time in whole seconds, the store's)."""
    out = []
    for s in items:
        it = s.item
        at = _second(it.published_at or it.ingested_at)
        seen: set[str] = set()
        for e in s.entities:
            if not e.name.strip():
                continue
            key = entity_key(e.entity_id, e.name)
            if key in seen:
                continue
            seen.add(key)
            out.append(
                Pending(
                    Mention(
                        it.id,
                        at,
                        key,
                        e.entity_id,
                        e.name,
                        e.sentiment,
                        int(e.relevance),
                        100,
                        it.source,
                        (it.title or "")[:300],
                        it.url,
                        s.model_version,
                    ),
                    (it.text or "")[:TEXT_CHARS],
                )
            )
    return out


def stored_mentions(store: Any, since: datetime, until: datetime) -> list[Pending]:
    """The stored mentions with event time in [since, until), joined with their items."""
    return _pending(*store.mention_history(since, until))


def _pending(items: Sequence[dict[str, Any]], ments: Sequence[dict[str, Any]]) -> list[Pending]:
    """Stored mentions (``mention_history``'s second list) joined with their items (its first)."""
    by_id = {d["id"]: d for d in items}
    out = []
    for m in ments:
        it = by_id.get(m["item_id"])
        if it is None:  # a mention whose item is outside the window (an item re-stored with another time)
            continue
        eid, name = m["entity_id"], m["name"]
        out.append(
            Pending(
                Mention(
                    m["item_id"],
                    m["event_time"],
                    entity_key(eid, name),
                    eid,
                    name,
                    m["sentiment"],
                    m["relevance"],
                    100,
                    it["source"],
                    (it["title"] or "")[:300],
                    it["url"],
                    # the version that scored the mention: a backtest alert carries the version of most of the
                    # stories it quotes, as a live one does ("" when a mention carries none)
                    str(m.get("model_version") or ""),
                ),
                (it["text"] or "")[:TEXT_CHARS],
            )
        )
    return out


#: a UTC day with at least this many stored items and not one mention is a gap in the mentions (a day stored before
#: the entity layer, or by a worker that wrote none), not a quiet day: most financial headlines name someone (an
#: unlinked name is a mention too), so five in a row naming nobody is rare
GAP_DAY_ITEMS = 5
#: gap spans a warning names (then "and N more")
GAP_SPANS_SHOWN = 4


def mention_gaps(
    items: Sequence[dict[str, Any]], ments: Sequence[dict[str, Any]], min_items: int = GAP_DAY_ITEMS
) -> list[tuple[date, date, int]]:
    """Runs of UTC days of event time with ``min_items`` or more stored items and no mention: (first day, last day,
    items). Days without items do not break a run; a day with mentions does."""
    per_day = Counter(d["event_time"].date() for d in items)
    mentioned = Counter(m["event_time"].date() for m in ments)
    runs: list[tuple[date, date, int]] = []
    open_run = False
    for day in sorted(set(per_day) | set(mentioned)):
        if mentioned[day]:
            open_run = False
        elif per_day[day] >= min_items:
            if open_run:
                first, _, n = runs[-1]
                runs[-1] = (first, day, n + per_day[day])
            else:
                runs.append((day, day, per_day[day]))
            open_run = True
    return runs


def coverage_warnings(
    store: Any,
    items: Sequence[dict[str, Any]],
    ments: Sequence[dict[str, Any]],
    since: datetime,
    until: datetime,
) -> list[str]:
    """What a backtest cannot see (issue 26): a window with stored items but no mentions at all, or days of it
    with many items and none (:func:`mention_gaps`), with the ``finsent rescore`` command that writes them.
    Without this a store filled before the entity layer answered "0 alerts", which reads as quiet news."""
    from finsent.stream.store.reports import rescore_hint

    if not items:
        return []
    if not ments:
        return [
            f"{len(items)} stored item(s) in the window but no entity mentions (items stored before the entity "
            "layer, or by a worker that wrote none), so the backtest had nothing to count; "
            + rescore_hint(store, since, until)
        ]
    gaps = mention_gaps(items, ments)
    if not gaps:
        return []
    spans = [f"{a}" if a == b else f"{a}..{b}" for a, b, _ in gaps[:GAP_SPANS_SHOWN]]
    if len(gaps) > GAP_SPANS_SHOWN:
        spans.append(f"and {len(gaps) - GAP_SPANS_SHOWN} more")
    start = datetime.combine(gaps[0][0], datetime.min.time(), UTC)
    end = datetime.combine(gaps[-1][1], datetime.min.time(), UTC) + timedelta(days=1)
    return [
        f"{sum(n for _, _, n in gaps)} stored item(s) on days without a single entity mention "
        f"({', '.join(spans)}; items stored before the entity layer, or by a worker that wrote none): the backtest "
        f"cannot raise alerts there; {rescore_hint(store, max(start, since), min(end, until))}"
    ]


def run(pending: Sequence[Pending], detector: EntityDetector, novelty: Novelty | None = None) -> list[Alert]:
    """Replay mentions in (event time, item id, entity key) order through novelty and the detector; flush."""
    novelty = novelty or Novelty()
    alerts: list[Alert] = []
    for p in sorted(pending, key=lambda p: (p.mention.at, p.mention.item_id, p.mention.key)):
        m = p.mention
        story = novelty.observe(m.item_id, m.at, m.source, m.title, p.text, [m.key])
        alerts += detector.add(replace(m, novelty=story.novelty[m.key], title=story_title(m.title, p.text)))
    return alerts + detector.flush()


def alert_json(a: Alert) -> dict[str, Any]:
    """An alert as ``finsent query alerts --json`` shows it (kind, entity, ``at`` = event time of the detection)."""
    return {
        "kind": a.kind,
        "entity_id": a.entity_id,
        "entity_name": a.entity_name,
        "topic": a.topic if a.kind == "topic" else None,
        "at": format_time(a.window_end),
        "sentiment": "negative",
        "severity": a.severity,
        "score": a.score,
        "negative": a.negative,
        "total": a.total,
        "window_start": format_time(a.window_start),
        "window_end": format_time(a.window_end),
        "id": a.id,
        "detector": a.detector,
        "model_version": a.model_version,
        "evidence": a.evidence,
    }


def backtest(
    store: Any, detector: EntityDetector, since: datetime, until: datetime, plot_dir: Path | None = None
) -> dict[str, Any]:
    """Run the detector over the stored window; the report ``finsent alerts backtest --json`` prints."""
    series: dict[str, list[BucketStats]] = defaultdict(list)
    previous = detector.on_bucket
    detector.on_bucket = lambda b: (series[b.key].append(b), previous(b) if previous else None)
    items, ments = store.mention_history(since, until)
    pending = _pending(items, ments)
    alerts = run(pending, detector)
    report: dict[str, Any] = {
        "since": format_time(since),
        "until": format_time(until),
        "mentions": len(pending),
        "items": len({p.mention.item_id for p in pending}),
        "entities": len({p.mention.key for p in pending}),
        "alerts": [alert_json(a) for a in alerts],
    }
    if plot_dir is not None:
        report["plots"] = plot_timelines(plot_dir, alerts, series)
    warnings = coverage_warnings(store, items, ments, since, until)
    if warnings:  # only then: the CLI prints them on stderr and leaves them out of --json
        report["warnings"] = warnings
    return report


def plot_timelines(out_dir: Path, alerts: Sequence[Alert], series: dict[str, list[BucketStats]]) -> list[str]:
    """One PNG per alerted entity: mentions and novel negatives per day, the index per bucket, alerts marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    by_key: dict[str, list[Alert]] = defaultdict(list)
    for a in alerts:
        by_key[str((a.evidence or {}).get("entity_key") or a.entity_id or a.entity_name)].append(a)
    written = []
    for key, alist in sorted(by_key.items()):
        pts = series.get(key, [])
        if not pts:
            continue
        days: dict[datetime, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for p in pts:
            d = p.start.replace(hour=0, minute=0, second=0, microsecond=0)
            days[d][0] += p.buzz
            days[d][1] += p.novel_negative
        dx = sorted(days)
        fig, ax = plt.subplots(figsize=(11, 3.6))
        ax.bar(dx, [days[d][0] for d in dx], width=0.8, align="edge", color="#bbbbbb", label="mentions / day")
        ax.bar(dx, [days[d][1] for d in dx], width=0.8, align="edge", color="#d62728", label="novel negative / day")
        ax2 = ax.twinx()
        ax2.plot(
            [p.start for p in pts],
            [p.index for p in pts],
            ls="none",
            marker=".",
            ms=4,
            color="#1f77b4",
            label="index (-log10 p)",
        )
        ax2.set_ylabel("index")
        for a in alist:
            ax.axvline(a.window_end, color="black", ls="--", lw=1)
        ax.set_title(
            f"{alist[0].entity_name or key}: {len(alist)} alert(s), first at {format_time(alist[0].window_end)}"
        )
        ax.set_ylabel("mentions per day")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
        fig.autofmt_xdate()
        fig.tight_layout()
        path = out_dir / (re.sub(r"[^\w.-]+", "_", key).strip("_") + ".png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(str(path))
    return written


def default_window(
    since: timedelta | datetime | None, until: timedelta | datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    """[since, until) as times: durations count back from ``now``; defaults 30 days back and now."""
    lo = now - since if isinstance(since, timedelta) else since or now - timedelta(days=30)
    hi = now - until if isinstance(until, timedelta) else until or now + timedelta(minutes=5)
    return lo, hi


__all__ = [
    "Pending",
    "TEXT_CHARS",
    "alert_json",
    "backtest",
    "coverage_warnings",
    "default_window",
    "mention_gaps",
    "plot_timelines",
    "run",
    "scored_mentions",
    "stored_mentions",
]
