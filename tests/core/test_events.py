"""The event schema: round trips, and a clear reason for every kind of malformed message."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from finsent.core.events import (
    Alert,
    InvalidEvent,
    RawItem,
    ScoredItem,
    dead_letter,
    decode_alert,
    decode_raw,
    decode_scored,
    format_time,
    parse_time,
    stable_id,
    utcnow,
)

T0 = datetime(2026, 11, 23, 8, 30, 15, 123000, tzinfo=UTC)


def _raw(**kw) -> RawItem:
    base = dict(id="abc", source="test", source_type="news", text="Shares fall 5%", ingested_at=T0)
    base.update(kw)
    return RawItem(**base)


def test_raw_round_trip_keeps_every_field() -> None:
    item = _raw(title="T", url="https://x/y", author="me", published_at=T0, tickers=("AAPL",), truncated=True)
    assert decode_raw(item.to_json()) == item


def test_scored_round_trip() -> None:
    scored = ScoredItem(
        item=_raw(),
        sentiment="negative",
        sentiment_probs={"negative": 0.8, "neutral": 0.15, "positive": 0.05},
        topic="Earnings",
        topic_prob=0.9,
        model_version="m1",
        scored_at=T0,
    )
    back = decode_scored(scored.to_json())
    assert back == scored
    assert back.negative_prob == pytest.approx(0.8)


def test_alert_round_trip_and_stable_id() -> None:
    a = Alert(
        topic="Energy | Oil",
        fired_at=T0,
        window_start=T0,
        window_end=T0,
        negative=30,
        total=40,
        negative_share=0.75,
        baseline_share=0.1,
        score=9.5,
        detector="ewma",
    )
    assert decode_alert(a.to_json()) == a
    assert len(a.id) == 24
    b = Alert(
        topic="Energy | Oil",
        fired_at=T0.replace(hour=9),
        window_start=T0,
        window_end=T0,
        negative=1,
        total=2,
        negative_share=0.5,
        baseline_share=0.1,
        score=1.0,
        detector="ewma",
    )
    assert a.id == b.id  # same detector, topic and window -> same alert id (idempotent store)


def test_times_are_utc_iso_with_z() -> None:
    assert format_time(T0) == "2026-11-23T08:30:15.123Z"
    assert parse_time("2026-11-23T09:30:15.123+01:00", "t") == T0
    assert parse_time("2026-11-23T08:30:15.123", "t") == T0  # naive taken as UTC
    with pytest.raises(ValueError):
        format_time(datetime(2026, 1, 1))


def test_stable_id_is_deterministic_and_separates_parts() -> None:
    assert stable_id("a", "bc") == stable_id("a", "bc")
    assert stable_id("a", "bc") != stable_id("ab", "c")
    assert len(stable_id("x")) == 24


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty_message"),
        (b"not json", "not_json"),
        (b"[1,2]", "not_object"),
        (b"\xff\xfe{}", "invalid_utf8"),
        (b'{"source":"s","source_type":"news","text":"x"}', "missing_field"),
        (b'{"id":5,"source":"s","source_type":"news","text":"x"}', "bad_type"),
        (b'{"id":"1","source":"s","source_type":"blog","text":"x"}', "bad_source_type"),
        (b'{"id":"1","source":"s","source_type":"news","text":"   "}', "empty_text"),
        (b'{"id":"1","source":"s","source_type":"news","text":"x","published_at":"yesterday"}', "bad_time"),
        (b'{"id":"1","source":"s","source_type":"news","text":"x","v":99}', "unsupported_version"),
        (b'{"id":"1","source":"s","source_type":"news","text":"x","tickers":"AAPL"}', "bad_type"),
    ],
)
def test_malformed_messages_name_their_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_raw(payload)
    assert info.value.reason == reason


def test_oversize_and_long_text() -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_raw(b"{" + b" " * 2000 + b"}", max_bytes=1000)
    assert info.value.reason == "oversize"
    item = decode_raw(_raw(text="y" * 50).to_json(), max_text_chars=10)
    assert item.text == "y" * 10 and item.truncated


def test_dead_letter_keeps_reason_origin_and_bytes() -> None:
    body = json.loads(dead_letter(b"\xff\x00", "invalid_utf8", "bad byte", "finsent.raw", 2, 41))
    assert body["reason"] == "invalid_utf8" and body["partition"] == 2 and body["offset"] == 41
    assert body["payload"] == "ff00" and body["payload_encoding"] == "hex"


def test_missing_ingested_at_takes_the_given_default() -> None:
    payload = b'{"id":"1","source":"s","source_type":"social","text":"x"}'
    assert decode_raw(payload, default_ingested_at=T0).ingested_at == T0
    before = utcnow()
    assert decode_raw(payload).ingested_at >= before  # without a default: now
