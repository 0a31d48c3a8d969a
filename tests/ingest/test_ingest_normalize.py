"""Normalisation rules shared by every ingest source (pure logic, no servers)."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from finsent.ingest.normalize import (
    ImpossibleTime,
    Skip,
    canonical_url,
    clean_text,
    decode_bytes,
    dedup_keys,
    extract_tickers,
    make_item,
    to_utc,
    truncate,
)

UTC = timezone.utc  # noqa: UP017


def test_clean_text_strips_html_decodes_entities_collapses_whitespace() -> None:
    raw = "<![CDATA[<p>Shares&nbsp;of <b>AT&amp;T</b></p><p>fell&#8212;again</p><script>var x=1;</script>]]>"
    assert clean_text(raw) == "Shares of AT&T fell—again"
    assert clean_text("AT&amp;T \n\t rises\u200b  5%") == "AT&T rises 5%"
    assert clean_text("<div>one</div><div>two</div>") == "one two"  # block tags never glue words
    assert clean_text("P&L < 5 and > 3") == "P&L < 5 and > 3"  # not HTML: left alone
    assert clean_text(None) == ""


def test_decode_bytes_honours_declared_latin1_and_falls_back() -> None:
    data = "Société Générale €".encode("cp1252")
    assert decode_bytes(data, "text/xml; charset=ISO-8859-1") == "Société Générale €"
    assert decode_bytes(b'<?xml version="1.0" encoding="ISO-8859-1"?><t>Caf\xe9</t>').endswith("Café</t>")
    assert decode_bytes("naïve".encode()) == "naïve"
    assert decode_bytes(b"caf\xe9") == "café"  # undeclared, not UTF-8: Windows-1252


def test_times_become_utc_and_missing_is_none() -> None:
    assert to_utc("Mon, 06 Sep 2021 16:45:00 +0200") == datetime(2021, 9, 6, 14, 45, tzinfo=UTC)
    assert to_utc("2021-09-06T16:45:00Z") == datetime(2021, 9, 6, 16, 45, tzinfo=UTC)
    assert to_utc("2021-09-06T16:45:00") == datetime(2021, 9, 6, 16, 45, tzinfo=UTC)  # naive = UTC
    assert to_utc(time.gmtime(0)) == datetime(1970, 1, 1, tzinfo=UTC)
    assert to_utc(1_700_000_000_000) == to_utc(1_700_000_000)  # epoch millis
    assert to_utc("not a date") is None
    assert to_utc(None) is None and to_utc("") is None


def test_canonical_url_removes_tracking_and_fragment() -> None:
    url = "HTTPS://News.Example.COM:443/a/story?utm_source=x&id=7&fbclid=abc&gclid=1&UTM_Medium=y#comments"
    assert canonical_url(url) == "https://news.example.com/a/story?id=7"
    assert canonical_url("http://example.com") == "http://example.com/"
    assert canonical_url("http://example.com:8080/x") == "http://example.com:8080/x"
    assert canonical_url("javascript:alert(1)") is None
    assert canonical_url("not a url") is None


def test_tickers_cashtags_exchanges_not_amounts() -> None:
    text = "Buy $AAPL and $BRK.B, not $5 or $5B or $1.2bn. (NASDAQ: MSFT) NYSE:IBM $Apple US$10 $TSLA."
    assert extract_tickers(text) == ("AAPL", "BRK.B", "TSLA", "MSFT", "IBM")
    assert extract_tickers("no tickers, $100 only") == ()
    assert extract_tickers("$AAPL", extra=["$nvda", "AAPL"]) == ("NVDA", "AAPL")


def test_make_item_ids_are_stable_and_cross_source() -> None:
    a = make_item(source="rss:a", source_type="news", text="Story", url="https://x.com/s?utm_source=a")
    b = make_item(source="rss:b", source_type="news", text="Story!", url="https://X.com/s#top")
    assert a.id == b.id and a.url == "https://x.com/s"
    g1 = make_item(source="rss:a", source_type="news", text="t", guid="g-1")
    g2 = make_item(source="rss:a", source_type="news", text="t", guid="g-1")
    g3 = make_item(source="rss:b", source_type="news", text="t", guid="g-1")
    assert g1.id == g2.id != g3.id
    assert "guid:rss:a:g-1" in dedup_keys(g1, "g-1")


def test_make_item_title_kept_apart_published_none_when_missing() -> None:
    it = make_item(source="s", source_type="social", title="<b>Head</b>", text="Body $NVDA", published=None)
    assert it.title == "Head" and it.text == "Body $NVDA" and it.tickers == ("NVDA",)
    assert it.published_at is None and it.ingested_at.tzinfo is not None


def test_make_item_skips_empty_and_truncates_oversize() -> None:
    with pytest.raises(Skip) as exc:
        make_item(source="s", source_type="news", text="<p> &nbsp; </p>", title="only a title")
    assert exc.value.reason == "empty_text"
    with pytest.raises(Skip):
        make_item(source="s", source_type="blog", text="x")
    long = "word " * 100
    it = make_item(source="s", source_type="news", text=long, max_text_chars=103)
    assert it.truncated and len(it.text) <= 103 and it.text.endswith("word")
    assert truncate("abc", 10) == ("abc", False)


def test_impossible_dates_are_never_rolled_over() -> None:
    impossible = [
        "2024-02-30",
        "2023-02-29T10:00:00Z",
        "2024-13-01",
        "2024-04-31 10:00",
        "2024-02-28T25:00:00Z",
        "2024-02-28T23:61:00Z",
        "Fri, 30 Feb 2024 15:00:00 +0100",
        "20240230",
        "2024/02/30",
        "99999999999999",
    ]
    for text in impossible:  # feedparser used to turn these into real dates (2024-02-30 -> 2024-03-01)
        assert to_utc(text) is None, text
        with pytest.raises(ImpossibleTime):
            to_utc(text, strict=True)
    with pytest.raises(ImpossibleTime):
        to_utc(1e20, strict=True)
    assert to_utc("2024-02-29") == datetime(2024, 2, 29, tzinfo=UTC)  # a leap day is real
    assert to_utc("2024-02-28T24:00:00Z") == datetime(2024, 2, 29, tzinfo=UTC)  # ISO end of day
    assert to_utc("2024/03/01 10:00", strict=True) == datetime(2024, 3, 1, 10, tzinfo=UTC)  # was read as Dec 1
    assert to_utc("20240301T101500Z", strict=True) == datetime(2024, 3, 1, 10, 15, tzinfo=UTC)
    assert to_utc("not a date", strict=True) is None  # unreadable stays null, strict or not


def test_make_item_keeps_an_impossible_date_as_none_says_why_and_refuses_the_future() -> None:
    why: list[str] = []
    item = make_item(source="s", source_type="news", text="t", published="2024-02-30", on_unparsed_date=why.append)
    assert item.published_at is None and len(why) == 1 and "day is out of range" in why[0]
    assert make_item(source="s", source_type="news", text="t", published=" ", on_unparsed_date=why.append)
    assert len(why) == 1  # no time at all is not an unreadable one
    with pytest.raises(Skip) as exc:
        make_item(source="s", source_type="news", text="t", published="2100-01-01T00:00:00Z")
    assert exc.value.reason == "bad_time" and "ahead of this host's clock" in exc.value.detail
