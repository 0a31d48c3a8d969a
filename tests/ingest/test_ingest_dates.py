"""One rule for publication times in every ingester (issue 26), fuzzed: feeds, push, replay, Mastodon, Reddit, Bluesky.

The rule (:func:`finsent.ingest.normalize.read_published`): a readable time is kept; an unreadable one (garbage,
2024-02-30, before 1970 or after 2106) keeps the item with ``published_at`` null, counted in
``finsent_ingest_unparsed_dates_total{source}``; one more than 5 minutes in the future is refused ``bad_time``.
Each example sends the same date strings through all six ingesters, each over its real transport (a local
HTTP server speaking the source's format, the push endpoint, a replay file), and checks that they agree, that
known times come out exact, that future ones are refused, and that the counter counts exactly the nulls.
"""

from __future__ import annotations

import email.utils
import io
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from finsent.core.events import format_time, utcnow
from finsent.ingest.dedup import DedupStore
from finsent.ingest.fetch import Fetcher
from finsent.ingest.metrics import IngestMetrics
from finsent.ingest.pipeline import Pipeline
from tests.ingest.test_ingest_http import TOKEN, AppThread
from tests.ingest.test_ingest_social import _bsky_post, _post, _status
from tests.ingest.test_ingest_support import LocalHTTP

UTC = timezone.utc  # noqa: UP017
REFUSED = "refused"


def _pipeline() -> Pipeline:
    return Pipeline(
        publisher=None, dedup=DedupStore(None), metrics=IngestMetrics(CollectorRegistry()), out=io.StringIO()
    )


def _xml_safe(s: str) -> bool:
    return all(c in "\t\n\r" or 0x20 <= ord(c) <= 0xD7FF or 0xE000 <= ord(c) <= 0xFFFD for c in s)


_when = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2105, 12, 31), timezones=st.just(UTC))
DATES = st.one_of(
    _when.map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000).isoformat().replace("+00:00", "Z")),
    _when.map(lambda d: email.utils.format_datetime(d.replace(microsecond=0), usegmt=True)),
    st.from_regex(r"[12]\d{3}-[01]?\d-[0-3]?\d(T[0-2]\d:[0-6]\d(:[0-6]\d)?Z?)?", fullmatch=True),
    st.integers(min_value=0, max_value=2**33).map(str),
    st.text(max_size=25).filter(_xml_safe),
    st.sampled_from(["", " ", "2024-02-30", "2024-13-01", "25:00", "yesterday", "1969-12-31T23:59:59Z", "NaN"]),
)


def _outcomes(pipe: Pipeline, texts: list[str]) -> list[Any]:
    """Per item (by its text): its published_at (None: kept without a time), or REFUSED."""
    out = pipe.out.getvalue() if isinstance(pipe.out, io.StringIO) else ""
    got = {json.loads(line)["text"]: json.loads(line)["published_at"] for line in out.splitlines()}
    return [got.get(t, REFUSED) for t in texts]


def _counts(pipe: Pipeline, source: str) -> tuple[float, float]:
    reg = pipe.metrics.registry
    unparsed = reg.get_sample_value("finsent_ingest_unparsed_dates_total", {"source": source}) or 0.0
    bad_time = reg.get_sample_value("finsent_ingest_items_skipped_total", {"source": source, "reason": "bad_time"})
    return unparsed, bad_time or 0.0


