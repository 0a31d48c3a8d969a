"""A small, strict HTTP GET for feeds and APIs (urllib, run in worker threads).

Why not let feedparser or a library fetch: we must control what a hostile or broken server can
do to us -- a whole-request deadline (not just a per-read socket timeout), a byte limit on the
body *after* decompression (gzip bombs), a bounded number of redirects, conditional GET
(ETag / Last-Modified -> 304), and 429/503 ``Retry-After`` turned into a back-off the poller
honours. Every failure is a :class:`FetchError` whose ``kind`` is a metrics label.
"""

from __future__ import annotations

import email.utils
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import Message
from typing import Any

from finsent.core.errors import FinsentError

MAX_RETRY_AFTER_S = 6 * 3600.0


class FetchError(FinsentError):
    """A failed fetch. ``kind``: timeout, network, too_large, http_4xx, http_5xx, rate_limited, not_a_feed..."""

    def __init__(self, kind: str, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(message, hint="check the URL and the network; the poller retries with backoff")
        self.kind = kind
        self.status = status
        self.retry_after = retry_after


@dataclass
class FetchResult:
    url: str  # after redirects
    status: int  # 200..299 or 304
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names

    @property
    def not_modified(self) -> bool:
        return self.status == 304

    @property
    def etag(self) -> str | None:
        return self.headers.get("etag")

    @property
    def last_modified(self) -> str | None:
        return self.headers.get("last-modified")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, min(float(value), MAX_RETRY_AFTER_S))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)  # noqa: UP017
    now = time.time() if now is None else now
    return max(0.0, min(when.timestamp() - now, MAX_RETRY_AFTER_S))


def _headers(msg: Message | Any) -> dict[str, str]:
    return {k.lower(): v for k, v in msg.items()} if msg is not None else {}


class _LimitedRedirects(urllib.request.HTTPRedirectHandler):
    """At most ``max_redirects`` hops, and only to http(s) (urllib would also follow ftp://)."""

    def __init__(self, max_redirects: int) -> None:
        super().__init__()
        self.max_redirections = max_redirects
        self.max_repeats = 2

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        from urllib.parse import urljoin, urlsplit

        target = urljoin(req.full_url, newurl)
        if urlsplit(target).scheme not in ("http", "https"):
            raise FetchError("redirect", f"{req.full_url} redirects to a non-HTTP URL {target[:100]!r}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class Fetcher:
    """GET with conditional headers, deadline, size limit, gzip and bounded redirects."""

    def __init__(
        self,
        *,
        user_agent: str,
        timeout_s: float = 20.0,
        max_bytes: int = 10_000_000,
        max_redirects: int = 5,
    ) -> None:
        self.user_agent = user_agent
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self._opener = urllib.request.build_opener(_LimitedRedirects(max_redirects))

    @classmethod
    def from_settings(cls, settings) -> Fetcher:
        return cls(
            user_agent=settings.ingest_user_agent,
            timeout_s=settings.ingest_fetch_timeout_s,
            max_bytes=settings.ingest_max_fetch_bytes,
        )

    def get(
        self,
        url: str,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        accept: str = "*/*",
        headers: dict[str, str] | None = None,
    ) -> FetchResult:
        if not url.lower().startswith(("http://", "https://")):
            raise FetchError("bad_url", f"{url!r}: only http:// and https:// URLs are fetched")
        req_headers = {"User-Agent": self.user_agent, "Accept": accept, "Accept-Encoding": "gzip, deflate"}
        if etag:
            req_headers["If-None-Match"] = etag
        if last_modified:
            req_headers["If-Modified-Since"] = last_modified
        req_headers.update(headers or {})
        request = urllib.request.Request(url, headers=req_headers, method="GET")
        deadline = time.monotonic() + self.timeout_s
        try:
            resp = self._opener.open(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            hdrs = _headers(exc.headers)
            exc.close()
            if exc.code == 304:
                return FetchResult(url=exc.url or url, status=304, headers=hdrs)
            if exc.code in (429, 503):
                retry = parse_retry_after(hdrs.get("retry-after"))
                kind = "rate_limited" if exc.code == 429 else "http_5xx"
                raise FetchError(kind, f"HTTP {exc.code} from {url}", status=exc.code, retry_after=retry) from None
            if 300 <= exc.code < 400:
                raise FetchError("redirect", f"HTTP {exc.code} from {url}: too many or bad redirects",
                                 status=exc.code) from None
            kind = "http_5xx" if exc.code >= 500 else "http_4xx"
            raise FetchError(kind, f"HTTP {exc.code} {exc.reason} from {url}", status=exc.code) from None
        except FetchError:
            raise
        except TimeoutError:
            raise FetchError("timeout", f"timed out after {self.timeout_s:.0f}s connecting to {url}") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise FetchError("timeout", f"timed out connecting to {url}") from None
            raise FetchError("network", f"cannot fetch {url}: {reason}") from None
        except (ValueError, OSError) as exc:  # bad URL, connection reset...
            raise FetchError("network", f"cannot fetch {url}: {exc}") from None
        with resp:
            hdrs = _headers(resp.headers)
            body = self._read(resp, url, hdrs, deadline)
            return FetchResult(url=resp.geturl() or url, status=resp.status, body=body, headers=hdrs)

    def _read(self, resp: Any, url: str, hdrs: dict[str, str], deadline: float) -> bytes:
        length = hdrs.get("content-length")
        if length and length.isdigit() and int(length) > self.max_bytes and not hdrs.get("content-encoding"):
            raise FetchError("too_large", f"{url}: Content-Length {length} > limit {self.max_bytes} bytes")
        encoding = hdrs.get("content-encoding", "").lower().strip()
        decomp = None
        if encoding in ("gzip", "x-gzip"):
            decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            decomp = zlib.decompressobj()
        out = bytearray()
        # read1 returns after one socket read: a server dripping bytes cannot hold one call open
        read = getattr(resp, "read1", None) or resp.read
        while True:
            if time.monotonic() > deadline:
                raise FetchError("timeout", f"{url}: body not received within {self.timeout_s:.0f}s")
            try:
                chunk = read(64 * 1024)
            except TimeoutError:
                raise FetchError("timeout", f"{url}: read timed out") from None
            except OSError as exc:
                raise FetchError("network", f"{url}: {exc}") from None
            if not chunk:
                break
            if decomp is not None:
                try:
                    chunk = decomp.decompress(chunk, self.max_bytes + 1 - len(out))
                except zlib.error as exc:
                    raise FetchError("bad_content", f"{url}: bad {encoding} body: {exc}") from None
            out += chunk
            if len(out) > self.max_bytes:
                raise FetchError("too_large", f"{url}: response larger than {self.max_bytes} bytes")
        return bytes(out)


def utc_from_header(value: str | None) -> datetime | None:
    """An ISO 8601 reset time header (Mastodon X-RateLimit-Reset) as aware UTC."""
    from finsent.ingest.normalize import to_utc

    return to_utc(value) if value else None
