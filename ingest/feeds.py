"""RSS 2.0, RSS 1.0 (RDF) and Atom feeds: fetched by :mod:`finsent.ingest.fetch`, parsed by feedparser.

We fetch the bytes ourselves (conditional GET, deadline, size limit, Retry-After) and hand them
to feedparser together with the response headers, so feedparser applies the HTTP charset and
the XML declaration exactly as the feed declared them (Latin-1 feeds included).

Decisions:
* an entry with a title but no summary/content uses its title as the text (headline-only feeds
  are common and headlines are what financial sentiment models are trained on); an entry with
  neither is skipped and counted as ``empty_text``;
* a response feedparser cannot recognise as a feed (HTML error page, JSON, garbage) is an error
  of kind ``not_a_feed``; a malformed feed from which entries were still recovered is used and
  counted as a ``malformed`` error so the operator sees it;
* ETag/Last-Modified are remembered only after the entries were published, so a crash never
  turns into a 304 that hides unpublished items.
"""

from __future__ import annotations

import json
import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlsplit

import feedparser

from finsent.ingest.fetch import Fetcher, FetchError
from finsent.ingest.metrics import unparsed_date_hook
from finsent.ingest.pipeline import Pipeline
from finsent.ingest.poller import PollOutcome

log = logging.getLogger(__name__)

ACCEPT = (
    "application/rss+xml, application/atom+xml, application/rdf+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.1"
)


def feed_source_name(url: str) -> str:
    host = (urlsplit(url).hostname or "unknown").lower()
    return f"rss:{host}"


def load_feed_list(path: str | Path) -> list[tuple[str, float | None]]:
    """Feed URLs (and optional per-feed interval) from an OPML file or a plain list.

    Plain list: one ``URL [interval_seconds]`` per line, ``#`` comments. OPML: every
    ``<outline xmlUrl=...>`` (an optional ``interval`` attribute is honoured).
    """
    p = Path(path)
    text = p.read_text(encoding="utf-8-sig")
    feeds: list[tuple[str, float | None]] = []
    if text.lstrip().startswith("<"):
        try:
            root = ET.fromstring(text)
        except ET.ParseError as exc:
            raise ValueError(f"{p}: not valid OPML: {exc}") from None
        for outline in root.iter("outline"):
            url = outline.get("xmlUrl") or outline.get("xmlurl")
            if url:
                iv = outline.get("interval")
                feeds.append((url.strip(), float(iv) if iv and re.fullmatch(r"\d+(\.\d+)?", iv) else None))
        return feeds
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if not parts[0].startswith(("http://", "https://")):
            raise ValueError(f"{p}:{n}: expected 'URL [interval_seconds]', got {line!r}")
        interval = None
        if len(parts) > 1:
            try:
                interval = float(parts[1])
            except ValueError:
                raise ValueError(f"{p}:{n}: interval must be seconds, got {parts[1]!r}") from None
        feeds.append((parts[0], interval))
    return feeds


class FeedSource:
    """One feed URL polled with conditional GET; entries become RawItems (source_type=news)."""

    def __init__(self, url: str, fetcher: Fetcher, *, interval_s: float = 300.0, remember_validators: bool = True):
        self.url = url
        self.fetcher = fetcher
        self.interval_s = interval_s
        self.name = feed_source_name(url)
        self.remember_validators = remember_validators
        self.etag: str | None = None
        self.last_modified: str | None = None
        self._loaded = False

    def _cursor_key(self) -> str:
        return f"http-validators:{self.url}"

    def _load_validators(self, pipeline: Pipeline) -> None:
        if self._loaded or not self.remember_validators:
            return
        self._loaded = True
        raw = pipeline.dedup.get_cursor(self._cursor_key())
        if raw:
            data = json.loads(raw)
            self.etag, self.last_modified = data.get("etag"), data.get("last_modified")

    def parse(self, body: bytes, headers: dict[str, str], final_url: str) -> feedparser.FeedParserDict:
        parsed = feedparser.parse(
            body,
            response_headers={**headers, "content-location": final_url},
            sanitize_html=False,  # we strip all HTML ourselves
            resolve_relative_uris=True,
        )
        if not parsed.get("version") and not parsed.entries:
            why = parsed.get("bozo_exception")
            raise FetchError("not_a_feed", f"{self.url} is not an RSS/Atom feed ({why or 'no feed elements'})")
        return parsed

    def poll(self, pipeline: Pipeline) -> PollOutcome:
        self._load_validators(pipeline)
        res = self.fetcher.get(self.url, etag=self.etag, last_modified=self.last_modified, accept=ACCEPT)
        if res.not_modified:
            log.debug("%s: 304 not modified", self.url)
            return PollOutcome()
        parsed = self.parse(res.body, res.headers, res.url)
        if parsed.get("bozo") and not isinstance(parsed.get("bozo_exception"), feedparser.CharacterEncodingOverride):
            pipeline.metrics.errors.labels(self.name, "malformed").inc()
            log.warning(
                "%s: malformed feed (%s); %d entries recovered",
                self.url,
                parsed.get("bozo_exception"),
                len(parsed.entries),
            )
        entries = []
        unparsed = unparsed_date_hook(pipeline.metrics, self.name)
        for e in parsed.entries:
            body = ""
            if e.get("content"):
                body = " ".join(c.get("value", "") for c in e["content"] if c.get("value"))
            body = body or e.get("summary") or e.get("description") or ""
            title = e.get("title")
            entry = pipeline.normalize(
                self.name,
                source=self.name,
                source_type="news",
                text=body if body.strip() else title,
                title=title,
                url=e.get("link"),
                author=e.get("author"),
                # the feed's own text first, read by the one rule (normalize.read_published); feedparser's
                # struct_time only when there is none: feedparser rolls 2024-02-30 over to March 1
                published=e.get("published")
                or e.get("updated")
                or e.get("published_parsed")
                or e.get("updated_parsed"),
                on_unparsed_date=unparsed,
                guid=e.get("id") or e.get("guid"),
            )
            if entry is not None:
                entries.append(entry)
        pipeline.count_fetched(self.name, len(parsed.entries))
        result = pipeline.submit(self.name, entries)
        # validators only now: the entries behind them are published (or known duplicates)
        self.etag, self.last_modified = res.etag, res.last_modified
        if self.remember_validators and (self.etag or self.last_modified):
            pipeline.dedup.set_cursor(
                self._cursor_key(), json.dumps({"etag": self.etag, "last_modified": self.last_modified})
            )
        return PollOutcome(fetched=len(parsed.entries), published=len(result.published))