class Ingesters:
    """The six ingesters, each fed a list of date strings over its real transport."""

    def __init__(self, http: LocalHTTP, push: AppThread, push_pipe: Pipeline, tmp: Path) -> None:
        self.http, self.push, self.push_pipe, self.tmp = http, push, push_pipe, tmp
        self.fetcher = Fetcher(user_agent="finsent-test/1", timeout_s=5, max_bytes=2_000_000)

    def feeds(self, dates: list[str], texts: list[str]) -> tuple[list[Any], tuple[float, float]]:
        from finsent.ingest.feeds import FeedSource

        items = "".join(
            f"<item><title>{t}</title><description>{t}</description><guid>{t}</guid><pubDate>{escape(d)}</pubDate>"
            "</item>"
            for d, t in zip(dates, texts, strict=True)
        )
        rss = (
            f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>t</title>{items}</channel></rss>'
        )
        self.http.routes["/feed.xml"] = lambda req: (200, {"Content-Type": "application/rss+xml"}, rss.encode())
        pipe, src = _pipeline(), FeedSource(self.http.base + "/feed.xml", self.fetcher, remember_validators=False)
        src.poll(pipe)
        return _outcomes(pipe, texts), _counts(pipe, src.name)

    def push_endpoint(self, dates: list[str], texts: list[str]) -> tuple[list[Any], tuple[float, float]]:
        before = _counts(self.push_pipe, "http")
        body = json.dumps([{"text": t, "id": t, "published_at": d} for d, t in zip(dates, texts, strict=True)])
        status, res, _ = self.push.request("/v1/items", body.encode())
        assert status in (202, 422), res
        assert {r["reason"] for r in res["rejected"]} <= {"bad_time"}, res
        refused = {r["index"] for r in res["rejected"]}
        warned = {w["index"] for w in res.get("warnings", [])}
        lines = [json.loads(x) for x in Path(self.push_pipe.out.name).read_text().splitlines()]  # type: ignore[union-attr]
        got = {x["text"]: x["published_at"] for x in lines}
        outcomes = [REFUSED if i in refused else got[t] for i, t in enumerate(texts)]
        assert warned == {i for i, o in enumerate(outcomes) if o is None and dates[i].strip()}
        after = _counts(self.push_pipe, "http")
        return outcomes, (after[0] - before[0], after[1] - before[1])

    def replay(self, dates: list[str], texts: list[str]) -> tuple[list[Any], tuple[float, float]]:
        from finsent.ingest.replay import replay

        path = self.tmp / f"{texts[0]}.jsonl"
        path.write_text(
            "".join(json.dumps({"text": t, "published_at": d}) + "\n" for d, t in zip(dates, texts, strict=True))
        )
        pipe = _pipeline()
        stats = replay([path], pipe, progress=False)
        assert {b["reason"] for b in stats.bad_rows} <= {"bad_time"}, stats.bad_rows
        return _outcomes(pipe, texts), _counts(pipe, f"replay:{path.name}")

    def mastodon(self, dates: list[str], texts: list[str]) -> tuple[list[Any], tuple[float, float]]:
        from finsent.ingest.social.mastodon import MastodonTagSource

        statuses = [
            _status(1000 - i, t, created_at=d, uri=f"https://m.example/{t}", url=f"https://m.example/@a/{t}")
            for i, (d, t) in enumerate(zip(dates, texts, strict=True))
        ]
        body = json.dumps(statuses).encode()
        self.http.routes["/api/v1/timelines/tag/stocks"] = lambda req: (200, {"Content-Type": "application/json"}, body)
        pipe, src = _pipeline(), MastodonTagSource(self.http.base, "#stocks", self.fetcher, limit=40)
        src.poll(pipe)
        return _outcomes(pipe, texts), _counts(pipe, src.name)

    def reddit(self, dates: list[str], texts: list[str]) -> tuple[list[Any], tuple[float, float]]:
        from finsent.ingest.social.reddit import RedditSubredditSource

        children = [
            _post(i, name=f"t3_{t}", title=t, selftext=t, created_utc=d, permalink=f"/r/stocks/comments/{t}/")
            for i, (d, t) in enumerate(zip(dates, texts, strict=True))
        ]
        body = json.dumps({"kind": "Listing", "data": {"after": None, "children": children}}).encode()
        self.http.routes["/r/stocks/new.json"] = lambda req: (200, {"Content-Type": "application/json"}, body)
        pipe, src = _pipeline(), RedditSubredditSource("r/stocks", self.fetcher, base_url=self.http.base, limit=40)
        src.poll(pipe)
        return _outcomes(pipe, texts), _counts(pipe, src.name)

    def bluesky(self, dates: list[str], texts: list[str], indexed: str) -> tuple[list[Any], tuple[float, float]]:
        from finsent.ingest.social.bluesky import BlueskySearchSource

        posts = []
        for i, (d, t) in enumerate(zip(dates, texts, strict=True)):
            p = _bsky_post(i, t, d, indexed)
            p["uri"] = f"at://did:plc:{t}/app.bsky.feed.post/{t}"
            posts.append(p)
        body = json.dumps({"posts": posts}).encode()
        self.http.routes["/xrpc/app.bsky.feed.searchPosts"] = lambda req: (
            200,
            {"Content-Type": "application/json"},
            body,
        )
        pipe = _pipeline()
        src = BlueskySearchSource("$NVDA", self.fetcher, token="jwt", base_url=self.http.base, limit=100)
        src.poll(pipe)
        return _outcomes(pipe, texts), _counts(pipe, src.name)


