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
