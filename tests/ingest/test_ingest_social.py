"""Mastodon and Reddit sources against a local server speaking their documented JSON shapes."""

from __future__ import annotations

import io
import json
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
from prometheus_client import CollectorRegistry

from finsent.ingest.dedup import DedupStore
from finsent.ingest.fetch import Fetcher, FetchError
from finsent.ingest.metrics import IngestMetrics
from finsent.ingest.pipeline import Pipeline
from finsent.ingest.social.mastodon import MastodonTagSource, parse_link_header
from finsent.ingest.social.reddit import RedditSubredditSource
from tests.ingest.test_ingest_support import LocalHTTP

UTC = timezone.utc  # noqa: UP017


def _status(sid: int, content: str, **over) -> dict:
    """A Mastodon Status entity (the fields we read plus a few others, as the API returns them)."""
    s = {
        "id": str(sid),
        "created_at": f"2024-03-04T14:{sid % 60:02d}:00.000Z",
        "in_reply_to_id": None,
        "sensitive": False,
        "spoiler_text": "",
        "visibility": "public",
        "language": "en",
        "uri": f"https://mastodon.example/users/alice/statuses/{sid}",
        "url": f"https://mastodon.example/@alice/{sid}",
        "replies_count": 0,
        "reblogs_count": 1,
        "favourites_count": 2,
        "content": content,
        "reblog": None,
        "account": {"id": "1", "username": "alice", "acct": "alice@mastodon.example", "display_name": "Alice"},
        "media_attachments": [],
        "mentions": [],
        "tags": [{"name": "stocks", "url": "https://mastodon.example/tags/stocks"}],
        "emojis": [],
        "card": None,
        "poll": None,
    }
    s.update(over)
    return s


TAG = '<a href="https://mastodon.example/tags/stocks" class="mention hashtag" rel="tag">#<span>stocks</span></a>'


@pytest.fixture
def server():
    srv = LocalHTTP()
    yield srv
    srv.close()


def _pipeline(tmp_path) -> tuple[Pipeline, io.StringIO]:
    out = io.StringIO()
    return Pipeline(
        publisher=None, dedup=DedupStore(tmp_path / "d.sqlite3"), metrics=IngestMetrics(CollectorRegistry()), out=out
    ), out


def _fetcher() -> Fetcher:
    return Fetcher(user_agent="finsent-test/1", timeout_s=5, max_bytes=1_000_000)


def test_mastodon_min_id_paging_link_headers_and_rate_limit(server, tmp_path) -> None:
    path = "/api/v1/timelines/tag/stocks"
    reset = (datetime.now(UTC) + timedelta(seconds=90)).isoformat().replace("+00:00", "Z")

    def timeline(req):
        q = parse_qs(urlsplit(req.path).query)
        assert q["limit"] == ["2"]
        min_id = q.get("min_id", [None])[0]
        base = server.url(path)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-RateLimit-Limit": "300",
            "X-RateLimit-Remaining": "299",
        }
        if min_id is None:
            page = [_status(103, f"<p>Buying more {TAG} $AAPL &amp; chill</p>"), _status(102, "<p>Earlier post</p>")]
        elif min_id == "103":
            page = [
                _status(105, "<p>Media only</p>".replace("Media only", "")),
                _status(104, f"<p>{TAG} <br>Rates up, (NYSE: JPM) down</p>", spoiler_text="markets"),
            ]
        elif min_id == "105":
            page = [
                _status(106, "<p>Boosted</p>", reblog=_status(90, "<p>orig</p>")),
            ]
            page.append(_status(107, "<p>Auf Deutsch</p>", language="de"))
            headers.update({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset})
        else:
            page = []
        if page:
            ids = [int(s["id"]) for s in page]
            headers["Link"] = f'<{base}?max_id={min(ids)}>; rel="next", <{base}?min_id={max(ids)}>; rel="prev"'
        return 200, headers, json.dumps(page).encode()

    server.routes[path] = timeline
    pipe, out = _pipeline(tmp_path)
    src = MastodonTagSource(server.base, "#stocks", _fetcher(), limit=2, languages=("en",))
    first = src.poll(pipe)  # first poll: the newest page only, no backfill
    assert first.fetched == 2 and first.published == 2
    items = [json.loads(x) for x in out.getvalue().splitlines()]
    assert items[0]["text"] == "Buying more #stocks $AAPL & chill" and items[0]["tickers"] == ["AAPL"]
    assert items[0]["source"] == f"mastodon:127.0.0.1:{server.server.server_address[1]}#stocks"
    assert items[0]["source_type"] == "social" and items[0]["author"] == "alice@mastodon.example"
    assert items[0]["published_at"] == "2024-03-04T14:43:00.000Z"
    assert items[0]["url"] == "https://mastodon.example/@alice/103"

    second = src.poll(pipe)  # min_id=103 -> full page -> follow rel="prev" (min_id=105)
    queries = [urlsplit(p).query for p, _ in server.requests]
    assert "min_id=103" in queries[1] and "min_id=105" in queries[2]
    assert second.fetched == 4 and second.published == 1  # empty, boost, German skipped
    assert 80 <= (second.wait_s or 0) <= 91  # X-RateLimit-Remaining: 0 -> wait until the reset
    jpm = json.loads(out.getvalue().splitlines()[-1])
    assert jpm["title"] == "markets" and jpm["tickers"] == ["JPM"]
    assert jpm["text"] == "#stocks Rates up, (NYSE: JPM) down"
    assert pipe.dedup.get_cursor(f"mastodon-min-id:{src.url}") == "107"
    assert pipe.metrics.skipped.labels(src.name, "empty_text")._value.get() == 1
    assert pipe.metrics.skipped.labels(src.name, "language")._value.get() == 1
    third = src.poll(pipe)
    assert third.fetched == 0 and "min_id=107" in urlsplit(server.requests[-1][0]).query


