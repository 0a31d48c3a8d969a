"""RSS/Atom/RDF ingestion against a real local HTTP server with nasty fixtures."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from finsent.ingest.dedup import DedupStore
from finsent.ingest.feeds import FeedSource, load_feed_list
from finsent.ingest.fetch import Fetcher, FetchError, parse_retry_after
from finsent.ingest.metrics import IngestMetrics
from finsent.ingest.pipeline import Pipeline
from finsent.ingest.poller import Poller
from tests.ingest.test_ingest_support import LocalHTTP, consume_all

DATA = Path(__file__).parents[1] / "data" / "ingest"


@pytest.fixture
def server():
    srv = LocalHTTP()
    for name, ctype in [
        ("feed_a.xml", "application/rss+xml"),
        ("feed_b.atom", "application/atom+xml"),
        ("feed_rdf.xml", "application/rdf+xml"),
        ("feed_latin1.xml", "application/rss+xml; charset=ISO-8859-1"),
        ("feed_malformed.xml", "application/xml"),
        ("not_a_feed.html", "text/html; charset=utf-8"),
    ]:
        srv.static("/" + name, (DATA / name).read_bytes(), ctype)
    srv.routes["/moved"] = lambda req: (301, {"Location": "/feed_rdf.xml"}, b"")
    srv.routes["/busy"] = lambda req: (429, {"Retry-After": "120"}, b"slow down")
    srv.routes["/huge"] = lambda req: (200, {"Content-Type": "application/rss+xml"}, b"<rss>" + b"x" * 300_000)
    bomb = gzip.compress(b"<rss>" + b" " * 5_000_000)
    srv.routes["/bomb"] = lambda req: (200, {"Content-Type": "application/rss+xml", "Content-Encoding": "gzip"}, bomb)

    def etagged(req):
        if req.headers.get("If-None-Match") == '"v1"':
            return 304, {"ETag": '"v1"'}, b""
        return 200, {"Content-Type": "application/rss+xml", "ETag": '"v1"'}, (DATA / "feed_rdf.xml").read_bytes()

    srv.routes["/etag"] = etagged
    yield srv
    srv.close()


def _fetcher(max_bytes: int = 200_000) -> Fetcher:
    return Fetcher(user_agent="finsent-test/1 (+tests)", timeout_s=5, max_bytes=max_bytes)


def _pipeline(tmp_path, out=None, publisher=None) -> Pipeline:
    import io

    return Pipeline(
        publisher=publisher,
        dedup=DedupStore(tmp_path / "d.sqlite3"),
        metrics=IngestMetrics(CollectorRegistry()),
        out=out or io.StringIO(),
    )


def test_rss_cli_once_dry_run_one_bad_feed_does_not_stop_others(server, tmp_path, capsys, caplog, monkeypatch):
    from finsent.cli import main

    monkeypatch.setenv("FINSENT_INGEST_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("FINSENT_INGEST_MAX_FETCH_BYTES", "200000")
    listfile = tmp_path / "feeds.txt"
    listfile.write_text(f"# my feeds\n{server.url('/feed_b.atom')} 60\n{server.url('/not_a_feed.html')}\n")
    opml = tmp_path / "feeds.opml"
    opml.write_text(
        f'<opml version="2.0"><body><outline text="x" xmlUrl="{server.url("/moved")}"/>'
        f'<outline xmlUrl="{server.url("/feed_latin1.xml")}"/></body></opml>'
    )
    rc = main(
        [
            "ingest",
            "rss",
            server.url("/feed_a.xml"),
            server.url("/huge"),
            server.url("/feed_malformed.xml"),
            "--feeds",
            str(listfile),
            "--feeds",
            str(opml),
            "--once",
            "--dry-run",
        ]
    )
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    summary = lines[-1]
    items = {i["title"]: i for i in lines[:-1]}
    assert summary["sources_ok"] == 5 and summary["sources_failed"] == 2
    ids = [i["id"] for i in lines[:-1]]
    assert len(ids) == len(set(ids))
    # same story in feed A and feed B (different tracking params): published once
    rally = [i for i in lines[:-1] if i["url"] == "https://news.example.com/markets/tech-rally"]
    assert len(rally) == 1
    assert rally[0]["text"] in ("Shares of $AAPL and (NASDAQ: NVDA) rose 3%…", "The same story as wire A, syndicated.")
    assert "(updated)" not in " ".join(items)  # duplicate GUID dropped
    assert "track()" not in rally[0]["text"]
    oil = items["Oil slides as inventories build"]
    assert oil["text"] == "Crude fell 2% on Tuesday after data showed a build."
    assert oil["url"] == "https://wire-a.example.com/oil-slides"
    assert oil["published_at"] is None  # no date in the feed: never "now"
    tsla = items["Headline-only item about $TSLA deliveries"]
    assert tsla["text"] == tsla["title"] and tsla["tickers"] == ["TSLA"]
    assert items["Société Générale profit € 2bn"]["text"] == "Bénéfice en hausse à Paris."
    assert items["Bond yields climb"]["published_at"] == "2024-03-05T08:00:00.000Z"  # via the redirect
    assert items["Banks rally after stress tests"]["published_at"] == "2024-03-04T17:00:00.000Z"
    assert all(i["source_type"] == "news" and i["source"].startswith("rss:") for i in lines[:-1])
    assert "" not in items and None not in items  # the empty item was skipped
    errors = " ".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert server.url("/not_a_feed.html") in errors and "not_a_feed" in errors
    assert server.url("/huge") in errors and "too_large" in errors
    assert server.hits("/feed_a.xml")[0]["user-agent"].startswith("finsent/")


def test_conditional_get_304_and_validators_persisted(server, tmp_path):
    pipe = _pipeline(tmp_path)
    src = FeedSource(server.url("/etag"), _fetcher())
    assert src.poll(pipe).fetched == 1
    again = FeedSource(server.url("/etag"), _fetcher())  # a restart: validators come from the state
    out = again.poll(pipe)
    assert out.fetched == 0
    assert server.hits("/etag")[-1]["if-none-match"] == '"v1"'


def test_429_retry_after_backs_off_that_source_only(server, tmp_path):
    pipe = _pipeline(tmp_path)
    busy = FeedSource(server.url("/busy"), _fetcher(), interval_s=10)
    good = FeedSource(server.url("/feed_rdf.xml"), _fetcher(), interval_s=10)
    poller = Poller([busy, good], pipe)
    ok, failed = poller.run_once()
    assert (ok, failed) == (1, 1)
    state = {s.source.url: s for s in poller.states}
    assert state[busy.url].next_due - time.monotonic() >= 115  # Retry-After: 120 beats the 10 s interval
    assert state[good.url].next_due - time.monotonic() <= 11
    assert pipe.metrics.errors.labels(busy.name, "rate_limited")._value.get() == 1
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480 - 60) == 60


def test_size_limits_and_gzip_bomb(server):
    with pytest.raises(FetchError) as exc:
        _fetcher().get(server.url("/huge"))
    assert exc.value.kind == "too_large"
    with pytest.raises(FetchError) as exc:
        _fetcher(max_bytes=1_000_000).get(server.url("/bomb"))
    assert exc.value.kind == "too_large"


def test_feed_list_parsing(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("https://a.com/rss 30\n\n# c\nhttps://b.com/atom\n")
    assert load_feed_list(p) == [("https://a.com/rss", 30.0), ("https://b.com/atom", None)]
    p.write_text("ftp://nope\n")
    with pytest.raises(ValueError):
        load_feed_list(p)


@pytest.mark.integration
def test_rss_publishes_to_kafka_exactly_once_across_restarts(server, kafka_bootstrap, unique_name, tmp_path):
    from finsent.core.settings import Settings
    from finsent.ingest.publisher import Publisher

    settings = Settings(brokers=kafka_bootstrap, topic_raw=f"raw.{unique_name}", partitions=2)
    urls = [server.url("/feed_a.xml"), server.url("/feed_b.atom")]
    produced = []
    for _ in range(2):  # second run = a restart with the persisted dedup state
        pub = Publisher(settings)
        pipe = _pipeline(tmp_path, publisher=pub)
        for u in urls:
            FeedSource(u, _fetcher(), remember_validators=False).poll(pipe)
        pub.close()
        pipe.dedup.close()
        produced.append(pipe.produced)
    assert produced == [4, 0]  # A: rally, oil, tsla; B: banks (its rally is A's story: a duplicate)
    got = consume_all(kafka_bootstrap, settings.kafka.topic_raw, expect=4)
    assert len(got) == 4 and len({r["id"] for r in got}) == 4
    rally = next(r for r in got if r["url"] == "https://news.example.com/markets/tech-rally")
    assert rally["title"] == "Apple & Nvidia lead a tech rally" and rally["source"] == "rss:127.0.0.1"
    assert rally["text"] == "Shares of $AAPL and (NASDAQ: NVDA) rose 3%…"
    assert rally["tickers"] == ["AAPL", "NVDA"] and rally["published_at"] == "2024-03-04T19:30:00.000Z"


def test_run_forever_polls_on_interval_with_304s_and_backs_off_dead_feed(server, tmp_path):
    import threading

    pipe = _pipeline(tmp_path)
    good = FeedSource(server.url("/etag"), _fetcher(), interval_s=0.2)
    dead = FeedSource(server.url("/gone"), _fetcher(), interval_s=0.2)  # 404
    poller = Poller([good, dead], pipe, max_backoff_s=5)
    t = threading.Thread(target=poller.run_forever)
    t.start()
    time.sleep(2.0)
    poller.stop.set()
    t.join(5)
    assert not t.is_alive()
    etag_hits = server.hits("/etag")
    assert len(etag_hits) >= 4  # polled again and again...
    assert all(h.get("if-none-match") == '"v1"' for h in etag_hits[1:])  # ...with conditional GET
    assert pipe.produced == 1  # the 304s published nothing new
    # the dead feed backs off exponentially (0.2, 0.4, 0.8, 1.6 s...): far fewer tries
    assert 2 <= len(server.hits("/gone")) <= 5 < len(etag_hits)
    assert pipe.metrics.errors.labels(dead.name, "http_4xx")._value.get() == len(server.hits("/gone"))


def test_slow_server_times_out_and_redirect_limits(server):
    def slow(req):
        time.sleep(1.5)
        return 200, {"Content-Type": "application/rss+xml"}, b"<rss/>"

    server.routes["/slow"] = slow
    server.routes["/loop"] = lambda req: (302, {"Location": "/loop"}, b"")
    server.routes["/to-ftp"] = lambda req: (301, {"Location": "ftp://example.com/feed"}, b"")
    fetcher = Fetcher(user_agent="t", timeout_s=0.5, max_bytes=1000)
    for path, kind in (("/slow", "timeout"), ("/loop", "redirect"), ("/to-ftp", "redirect")):
        with pytest.raises(FetchError) as exc:
            fetcher.get(server.url(path))
        assert exc.value.kind == kind, path
    with pytest.raises(FetchError) as exc:
        fetcher.get("file:///etc/passwd")
    assert exc.value.kind == "bad_url"
