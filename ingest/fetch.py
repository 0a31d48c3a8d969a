"""A small, strict HTTP GET for feeds and APIs (urllib, run in worker threads).

Why not let feedparser or a library fetch: we must control what a hostile or broken server can
do to us -- a whole-request deadline (not just a per-read socket timeout), a byte limit on the
body *after* decompression (gzip bombs), a bounded number of redirects, conditional GET
(ETag / Last-Modified -> 304), and 429/503 ``Retry-After`` turned into a back-off the poller
honours. Every failure is a :class:`FetchError` whose ``kind`` is a metrics label.

The deadline covers the whole request -- connect, TLS, status line and headers, body, and every
redirect hop -- not only the body: a per-read socket timeout alone lets a server that drips one
header byte a second hold a poll (and its pool slot) forever. Each request gets a
:class:`_Watchdog`: every connection it opens is created with ``min(socket timeout, time left)``
and registered with it, and when the deadline passes a timer shuts those sockets down, so the
blocked ``recv`` in the polling thread returns at once and the fetch fails as ``timeout``. (Name
resolution is the one step it cannot abort; the system resolver bounds it by its own timeouts.)
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import Message
from typing import Any, NoReturn

from finsent.core.errors import FinsentError
from finsent.core.settings import IngestSettings

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


class _Watchdog:
    """Aborts one request's sockets when its deadline passes (see the module docstring).

    It keeps a ``dup`` of each socket: ``shutdown`` on the duplicate descriptor ends the shared
    connection even after ``ssl`` has detached the original socket object, and owning the
    descriptor means a late timer can never shut down an unrelated socket that reused its number.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.fired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(timeout_s, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    @staticmethod
    def _abort(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # already closed by its connection: nothing to abort
            sock.shutdown(socket.SHUT_RDWR)

    def register(self, sock: socket.socket) -> None:
        dup = sock.dup()
        with self._lock:
            self._socks.append(dup)
            if self.fired:  # the deadline passed while this socket was connecting
                self._abort(dup)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for s in self._socks:
                self._abort(s)

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            for s in self._socks:
                s.close()
            self._socks.clear()


def _watched_connection(base: type[http.client.HTTPConnection], watch: _Watchdog) -> Any:
    """An ``http.client`` connection factory whose sockets connect within, and obey, ``watch``."""

    def factory(host: str, **kwargs: Any) -> http.client.HTTPConnection:
        conn = base(host, **kwargs)
        create = conn._create_connection  # type: ignore[attr-defined]

        def create_watched(address: Any, timeout: Any = None, source_address: Any = None) -> socket.socket:
            left = watch.remaining()
            if left <= 0 or watch.fired:
                raise TimeoutError("the fetch deadline passed before connecting (e.g. during redirects)")
            if isinstance(timeout, (int, float)):
                left = min(left, float(timeout))
            sock = create(address, left, source_address)
            watch.register(sock)
            return sock

        conn._create_connection = create_watched  # type: ignore[attr-defined]
        return conn

    return factory


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watch: _Watchdog) -> None:
        super().__init__()
        self._watch = watch

    def http_open(self, req):  # type: ignore[no-untyped-def]
        return self.do_open(_watched_connection(http.client.HTTPConnection, self._watch), req)


class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, watch: _Watchdog) -> None:
        super().__init__()
        self._watch = watch

    def https_open(self, req):  # type: ignore[no-untyped-def]
        return self.do_open(_watched_connection(http.client.HTTPSConnection, self._watch), req, context=self._context)


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
        self.max_redirects = max_redirects

    @classmethod
    def from_settings(cls, ingest: IngestSettings) -> Fetcher:
        return cls(
            user_agent=ingest.ingest_user_agent,
            timeout_s=ingest.ingest_fetch_timeout_s,
            max_bytes=ingest.ingest_max_fetch_bytes,
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
        watch = _Watchdog(self.timeout_s)
        try:
            result = self._fetch(request, url, watch)
        except FetchError as exc:
            if watch.fired:  # whatever broke when the sockets were shut down, the cause is the deadline
                self._timed_out(url, exc)
            raise
        except (ValueError, OSError, http.client.HTTPException) as exc:
            # OSError: connection reset...; HTTPException: a garbled status line or headers
            if watch.fired:
                self._timed_out(url, exc)
            raise FetchError("network", f"cannot fetch {url}: {type(exc).__name__}: {exc}") from None
        finally:
            watch.close()
        if watch.fired:  # the sockets were shut down under a read: what we have may be cut short
            self._timed_out(url, None)
        return result

    def _timed_out(self, url: str, cause: BaseException | None) -> NoReturn:
        raise FetchError(
            "timeout",
            f"{url}: no complete response within {self.timeout_s:g}s "
            "(the deadline covers connect, headers, body and redirects together)",
        ) from cause

    def _fetch(self, request: urllib.request.Request, url: str, watch: _Watchdog) -> FetchResult:
        # one opener per request: its handlers carry this request's watchdog (a handler shared between
        # threads would follow a redirect through another request's opener)
        opener = urllib.request.build_opener(
            _LimitedRedirects(self.max_redirects), _WatchedHTTPHandler(watch), _WatchedHTTPSHandler(watch)
        )
        try:
            resp = opener.open(request, timeout=self.timeout_s)
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
                raise FetchError(
                    "redirect", f"HTTP {exc.code} from {url}: too many or bad redirects", status=exc.code
                ) from None
            kind = "http_5xx" if exc.code >= 500 else "http_4xx"
            raise FetchError(kind, f"HTTP {exc.code} {exc.reason} from {url}", status=exc.code) from None
        except FetchError:
            raise
        except TimeoutError:
            raise FetchError("timeout", f"timed out after {self.timeout_s:g}s connecting to {url}") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError) or watch.fired:
                raise FetchError("timeout", f"timed out connecting to {url}") from None
            raise FetchError("network", f"cannot fetch {url}: {reason}") from None
        with resp:
            hdrs = _headers(resp.headers)
            body = self._read(resp, url, hdrs, watch.deadline)
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
