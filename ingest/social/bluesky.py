"""Bluesky post search: ``GET /xrpc/app.bsky.feed.searchPosts`` (AT Protocol lexicon).

Parameters used: ``q`` (e.g. ``$AAPL`` or ``#stocks``), ``sort=latest``, ``since`` (ISO time:
only posts newer than the newest one we published), ``limit`` (<= 100) and the opaque
``cursor`` for the next (older) page. Output: ``{"cursor"?, "hitsTotal"?, "posts": [PostView]}``
where ``PostView.record`` is an ``app.bsky.feed.post`` (``text``, ``createdAt``, ``langs``).

The public AppView (``https://public.api.bsky.app``) may refuse unauthenticated search; with
``FINSENT_BLUESKY_TOKEN`` (an access JWT) and ``--base-url`` of your PDS the request carries
``Authorization: Bearer``. The ``since`` cursor moves only after a complete read was published.
Rate limits: ``RateLimit-Remaining`` / ``RateLimit-Reset`` (epoch seconds) and 429 ``Retry-After``.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode

from finsent.core.events import MAX_FUTURE_SKEW, format_time
from finsent.ingest.fetch import Fetcher, FetchError
from finsent.ingest.metrics import unparsed_date_hook
from finsent.ingest.normalize import to_utc
from finsent.ingest.pipeline import Pipeline
from finsent.ingest.poller import PollOutcome

PUBLIC_BASE = "https://public.api.bsky.app"


def bluesky_wait(headers: dict[str, str], now: float | None = None) -> float | None:
    try:
        remaining = float(headers.get("ratelimit-remaining", "inf"))
        if remaining > 1:
            return None
        reset = float(headers["ratelimit-reset"])
    except (KeyError, ValueError):
        return None
    now = time.time() if now is None else now
    return max(0.0, reset - now)


def _sort_at(post: dict[str, Any]):
    """What ``since`` compares against: the earlier of createdAt and indexedAt (a post dated in the
    future must not push our cursor into the future and hide everything until then)."""
    times = [t for t in (to_utc(post["record"].get("createdAt")), to_utc(post.get("indexedAt"))) if t is not None]
    return min(times) if times else None


def _published(post: dict[str, Any]) -> Any:
    """The post's publication time for :func:`~finsent.ingest.normalize.make_item`: ``createdAt`` (the client's
    clock), unless it is ahead of the server's ``indexedAt`` by more than the allowed skew -- then ``indexedAt``
    (a post is never published after it was indexed; refusing it as ``bad_time`` would lose a post for a client's
    wrong clock). An unreadable ``createdAt`` is passed as it is (kept and counted, the ingesters' one rule)."""
    created = post["record"].get("createdAt")
    if created is None or (isinstance(created, str) and not created.strip()):
        created = post.get("indexedAt")  # none: the server's time for the post
    indexed = to_utc(post.get("indexedAt"))
    at = to_utc(created)
    if at is not None and indexed is not None and at > indexed + MAX_FUTURE_SKEW:
        return post.get("indexedAt")
    return created


def post_url(uri: str, handle: str | None) -> str | None:
    """``at://did/app.bsky.feed.post/rkey`` -> ``https://bsky.app/profile/<handle or did>/post/<rkey>``."""
    parts = uri.removeprefix("at://").split("/")
    if len(parts) != 3 or parts[1] != "app.bsky.feed.post":
        return None
    return f"https://bsky.app/profile/{handle or parts[0]}/post/{parts[2]}"


class BlueskySearchSource:
    def __init__(
        self,
        query: str,
        fetcher: Fetcher,
        *,
        token: str | None = None,
        base_url: str | None = None,
        interval_s: float = 120.0,
        limit: int = 100,
        max_pages: int = 5,
        language: str | None = None,
    ) -> None:
        self.query = query
        self.fetcher = fetcher
        self.token = token
        self.base = (base_url or PUBLIC_BASE).rstrip("/")
        self.interval_s = interval_s
        self.limit = max(1, min(limit, 100))
        self.max_pages = max_pages
        self.language = language
        self.url = f"{self.base}/xrpc/app.bsky.feed.searchPosts"
        self.name = f"bluesky:{query}"

    def _page(self, since: str | None, cursor: str | None) -> tuple[list[dict[str, Any]], str | None, dict[str, str]]:
        params: dict[str, Any] = {"q": self.query, "sort": "latest", "limit": self.limit}
        if since:
            params["since"] = since
        if self.language:
            params["lang"] = self.language
        if cursor:
            params["cursor"] = cursor
        url = f"{self.url}?{urlencode(params)}"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        res = self.fetcher.get(url, accept="application/json", headers=headers)
        try:
            data = json.loads(res.body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise FetchError("bad_content", f"{self.url}: response is not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("posts"), list):
            raise FetchError("bad_content", f"{self.url}: expected {{'posts': [...]}}, got {str(data)[:100]}")
        posts = [p for p in data["posts"] if isinstance(p, dict) and isinstance(p.get("record"), dict)]
        next_cursor = data.get("cursor") if isinstance(data.get("cursor"), str) else None
        return posts, next_cursor, res.headers

    def poll(self, pipeline: Pipeline) -> PollOutcome:
        cursor_key = f"bluesky-since:{self.url}?q={self.query}"
        since = pipeline.dedup.get_cursor(cursor_key)
        posts: list[dict[str, Any]] = []
        cursor: str | None = None
        wait: float | None = None
        complete = False
        for _ in range(self.max_pages):
            page, cursor, headers = self._page(since, cursor)
            wait = bluesky_wait(headers)
            posts.extend(page)
            if not cursor or not page or not since:
                complete = True  # everything newer than `since` read (or first run: newest page only)
                break
            if wait:
                break
        else:
            complete = True  # more than max_pages behind: skip the rest rather than never catching up
        entries = []
        unparsed = unparsed_date_hook(pipeline.metrics, self.name)
        for p in posts:
            record = p["record"]
            author = p.get("author") or {}
            entry = pipeline.normalize(
                self.name,
                source=self.name,
                source_type="social",
                text=record.get("text"),
                url=post_url(str(p.get("uri", "")), author.get("handle")),
                author=author.get("handle") or author.get("did"),
                published=_published(p),
                guid=p.get("uri"),
                on_unparsed_date=unparsed,
            )
            if entry is not None:
                entries.append(entry)
        pipeline.count_fetched(self.name, len(posts))
        result = pipeline.submit(self.name, entries)
        times = [t for t in (_sort_at(p) for p in posts) if t is not None]
        if complete and times:
            pipeline.dedup.set_cursor(cursor_key, format_time(max(times)) or "")
        return PollOutcome(fetched=len(posts), published=len(result.published), wait_s=wait)
