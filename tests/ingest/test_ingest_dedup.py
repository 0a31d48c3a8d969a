"""Dedup state: persisted across restarts, bounded, expiring; pipeline marks only what was published."""

from __future__ import annotations

import io
import json

from prometheus_client import CollectorRegistry

from finsent.ingest.dedup import DedupStore
from finsent.ingest.metrics import IngestMetrics
from finsent.ingest.pipeline import Pipeline


def test_keys_survive_a_restart(tmp_path) -> None:
    path = tmp_path / "state" / "dedup.sqlite3"
    with DedupStore(path) as d:
        d.mark(["url:https://x.com/a", "id:1"])
        d.set_cursor("mastodon:x", "123")
    with DedupStore(path) as d:
        assert d.known(["url:https://x.com/a", "id:1", "id:2"]) == {"url:https://x.com/a", "id:1"}
        assert d.get_cursor("mastodon:x") == "123"


def test_expiry_and_bound(tmp_path) -> None:
    now = [1000.0]
    d = DedupStore(tmp_path / "d.sqlite3", max_keys=1000, ttl_s=60, clock=lambda: now[0])
    d.mark(["old"])
    now[0] += 61
    assert not d.seen("old")  # expired keys are not duplicates even before pruning
    d.mark([f"k{i}" for i in range(1500)])
    now[0] += 1
    d.mark(["newest"])
    d.prune()
    assert len(d) == 1000
    assert d.seen("newest") and not d.seen("k0")  # oldest dropped first


def _pipeline(tmp_path, out) -> Pipeline:
    return Pipeline(
        publisher=None, dedup=DedupStore(tmp_path / "d.sqlite3"), metrics=IngestMetrics(CollectorRegistry()), out=out
    )


def test_pipeline_drops_same_story_from_two_sources_and_in_batch(tmp_path) -> None:
    out = io.StringIO()
    p = _pipeline(tmp_path, out)
    a = p.normalize(
        "rss:a", source="rss:a", source_type="news", text="Fed hikes", url="https://n.com/x?utm_source=a", guid="a-1"
    )
    b = p.normalize(
        "rss:b", source="rss:b", source_type="news", text="Fed hikes rates", url="https://N.com/x#c", guid="b-9"
    )
    a_again = p.normalize(
        "rss:a", source="rss:a", source_type="news", text="Fed hikes", url="https://n.com/x-updated", guid="a-1"
    )
    assert a and b and a_again
    res = p.submit("rss:a", [a, b])
    assert [i.id for i in res.published] == [a.item.id] and len(res.duplicates) == 1
    res = p.submit("rss:a", [a_again])  # same GUID, new link: still a duplicate
    assert res.published == [] and len(res.duplicates) == 1
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [x["id"] for x in lines] == [a.item.id]
    for key in ("id", "source", "source_type", "url", "title", "text", "published_at", "tickers"):
        assert key in lines[0]
    assert p.metrics.duplicates.labels("rss:a")._value.get() == 2
