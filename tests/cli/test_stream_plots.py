"""The sentiment timeline PNG, drawn from what a real embedded ClickHouse (chdb) stores."""

from __future__ import annotations

from datetime import timedelta

import pytest

from finsent.core.events import Alert, RawItem, ScoredItem, utcnow
from finsent.plots import plot_store_timeline, plot_timeline
from finsent.stream.store import open_store

pytestmark = pytest.mark.integration


def _scored(i: int, topic: str, negative: bool, minutes_ago: int) -> ScoredItem:
    now = utcnow()
    item = RawItem(
        id=f"plot-{i}",
        source="t",
        source_type="news",
        text=f"item {i}",
        ingested_at=now - timedelta(minutes=minutes_ago),
    )
    probs = (
        {"negative": 0.9, "neutral": 0.05, "positive": 0.05}
        if negative
        else {"negative": 0.05, "neutral": 0.9, "positive": 0.05}
    )
    return ScoredItem(
        item=item,
        sentiment="negative" if negative else "neutral",
        sentiment_probs=probs,
        topic=topic,
        topic_prob=0.9,
        model_version="test",
    )


def test_timeline_png_from_stored_counts(chdb_db_url, tmp_path) -> None:
    store = open_store(chdb_db_url)
    store.ensure_schema()
    items = [
        _scored(i, "Energy | Oil" if i % 2 else "Earnings", negative=(i % 2 == 1 and i > 40), minutes_ago=i // 10)
        for i in range(60)
    ]
    store.insert_scored(items)
    now = utcnow()
    alert = Alert(
        topic="Energy | Oil",
        fired_at=now,
        window_start=now - timedelta(minutes=1),
        window_end=now,
        negative=9,
        total=10,
        negative_share=0.9,
        baseline_share=0.1,
        score=7.0,
        detector="ewma_z",
    )
    out = plot_store_timeline(
        store, tmp_path / "t.png", since=timedelta(hours=1), alerts=[alert], highlight="Energy | Oil"
    )
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    store.close()


def test_nothing_to_plot_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_timeline([], tmp_path / "x.png")


def _alert(topic: str, at, kind: str = "topic") -> Alert:
    return Alert(
        topic="" if kind == "entity" else topic,
        fired_at=at,
        window_start=at - timedelta(seconds=30),
        window_end=at,
        negative=9,
        total=10,
        negative_share=0.9,
        baseline_share=0.1,
        score=7.0,
        detector="ewma_z",
        kind=kind,
        entity_id="JPM" if kind == "entity" else None,
        entity_name="JPMorgan Chase" if kind == "entity" else None,
    )


def test_demo_timeline_zooms_on_the_live_part_and_marks_spike_and_alerts(chdb_db_url, tmp_path) -> None:
    from finsent.plots import plot_demo_timeline

    store = open_store(chdb_db_url)
    store.ensure_schema()
    store.insert_scored([_scored(i, "Stock Movement", negative=i % 3 == 0, minutes_ago=i // 10) for i in range(90)])
    now = utcnow()
    alerts = [_alert("Stock Movement", now - timedelta(seconds=20)), _alert("Macro", now - timedelta(seconds=15))]
    out = plot_demo_timeline(
        store,
        tmp_path / "demo.png",
        since=timedelta(hours=1),
        bucket_s=5,
        alerts=alerts,
        entity_alerts=[_alert("", now - timedelta(seconds=25), kind="entity")],
        spike=(now - timedelta(seconds=60), now - timedelta(seconds=10)),
        entity=("JPM", "JPMorgan"),
        start=now - timedelta(minutes=3),
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    with pytest.raises(ValueError, match="nothing to plot"):  # everything stored is before the start
        plot_demo_timeline(store, tmp_path / "x.png", since=timedelta(hours=1), bucket_s=5, start=now + timedelta(1))
    store.close()


def test_alert_labels_close_in_time_are_stacked_not_printed_over_each_other() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from finsent.plots import _label_alerts

    t0 = utcnow()
    fig, ax = plt.subplots()
    ax.plot([t0, t0 + timedelta(minutes=10)], [0, 1])
    _label_alerts(ax, [(t0, "a"), (t0 + timedelta(seconds=5), "b"), (t0 + timedelta(minutes=9), "c")])
    y = {t.get_text(): t.xy[1] for t in ax.texts}
    plt.close(fig)
    assert y["a"] != y["b"]  # 5 s apart: the second goes below the first
    assert y["c"] == y["a"]  # far apart: same height