@pytest.fixture(scope="module")
def ingesters(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from finsent.ingest.http_push import create_app

    tmp = tmp_path_factory.mktemp("dates")
    http = LocalHTTP()
    push_pipe = Pipeline(
        publisher=None,
        dedup=DedupStore(None),
        metrics=IngestMetrics(CollectorRegistry()),
        out=open(tmp / "push.jsonl", "w"),  # noqa: SIM115 - closed below
    )
    push = AppThread(create_app(push_pipe, token=TOKEN, max_body_bytes=200_000, max_items=50))
    try:
        yield Ingesters(http, push, push_pipe, tmp)
    finally:
        push.close()
        http.close()
        push_pipe.out.close()  # type: ignore[union-attr]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dates=st.lists(DATES, min_size=1, max_size=12))
def test_every_ingester_applies_the_one_rule_to_any_date_string(ingesters: Ingesters, dates: list[str]) -> None:
    nonce = uuid.uuid4().hex[:10]
    texts = [f"item{i}x{nonce}" for i in range(len(dates))]
    now = utcnow()
    runs = {
        name: getattr(ingesters, name)(dates, texts)
        for name in ("feeds", "push_endpoint", "replay", "mastodon", "reddit")
    }
    reference = runs["replay"][0]
    for name, (outcomes, (unparsed, bad_time)) in runs.items():
        assert outcomes == reference, (name, list(zip(dates, outcomes, reference, strict=True)))
        # the counter counts exactly the items kept without a time although one was sent
        assert unparsed == sum(1 for d, o in zip(dates, outcomes, strict=True) if o is None and d.strip()), name
        assert bad_time == outcomes.count(REFUSED), name
    for d, o in zip(dates, reference, strict=True):
        if o == REFUSED:
            continue
        if o is not None:  # a time was read: never in the future, never outside what the store holds
            at = datetime.fromisoformat(o.replace("Z", "+00:00"))
            assert datetime(1970, 1, 1, tzinfo=UTC) <= at <= now + timedelta(minutes=6), (d, o)
        try:  # a time written as ISO 8601 with Z: kept exactly when past, refused when future
            known = datetime.fromisoformat(d.replace("Z", "+00:00")) if d.endswith("Z") and "T" in d else None
        except ValueError:
            known = None
        if known is not None and known.tzinfo is not None and known.year >= 1971 and known < now:
            assert o == format_time(known), (d, o)
    for d, o in zip(dates, reference, strict=True):
        try:
            known = datetime.fromisoformat(d.replace("Z", "+00:00")) if d.endswith("Z") and "T" in d else None
        except ValueError:
            known = None
        if known is not None and known.tzinfo is not None and known > now + timedelta(minutes=6) and known.year < 2106:
            assert o == REFUSED, (d, o)
    # Bluesky: the same, except that a createdAt ahead of the server's indexedAt is replaced by indexedAt
    # and a missing one falls back to it (the server's own time for the post)
    indexed = format_time(now)  # the server's time for every post: when it was indexed
    outcomes, (unparsed, _) = ingesters.bluesky(dates, texts, indexed)
    want = [indexed if o == REFUSED or not d.strip() else o for d, o in zip(dates, reference, strict=True)]
    assert outcomes == want, list(zip(dates, outcomes, want, strict=True))
    assert unparsed == sum(1 for d, o in zip(dates, outcomes, strict=True) if o is None and d.strip())


def test_the_unparsed_date_warning_is_rate_limited_per_source_and_says_how_many_it_held_back(caplog) -> None:
    import logging

    from finsent.ingest.metrics import UNPARSED_LOG_EVERY_S, unparsed_date_hook

    metrics, now = IngestMetrics(CollectorRegistry()), [0.0]
    source = f"rss:{uuid.uuid4().hex}"
    note = unparsed_date_hook(metrics, source, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="finsent.ingest.metrics"):
        for _ in range(5):
            note("'soon' is not a time")
        now[0] += UNPARSED_LOG_EVERY_S + 1
        note("'later' is not a time")
    warnings = [r.getMessage() for r in caplog.records if source in r.getMessage()]
    assert len(warnings) == 2 and "'soon' is not a time" in warnings[0] and "4 more since" in warnings[1]
    assert metrics.registry.get_sample_value("finsent_ingest_unparsed_dates_total", {"source": source}) == 6