def test_mastodon_error_body_is_an_error(server, tmp_path) -> None:
    server.routes["/api/v1/timelines/tag/x"] = lambda req: (
        200,
        {"Content-Type": "application/json"},
        b'{"error": "Record not found"}',
    )
    pipe, _ = _pipeline(tmp_path)
    with pytest.raises(FetchError) as exc:
        MastodonTagSource(server.base, "x", _fetcher()).poll(pipe)
    assert exc.value.kind == "bad_content"
    assert parse_link_header('<https://a/x?max_id=1>; rel="next", <https://a/x?min_id=9>; rel="prev"') == {
        "next": "https://a/x?max_id=1",
        "prev": "https://a/x?min_id=9",
    }


def _post(n: int, **over) -> dict:
    """A Reddit Listing child of kind t3 (link/self post)."""
    d = {
        "id": f"p{n}",
        "name": f"t3_p{n}",
        "title": f"Post {n} about $NVDA",
        "selftext": f"Body of post {n}",
        "permalink": f"/r/stocks/comments/p{n}/post_{n}/",
        "url": f"https://www.reddit.com/r/stocks/comments/p{n}/",
        "created_utc": 1709560000.0 + n * 60,
        "author": f"user{n}",
        "subreddit": "stocks",
        "over_18": False,
        "stickied": False,
        "score": 10,
        "num_comments": 2,
        "is_self": True,
    }
    d.update(over)
    return {"kind": "t3", "data": d}


def test_reddit_after_paging_stops_at_seen_and_honours_ratelimit(server, tmp_path) -> None:
    pages = {
        None: ([_post(5), _post(4, selftext="", is_self=False, url="https://news.example.com/x")], "t3_p4"),
        "t3_p4": ([_post(3), _post(2)], "t3_p2"),
    }

    def listing(req):
        q = parse_qs(urlsplit(req.path).query)
        assert q["limit"] == ["2"] and q["raw_json"] == ["1"]
        children, after = pages[q.get("after", [None])[0]]
        body = {
            "kind": "Listing",
            "data": {"after": after, "dist": len(children), "modhash": "", "before": None, "children": children},
        }
        return (
            200,
            {
                "Content-Type": "application/json",
                "X-Ratelimit-Used": "1",
                "X-Ratelimit-Remaining": "99.0",
                "X-Ratelimit-Reset": "420",
            },
            json.dumps(body).encode(),
        )

    server.routes["/r/stocks/new.json"] = listing
    pipe, out = _pipeline(tmp_path)
    src = RedditSubredditSource("r/stocks", _fetcher(), base_url=server.base, limit=2)
    first = src.poll(pipe)
    assert first.fetched == 2 and first.published == 2 and len(server.requests) == 1  # one page on first run
    items = [json.loads(x) for x in out.getvalue().splitlines()]
    assert items[0]["text"] == "Body of post 5" and items[0]["title"] == "Post 5 about $NVDA"
    assert items[0]["url"] == "https://www.reddit.com/r/stocks/comments/p5/post_5/"
    assert items[0]["tickers"] == ["NVDA"] and items[0]["source"] == "reddit:r/stocks"
    assert items[0]["published_at"] == "2024-03-04T13:51:40.000Z"
    assert items[1]["text"] == "Post 4 about $NVDA"  # link post: the title is the text

    # new posts arrive; the newest page holds two new ones, the next page reaches what we saw
    pages[None] = ([_post(8, over_18=True), _post(7, selftext="[removed]")], "t3_p7")
    pages["t3_p7"] = ([_post(6), _post(5)], "t3_p5")

    def limited(req):
        status, headers, body = listing(req)
        headers.update({"X-Ratelimit-Remaining": "0.0", "X-Ratelimit-Reset": "42"})
        return status, headers, body

    server.routes["/r/stocks/new.json"] = limited
    second = src.poll(pipe)
    assert second.wait_s == 42
    # rate limit exhausted after page one: stop paging, publish what we have, come back after the reset
    assert len(server.requests) == 2 and second.fetched == 2 and second.published == 1  # p8 is NSFW
    assert json.loads(out.getvalue().splitlines()[-1])["text"] == "Post 7 about $NVDA"

    server.routes["/r/stocks/new.json"] = listing
    third = src.poll(pipe)  # cursor still p5 (the last poll was cut short): p8, p7 again (duplicates), p6 new
    assert third.fetched == 3 and third.published == 1
    assert pipe.metrics.duplicates.labels(src.name)._value.get() == 1  # p7 (p8 is skipped as NSFW again)
    assert json.loads(out.getvalue().splitlines()[-1])["title"] == "Post 6 about $NVDA"


