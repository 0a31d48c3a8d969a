"""Sentiment timelines as PNG: what a person would rather look at than a table of counts.

``plot_timeline`` draws, from the store's distinct-item counts (``Store.topic_counts``), the negative
share of the busiest topics over time, the volume underneath, and a vertical line where each alert
fired. matplotlib is an optional dependency (it comes with the ``train`` extra); without it the caller
gets an ImportError that says what to install.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from finsent.core.events import Alert
from finsent.core.store import Store, TopicCounts


def _pyplot():  # noqa: ANN202 - matplotlib is optional
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("plots need matplotlib: pip install matplotlib (or finsent[train])") from exc
    return plt


def plot_timeline(
    counts: Sequence[TopicCounts],
    out: str | Path,
    alerts: Sequence[Alert] = (),
    highlight: str | None = None,
    top: int = 6,
    title: str = "finsent: negative share per topic",
    min_items: int = 3,
) -> Path:
    """Write a PNG of per-topic negative share (lines) and volume (bars); return its path.

    Shows the ``top`` busiest topics plus ``highlight`` (e.g. the demo's spike topic) and every topic
    that has an alert. A bucket with fewer than ``min_items`` items of a topic leaves a gap in that topic's
    line: a share of 1 out of 1 is noise, not sentiment. Raises ValueError when there is nothing to draw.
    """
    if not counts:
        raise ValueError("no stored counts in that time range: nothing to plot")
    plt = _pyplot()
    by_topic: dict[str, list[TopicCounts]] = defaultdict(list)
    for c in counts:
        by_topic[c.topic].append(c)
    volume = {t: sum(c.total for c in cs) for t, cs in by_topic.items()}
    shown = sorted(volume, key=lambda t: -volume[t])[:top]
    for extra in [highlight, *(a.topic for a in alerts)]:
        if extra and extra in by_topic and extra not in shown:
            shown.append(extra)

    fig, (ax, axv) = plt.subplots(2, 1, figsize=(11, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for topic in shown:
        cs = sorted(by_topic[topic], key=lambda c: c.bucket)
        xs = [c.bucket for c in cs]
        ys = [c.negative / c.total if c.total >= max(1, min_items) else float("nan") for c in cs]
        strong = topic == highlight or any(a.topic == topic for a in alerts)
        ax.plot(xs, ys, marker="o", ms=3, lw=2.4 if strong else 1.0, alpha=1.0 if strong else 0.6, label=topic)
    totals: dict[datetime, int] = defaultdict(int)
    for c in counts:
        totals[c.bucket] += c.total
    buckets = sorted(totals)
    width = (buckets[1] - buckets[0]) if len(buckets) > 1 else timedelta(seconds=1)
    axv.bar(buckets, [totals[b] for b in buckets], width=width * 0.9, color="0.6")
    for a in alerts:
        for axis in (ax, axv):
            axis.axvline(a.fired_at, color="crimson", ls="--", lw=1.2)
        ax.annotate(
            f"alert: {a.topic}", (a.fired_at, 0.97), rotation=90, va="top", ha="right", fontsize=8, color="crimson"
        )
    ax.set_ylim(0, 1)
    ax.set_ylabel("negative share")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    axv.set_ylabel("items / bucket")
    axv.set_xlabel("ingested at (UTC)")
    fig.autofmt_xdate()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_store_timeline(
    store: Store,
    out: str | Path,
    since: timedelta,
    bucket_s: int = 60,
    alerts: Sequence[Alert] = (),
    highlight: str | None = None,
) -> Path:
    """``plot_timeline`` over what the store holds for the last ``since``."""
    return plot_timeline(store.topic_counts(since, bucket_s), out, alerts=alerts, highlight=highlight)
