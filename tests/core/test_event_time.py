"""Event time (issue 26): an item's time is published_at, else ingested_at; history lands in history.

* the worker's decoder refuses times more than 5 minutes ahead of its clock (dead letter ``bad_time``),
* a replayed file of old news lands in its own days in every store query (series, listings, entity series),
* items arriving late and out of order land in their buckets in the store; the detector's allowed lateness
  decides what it still tests (a mention later than that is stored and shown, but counted as late).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from finsent.alerts.entity_detector import EntityDetector, Mention
from finsent.core.events import (
    MAX_FUTURE_SKEW,
    EntityMention,
    InvalidEvent,
    RawItem,
    ScoredItem,
    decode_raw,
    format_time,
    utcnow,
)
from finsent.ingest.replay import iter_file_records
from finsent.stream.store import open_store

PROBS = {"negative": 0.9, "neutral": 0.05, "positive": 0.05}


def _msg(**kw: object) -> bytes:
    body = {"id": "e-1", "source": "s", "source_type": "news", "text": "FTX halts withdrawals", **kw}
    return json.dumps(body).encode()


def test_future_times_beyond_the_skew_are_refused() -> None:
    now = utcnow()
    for field in ("published_at", "ingested_at"):
        with pytest.raises(InvalidEvent) as exc:
            decode_raw(_msg(**{field: format_time(now + MAX_FUTURE_SKEW + timedelta(minutes=1))}))
        assert exc.value.reason == "bad_time" and field in exc.value.detail and "future" in exc.value.detail
        # a clock a little ahead is tolerated
        assert decode_raw(_msg(**{field: format_time(now + timedelta(minutes=2))}))
    # the past, however far, is history
    item = decode_raw(_msg(published_at="2022-11-09T12:00:00Z"))
    assert item.published_at == datetime(2022, 11, 9, 12, tzinfo=UTC)
    # a published_at the worker cannot read is refused too (ingesters send ISO 8601 or null)
    with pytest.raises(InvalidEvent) as exc:
        decode_raw(_msg(published_at="07/12/2026 09:30"))
    assert exc.value.reason == "bad_time"


@pytest.fixture(params=["clickhouse", "chdb"])
def store(request: pytest.FixtureRequest) -> Iterator:
    s = open_store(request.getfixturevalue(f"{request.param}_db_url"))
    s.ensure_schema()
    yield s
    s.close()


def _score(raw: RawItem, sentiment: str = "negative") -> ScoredItem:
    ents = (EntityMention("FTX", 0, 3, sentiment, PROBS, None, "ftx", 90),) if "FTX" in raw.text else ()
    return ScoredItem(raw, sentiment, PROBS, "crypto", 0.9, "m1", utcnow(), ents)


@pytest.mark.integration
def test_a_replay_of_history_lands_in_history(store, tmp_path: Path) -> None:
    csv_file = tmp_path / "history.csv"
    csv_file.write_text(
        "published_at,source,title,text\n"
        "2022-11-08T10:00:00Z,CoinDesk,FTX halts withdrawals,FTX halts withdrawals\n"
        '"Wed, 09 Nov 2022 15:30:00 GMT",Decrypt,FTX deal collapses,FTX deal collapses\n'
        "07/12/2026 09:30,Blog,FTX unreadable date,FTX unreadable date\n",
        encoding="utf-8",
    )
    # the path every replayed item takes: the file's normaliser, the broker's JSON, the worker's decoder
    items = [decode_raw(rec.item.to_json()) for rec in iter_file_records(csv_file)]
    assert [i.published_at for i in items] == [
        datetime(2022, 11, 8, 10, tzinfo=UTC),
        datetime(2022, 11, 9, 15, 30, tzinfo=UTC),
        None,
    ]
    store.insert_scored([_score(i) for i in items])
    nov = (datetime(2022, 11, 1, tzinfo=UTC), datetime(2022, 12, 1, tzinfo=UTC))
    assert [i["title"] for i in store.list_items(*nov)] == ["FTX deal collapses", "FTX halts withdrawals"]
    # an unreadable date is kept as null and the item's event time is when finsent saw it
    recent = store.list_items(timedelta(hours=1))
    assert [i["title"] for i in recent] == ["FTX unreadable date"] and recent[0]["published_at"] is None
    assert recent[0]["event_time"] == recent[0]["ingested_at"].replace(microsecond=0)
    series = store.entity_series("name:ftx", nov[0], nov[1], bucket_s=86400)
    assert [(b["bucket"].day, b["buzz"]) for b in series] == [(8, 1), (9, 1)]
    counts = store.topic_counts(timedelta(days=2000), bucket_s=86400)
    assert sorted((c.bucket.date().isoformat(), c.total) for c in counts)[:2] == [("2022-11-08", 1), ("2022-11-09", 1)]
    assert store.top_negative(timedelta(hours=1))[0]["title"] == "FTX unreadable date"


@pytest.mark.integration
def test_late_and_out_of_order_items(store) -> None:
    base = utcnow().replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)

    def raw(i: int, at: datetime) -> RawItem:
        return RawItem(
            id=f"late-{i}", source="s", source_type="news", text=f"FTX story {i}", ingested_at=utcnow(), published_at=at
        )

    on_time = [raw(1, base + timedelta(hours=3, minutes=5)), raw(2, base + timedelta(hours=4, minutes=1))]
    late = [raw(3, base + timedelta(minutes=30)), raw(4, base + timedelta(hours=3, minutes=50))]
    store.insert_scored([_score(r) for r in on_time])
    store.insert_scored([_score(r) for r in reversed(late)])  # later, and out of order
    series = store.entity_series("name:ftx", timedelta(hours=6), bucket_s=3600)
    assert [(int((b["bucket"] - base).total_seconds() // 3600), b["buzz"]) for b in series] == [(0, 1), (3, 2), (4, 1)]
    # the detector (lateness 1 h) fed in arrival order: item 4 is within the lateness of the newest time (4:01),
    # item 3 is 3.5 h behind it, its bucket already closed: stored and shown above, but counted as late
    det = EntityDetector(bucket_s=3600, lateness_s=3600)
    for r in [*on_time, *reversed(late)]:
        det.add(Mention(r.id, r.published_at, "~ftx", None, "ftx", "negative", source=r.source))
    assert det.late == 1