def test_social_cli_dry_run_once(server, tmp_path, capsys, monkeypatch) -> None:
    from finsent.cli import main

    server.routes["/api/v1/timelines/tag/markets"] = lambda req: (
        200,
        {"Content-Type": "application/json"},
        json.dumps([_status(1, "<p>Hello $SPY</p>")]).encode(),
    )
    server.routes["/r/investing/new.json"] = lambda req: (429, {"Retry-After": "30"}, b"Too Many Requests")
    monkeypatch.setenv("FINSENT_INGEST_STATE_DIR", str(tmp_path))
    assert main(["ingest", "mastodon", "markets", "--instance", server.base, "--once", "--dry-run"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[0]["text"] == "Hello $SPY" and lines[-1]["produced"] == 1
    t0 = time.monotonic()
    assert main(["ingest", "reddit", "investing", "--base-url", server.base, "--once", "--dry-run"]) == 1
    assert time.monotonic() - t0 < 10  # a 429 fails this run fast; the long-running poller backs off
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["sources_failed"] == 1


def _bsky_post(n: int, text: str, created: str, indexed: str | None = None) -> dict:
    """An app.bsky.feed.defs#postView as searchPosts returns it."""
    return {
        "uri": f"at://did:plc:abc{n}/app.bsky.feed.post/3kpost{n}",
        "cid": f"bafyrei{n}",
        "author": {
            "did": f"did:plc:abc{n}",
            "handle": f"user{n}.bsky.social",
            "displayName": f"User {n}",
            "labels": [],
        },
        "record": {"$type": "app.bsky.feed.post", "text": text, "createdAt": created, "langs": ["en"]},
        "replyCount": 0,
        "repostCount": 0,
        "likeCount": 1,
        "quoteCount": 0,
        "indexedAt": indexed or created,
        "labels": [],
    }


def test_bluesky_search_since_and_page_cursors(server, tmp_path) -> None:
    from finsent.ingest.social.bluesky import BlueskySearchSource

    calls: list[dict] = []

    def search(req):
        q = {k: v[0] for k, v in parse_qs(urlsplit(req.path).query).items()}
        calls.append(q)
        assert q["q"] == "$NVDA" and q["sort"] == "latest" and req.headers["Authorization"] == "Bearer jwt"
        if "since" not in q:
            body = {
                "cursor": "c1",
                "hitsTotal": 100,
                "posts": [
                    _bsky_post(2, "$NVDA to the moon", "2024-03-04T10:00:02Z"),
                    _bsky_post(1, "Selling $NVDA", "2024-03-04T10:00:01Z"),
                ],
            }
        elif q.get("cursor") is None:
            assert q["since"] == "2024-03-04T10:00:02.000Z"
            body = {
                "cursor": "c2",
                "posts": [
                    _bsky_post(4, "future-dated $NVDA", "2030-01-01T00:00:00Z", "2024-03-04T10:00:04Z"),
                    _bsky_post(3, "", "2024-03-04T10:00:03Z"),
                ],
            }
        else:
            assert q["cursor"] == "c2"
            body = {"posts": [_bsky_post(2, "$NVDA to the moon", "2024-03-04T10:00:02Z")]}  # since is inclusive
        return 200, {"Content-Type": "application/json", "RateLimit-Remaining": "2999"}, json.dumps(body).encode()

    server.routes["/xrpc/app.bsky.feed.searchPosts"] = search
    pipe, out = _pipeline(tmp_path)
    src = BlueskySearchSource("$NVDA", _fetcher(), token="jwt", base_url=server.base, limit=2)
    assert src.poll(pipe).published == 2 and len(calls) == 1  # first run: newest page only
    first = json.loads(out.getvalue().splitlines()[0])
    assert first["url"] == "https://bsky.app/profile/user2.bsky.social/post/3kpost2"
    assert first["tickers"] == ["NVDA"] and first["source"] == "bluesky:$NVDA" and first["source_type"] == "social"
    second = src.poll(pipe)
    assert second.fetched == 3 and second.published == 1  # empty text skipped, post 2 a duplicate
    # the cursor follows indexedAt for the future-dated post, never 2030
    assert pipe.dedup.get_cursor(f"bluesky-since:{src.url}?q=$NVDA") == "2024-03-04T10:00:04.000Z"
