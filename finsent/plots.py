"""Sentiment timelines as PNG: what a person would rather look at than a table of counts.

``plot_timeline`` draws, from the store's distinct-item counts (``Store.topic_counts``), the negative
share of the busiest topics over time, the volume underneath, and a vertical line where each alert
fired. ``plot_demo_timeline`` is the demo's picture (``finsent demo --plot``): the same from the store,
plus the spiked company's negative mentions, the injected window shaded and the alerts marked, zoomed on
the live replay so the spike is not squeezed into a corner by the back-filled history.
matplotlib is an optional dependency (it comes with the ``train`` extra); without it the caller gets an
ImportError that says what to install.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

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
    _label_alerts(ax, [(a.fired_at, f"alert: {a.topic}") for a in alerts])
    ax.set_ylim(0, 1)
    ax.set_ylabel("negative share")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    axv.set_ylabel(f"items / {_seconds(width)} bucket")
    axv.set_xlabel("ingested at (UTC)")
    fig.autofmt_xdate()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _seconds(width: timedelta) -> str:
    return f"{width.total_seconds():g} s"


def _label_alerts(ax: Any, marks: Sequence[tuple[datetime, str]], top: float = 0.97, step: float = 0.11) -> None:
    """Alert labels, horizontal in a white box, each one lower than the last one that would overlap it
    (alerts a few buckets apart used to print on top of each other)."""
    placed: list[tuple[datetime, float]] = []
    xmin, xmax = ax.get_xlim()
    span = timedelta(days=max(xmax - xmin, 1e-9)) / 6  # a label is about a sixth of the axis wide
    for at, text in sorted(marks):
        y = top
        while any(abs(at - t) < span and abs(y - yy) < step / 2 for t, yy in placed):
            y -= step
        placed.append((at, y))
        ax.annotate(
            text,
            (at, y),
            xycoords=("data", "axes fraction"),
            va="top",
            ha="left",
            fontsize=9,
            color="crimson",
            xytext=(3, 0),
            textcoords="offset points",
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "crimson", "lw": 0.6, "alpha": 0.9},
        )


def plot_demo_timeline(
    store: Store,
    out: str | Path,
    since: timedelta,
    bucket_s: int,
    alerts: Sequence[Alert] = (),
    entity_alerts: Sequence[Alert] = (),
    highlight: str | None = None,
    spike: tuple[datetime, datetime] | None = None,
    entity: tuple[str, str] | None = None,
    start: datetime | None = None,
    top: int = 4,
) -> Path:
    """The demo's timeline PNG; returns its path. Raises ValueError when the store has nothing in ``since``.

    Three panels on one time axis of ``bucket_s`` buckets, from ``start`` (default: all of ``since``):
    the ``entity`` (id, name)'s negative mentions (bars) and novel negative ones (line), with its alert;
    the negative share of the ``top`` busiest topics, ``highlight`` and every alerted topic (drawn bold), with
    each topic's first alert labelled; and the
    volume. ``spike`` (the injected window) is shaded on all three. Earlier buckets are left out so that the
    live part fills the width; the title says how much history was left out.
    """
    counts = store.topic_counts(since, bucket_s)
    if not counts:
        raise ValueError("no stored counts in that time range: nothing to plot")
    plt = _pyplot()
    from matplotlib import dates as mdates

    start = start or min(c.bucket for c in counts)
    hidden = sum(c.total for c in counts if c.bucket < start)
    counts = [c for c in counts if c.bucket >= start]
    if not counts:
        raise ValueError("no stored counts after the start of the plot: nothing to plot")
    series = []
    if entity is not None and hasattr(store, "entity_series"):
        series = [r for r in store.entity_series(entity[0], since=start, bucket_s=bucket_s) if r["bucket"] >= start]
    width = timedelta(seconds=bucket_s)

    fig, (axe, ax, axv) = plt.subplots(3, 1, figsize=(12, 8), sharex=True, gridspec_kw={"height_ratios": [2, 3, 1.4]})
    for axis in (axe, ax, axv):
        if spike is not None:
            axis.axvspan(spike[0], spike[1], color="gold", alpha=0.25, lw=0)
        axis.grid(axis="y", color="0.9")
    name = entity[1] if entity else ""
    _entity_panel(axe, series, width, name, entity_alerts, spike is not None)
    _topic_panel(ax, counts, width, highlight, alerts, top)
    _volume_panel(axv, counts, width)
    axv.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    note = f"; the {hidden:,} back-filled items before it are not shown" if hidden else ""
    axe.set_title(
        f"finsent demo: negative news about {name} injected (shaded) and the alerts that caught it\n"
        f"from the stored counts, {_seconds(width)} buckets{note}",
        fontsize=11,
        loc="left",
    )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _entity_panel(
    axe: Any, series: list[dict[str, Any]], width: timedelta, name: str, alerts: Sequence[Alert], shaded: bool
) -> None:
    """The company the spike is about: negative mentions per bucket, the novel ones, its alert."""
    if series:
        xs = [r["bucket"] + width / 2 for r in series]
        axe.bar(
            xs,
            [r["negative"] for r in series],
            width=width * 0.85,
            color="firebrick",
            alpha=0.8,
            label=f"negative mentions of {name}",
        )
        axe.plot(
            xs,
            [r["novel_negative"] for r in series],
            color="black",
            lw=1.4,
            marker="o",
            ms=3,
            label="of which novel (distinct stories)",
        )
    else:
        axe.text(0.5, 0.5, f"no mentions of {name} stored", transform=axe.transAxes, ha="center", color="0.4")
    for a in alerts:
        axe.axvline(a.fired_at, color="crimson", lw=2)
    _label_alerts(axe, [(a.fired_at, f"ENTITY ALERT: {a.entity_name or a.entity_id}") for a in alerts])
    axe.set_ylabel("mentions / bucket")
    peak = max((r["negative"] for r in series), default=0)
    axe.set_ylim(0, max(peak * 1.35, 5))  # headroom: the alert's label sits above the bars
    handles, _ = axe.get_legend_handles_labels()
    if shaded:
        from matplotlib.patches import Patch

        handles.append(Patch(color="gold", alpha=0.4, label=f"injected: negative news about {name or 'the spike'}"))
    axe.legend(handles=handles, fontsize=9, loc="upper left")


def _topic_panel(
    ax: Any, counts: Sequence[TopicCounts], width: timedelta, highlight: str | None, alerts: Sequence[Alert], top: int
) -> None:
    """Negative share of the ``top`` busiest topics and ``highlight``; each topic's first alert labelled."""
    by_topic: dict[str, list[TopicCounts]] = defaultdict(list)
    for c in counts:
        by_topic[c.topic].append(c)
    volume = {t: sum(c.total for c in cs) for t, cs in by_topic.items()}
    shown = sorted(volume, key=lambda t: -volume[t])[:top]
    alerted = {a.topic for a in alerts}
    for extra in [highlight, *sorted(alerted)]:
        if extra in by_topic and extra not in shown:
            shown.append(extra)
    for topic in shown:
        cs = sorted(by_topic[topic], key=lambda c: c.bucket)
        strong = topic == highlight or topic in alerted
        ax.plot(
            [c.bucket + width / 2 for c in cs],
            [c.negative / c.total if c.total >= 3 else float("nan") for c in cs],
            marker="o",
            ms=3,
            lw=2.4 if strong else 1.0,
            alpha=1.0 if strong else 0.55,
            label=topic + (" (alert)" if topic in alerted else ""),
        )
    for a in alerts:
        ax.axvline(a.fired_at, color="crimson", ls="--", lw=1.0)
    firsts: dict[str, Alert] = {}
    for a in sorted(alerts, key=lambda a: a.fired_at):
        firsts.setdefault(a.topic, a)
    _label_alerts(ax, [(a.fired_at, f"topic alert: {a.topic}") for a in firsts.values()])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("negative share per topic")
    ax.legend(fontsize=8, loc="upper left", ncol=2, framealpha=0.9)


def _volume_panel(axv: Any, counts: Sequence[TopicCounts], width: timedelta) -> None:
    totals: dict[datetime, int] = defaultdict(int)
    for c in counts:
        totals[c.bucket] += c.total
    buckets = sorted(totals)
    axv.bar([b + width / 2 for b in buckets], [totals[b] for b in buckets], width=width * 0.85, color="0.6")
    axv.set_ylabel("items / bucket")
    axv.set_xlabel(f"ingested at (UTC), {_seconds(width)} buckets")


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
