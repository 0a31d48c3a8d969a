"""Mastodon hashtag timelines: ``GET /api/v1/timelines/tag/:hashtag`` (public, no auth needed).

Paging forward: the first poll reads only the newest page (no backfill of history); later polls
ask for ``min_id=<newest id seen>`` -- statuses immediately newer than it -- and follow the
``Link: <...>; rel="prev"`` header while pages come back full. The cursor is saved only after
the statuses were published. ``X-RateLimit-Remaining``/``X-RateLimit-Reset`` (ISO time) and
429 ``Retry-After`` set the next poll time. Status ``content`` is HTML and goes through the
shared normaliser; ``spoiler_text`` (content warning) becomes the title.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from finsent.ingest.fetch import Fetcher, FetchError
from finsent.ingest.metrics import unparsed_date_hook
from finsent.ingest.pipeline import Pipeline
from finsent.ingest.poller import PollOutcome
from finsent.ingest.social.ratelimit import mastodon_wait

_LINK_RE = re.compile(r'<([^>]+)>\s*;\s*rel="?([a-zA-Z]+)"?')


def parse_link_header(value: str | None) -> dict[str, str]:
    """RFC 8288 ``Link`` header -> {rel: url} (what Mastodon uses for pagination)."""
    return {rel: url for url, rel in _LINK_RE.findall(value or "")}


def _id_key(status_id: str) -> tuple[int, str]:
    return (len(status_id), status_id)  # snowflake ids: numeric strings, compare by length then text


class MastodonTagSource:
    def __init__(
        self,
        instance: str,
        tag: str,
        fetcher: Fetcher,
        *,
        token: str | None = None,
        interval_s: float = 60.0,
        limit: int = 40,
        max_pages: int = 5,
        languages: tuple[str, ...] = (),
    ) -> None:
        base = instance.rstrip("/")
        if not base.startswith(("http://", "https://")):
            base = f"https://{base}"
        self.base = base
        self.tag = tag.lstrip("#")
        self.fetcher = fetcher
        self.token = token
        self.interval_s = interval_s
        self.limit = max(1, min(limit, 40))  # the API's maximum for this endpoint
        self.max_pages = max_pages
        self.languages = tuple(languages)
        self.host = (urlsplit(base).netloc or base).lower()
        self.url = f"{base}/api/v1/timelines/tag/{quote(self.tag, safe='')}"
        self.name = f"mastodon:{self.host}#{self.tag}"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _page(self, url: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
        res = self.fetcher.get(url, accept="application/json", headers=self._headers())
        try:
            data = json.loads(res.body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise FetchError("bad_content", f"{url}: response is not JSON") from None
        if not isinstance(data, list):
            raise FetchError("bad_content", f"{url}: expected a JSON array of statuses, got {type(data).__name__}")
        return [s for s in data if isinstance(s, dict) and s.get("id")], res.headers

    def _follow(self, link: str) -> str | None:
        """A pagination link we are willing to follow: same host, with our page size."""
        parts = urlsplit(link)
        if parts.netloc.lower() != self.host or parts.scheme not in ("http", "https"):
            return None
        query = dict(parse_qsl(parts.query))
        query.setdefault("limit", str(self.limit))
        return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))

    def poll(self, pipeline: Pipeline) -> PollOutcome:
        cursor_key = f"mastodon-min-id:{self.url}"
        cursor = pipeline.dedup.get_cursor(cursor_key)
        params: dict[str, Any] = {"limit": self.limit}
        if cursor:
            params["min_id"] = cursor
        url: str | None = f"{self.url}?{urlencode(params)}"
        statuses: list[dict[str, Any]] = []
        wait: float | None = None
        pages = 0
        while url and pages < self.max_pages:
            page, headers = self._page(url)
            pages += 1
            wait = mastodon_wait(headers)
            statuses.extend(page)
            if not cursor or len(page) < self.limit or wait:
                break
            prev = parse_link_header(headers.get("link")).get("prev")
            url = self._follow(prev) if prev else None
        entries = []
        unparsed = unparsed_date_hook(pipeline.metrics, self.name)
        for s in statuses:
            if s.get("reblog"):
                continue  # boosts repeat someone else's status; the original carries the text
            if self.languages and s.get("language") and s["language"] not in self.languages:
                pipeline.count_skipped(self.name, "language")
                continue
            account = s.get("account") or {}
            entry = pipeline.normalize(
                self.name,
                source=self.name,
                source_type="social",
                text=s.get("content"),
                title=s.get("spoiler_text") or None,
                url=s.get("url") or s.get("uri"),
                author=account.get("acct") or account.get("username"),
                published=s.get("created_at"),
                guid=s.get("uri") or s.get("id"),
                on_unparsed_date=unparsed,
            )
            if entry is not None:
                entries.append(entry)
        pipeline.count_fetched(self.name, len(statuses))
        result = pipeline.submit(self.name, entries)
        if statuses:
            newest = max((str(s["id"]) for s in statuses), key=_id_key)
            if not cursor or _id_key(newest) > _id_key(cursor):
                pipeline.dedup.set_cursor(cursor_key, newest)
        return PollOutcome(fetched=len(statuses), published=len(result.published), wait_s=wait)
