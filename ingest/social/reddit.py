"""Reddit subreddit listings: ``GET /r/<sub>/new.json`` (Listing of ``t3`` posts).

Paging: every poll reads the newest page and follows ``data.after`` (older posts) until it
reaches the newest post seen last time (by fullname or ``created_utc``) or ``max_pages``; the
first poll reads one page only. We page backwards from "now" rather than asking
``before=<last seen>`` because a deleted post makes ``before`` return nothing forever.
Without a token the public ``www.reddit.com`` JSON is used; with ``settings.ingest.reddit_token``
(an OAuth bearer token) ``oauth.reddit.com``. ``X-Ratelimit-Remaining`` / ``X-Ratelimit-Reset``
(seconds) and 429 ``Retry-After`` set the next poll time; ``raw_json=1`` avoids HTML-escaped text.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote, urlencode

from finsent.ingest.fetch import Fetcher, FetchError
from finsent.ingest.metrics import unparsed_date_hook
from finsent.ingest.pipeline import Pipeline
from finsent.ingest.poller import PollOutcome
from finsent.ingest.social.ratelimit import reddit_wait

log = logging.getLogger(__name__)

PUBLIC_BASE = "https://www.reddit.com"
OAUTH_BASE = "https://oauth.reddit.com"


def _created(post: dict[str, Any]) -> float:
    """A post's ``created_utc`` as epoch seconds for the cursor; 0 when it is not a number (the item itself is
    kept with an unreadable date, :func:`finsent.ingest.normalize.read_published`; a bad field must not stop the
    poll)."""
    try:
        value = float(post.get("created_utc") or 0)
    except (TypeError, ValueError):
        return 0.0
    return value if value == value and abs(value) != float("inf") else 0.0


class RedditSubredditSource:
    def __init__(
        self,
        subreddit: str,
        fetcher: Fetcher,
        *,
        token: str | None = None,
        base_url: str | None = None,
        interval_s: float = 120.0,
        limit: int = 100,
        max_pages: int = 5,
        include_nsfw: bool = False,
    ) -> None:
        self.sub = subreddit.strip().removeprefix("r/").removeprefix("/r/").strip("/")
        self.fetcher = fetcher
        self.token = token
        self.base = (base_url or (OAUTH_BASE if token else PUBLIC_BASE)).rstrip("/")
        self.interval_s = interval_s
        self.limit = max(1, min(limit, 100))
        self.max_pages = max_pages
        self.include_nsfw = include_nsfw
        self.url = f"{self.base}/r/{quote(self.sub)}/new.json"
        self.name = f"reddit:r/{self.sub}"

    def _page(self, after: str | None) -> tuple[list[dict[str, Any]], str | None, dict[str, str]]:
        params: dict[str, Any] = {"limit": self.limit, "raw_json": 1}
        if after:
            params["after"] = after
        url = f"{self.url}?{urlencode(params)}"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        res = self.fetcher.get(url, accept="application/json", headers=headers)
        try:
            data = json.loads(res.body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise FetchError("bad_content", f"{url}: response is not JSON") from None
        if not isinstance(data, dict) or data.get("kind") != "Listing" or not isinstance(data.get("data"), dict):
            raise FetchError("bad_content", f"{url}: expected a Listing")
        listing = data["data"]
        posts = [
            c["data"]
            for c in listing.get("children") or []
            if isinstance(c, dict) and c.get("kind") == "t3" and isinstance(c.get("data"), dict)
        ]
        return posts, listing.get("after"), res.headers

    def poll(self, pipeline: Pipeline) -> PollOutcome:
        cursor_key = f"reddit-newest:{self.url}"
        raw = pipeline.dedup.get_cursor(cursor_key)
        seen_name, seen_created = json.loads(raw) if raw else (None, None)
        posts: list[dict[str, Any]] = []
        after: str | None = None
        wait: float | None = None
        # complete = we read everything newer than the cursor; only then may the cursor move,
        # otherwise a poll cut short by the rate limit would leave a gap that is never read
        complete = False
        for _ in range(self.max_pages):
            page, after, headers = self._page(after)
            wait = reddit_wait(headers)
            for p in page:
                if p.get("name") == seen_name or (seen_created is not None and _created(p) < seen_created):
                    complete = True
                    break
                posts.append(p)
            if complete or not after or not raw:
                complete = True
                break
            if wait:
                break
        else:
            complete = True
            log.warning(
                "%s: more than %d pages of new posts since the last poll; older ones are skipped",
                self.name,
                self.max_pages,
            )
        entries = []
        unparsed = unparsed_date_hook(pipeline.metrics, self.name)
        for p in posts:
            if p.get("over_18") and not self.include_nsfw:
                pipeline.count_skipped(self.name, "nsfw")
                continue
            selftext = p.get("selftext") or ""
            permalink = p.get("permalink")
            entry = pipeline.normalize(
                self.name,
                source=self.name,
                source_type="social",
                text=selftext if selftext.strip() and selftext not in ("[removed]", "[deleted]") else p.get("title"),
                title=p.get("title"),
                url=f"https://www.reddit.com{permalink}" if permalink else None,
                author=p.get("author"),
                published=p.get("created_utc"),
                guid=p.get("name"),
                on_unparsed_date=unparsed,
            )
            if entry is not None:
                entries.append(entry)
        pipeline.count_fetched(self.name, len(posts))
        result = pipeline.submit(self.name, entries)
        if posts and complete:
            newest = max(posts, key=_created)
            pipeline.dedup.set_cursor(cursor_key, json.dumps([newest.get("name"), _created(newest)]))
        return PollOutcome(fetched=len(posts), published=len(result.published), wait_s=wait)
