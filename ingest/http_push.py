"""``POST /v1/items``: let scrapers and other systems push items into finsent over HTTP.

Contract (what a client can rely on):

* body: one JSON object, a JSON array of objects, or NDJSON (one object per line); fields
  ``text`` (required), ``title``, ``url``, ``source`` (default ``http``), ``source_type``
  (``news``/``social``, default ``news``), ``author``, ``published_at`` (ISO 8601 or epoch),
  ``tickers`` (list of strings), ``id`` (your stable id; else derived from url/guid/content),
  ``guid``. The charset of ``Content-Type`` is honoured (UTF-8 if none); a body not valid in it is
  ``400`` naming the offset of the first bad byte. Every item goes through the same normaliser as the feeds.
* ``202`` only after the broker acknowledged every accepted item: ``{"accepted": [ids],
  "duplicates": [ids], "rejected": [{"index", "reason", "detail"}]}``. Items that are bad are
  rejected individually (the good ones in the same request are still accepted); when no item
  is usable the answer is ``400`` (``422`` for a well-formed body with only invalid items).
  ``published_at`` follows the ingesters' one rule (:func:`finsent.ingest.normalize.read_published`):
  an unreadable one keeps the item with no publication time (event time = when it arrived), counted in
  ``finsent_ingest_unparsed_dates_total{source="http"}`` and listed in ``"warnings": [{"index",
  "reason": "unparsed_date", "detail"}]``; one more than 5 min in the future is rejected ``bad_time``.
* concurrent requests are merged into one publish (:class:`Coalescer`), each answered for its own items;
* ``503`` (with ``Retry-After``) when Kafka does not ack in time: nothing is lost -- retry the
  same request; items that were acked before the failure are then reported as duplicates.
* ``401`` without the bearer token (``settings.ingest.http_token``, compared in constant time),
  ``413`` for a body over the size limit or too many items, ``415`` for a non-JSON content type.
  These refusals are answered from the headers alone and close the connection: an unread body is
  never drained, so an unauthenticated request costs the server its headers and nothing more.
* ``Content-Encoding``: ``identity`` or ``gzip`` (``415`` for any other). The server never inflates in
  its parser (``auto_decompress=False``): a gzip body is inflated only after the token is checked, in a
  worker thread, and only up to the body limit (``max_body_bytes`` applies to the inflated body;
  past it ``413``), so a gzip bomb neither stalls the event loop nor grows memory.

Bad clients (:func:`serve`), because an endpoint on a network meets them:

* **slow headers**: a connection must complete its request headers within ``header_timeout_s`` of
  connecting (or of its previous response) -- aiohttp's keep-alive timer, which also closes idle
  keep-alive connections -- else it is closed without an answer;
* **slow bodies**: the body must arrive within ``body_timeout_s`` of the headers, else ``408`` and
  the connection is closed (at most :data:`LINGER_S` later); aiohttp itself has no body timeout,
  so the handler reads under ``asyncio.timeout``;
* **too many connections**: beyond ``max_connections`` open connections a new one is answered
  ``503`` + ``Retry-After`` at once and closed, without reading its request, so a slowloris
  flood cannot take the memory or the file descriptors of the good clients.

Health: ``/healthz`` (alive) and ``/readyz`` (Kafka reachable as last seen, see
:mod:`finsent.ingest.service`, and accepting requests) never need the token; they say no more
than "ok"/"ready". ``/metrics`` needs the token when one is set (Prometheus sends it with
``authorization: {credentials_file: ...}``); ``--metrics-port`` serves ``/metrics``,
``/healthz`` and ``/readyz`` without it on ``FINSENT_METRICS_HOST`` (loopback by default).

The Kafka producer blocks, so publishing runs in a thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from finsent.ingest.metrics import unparsed_date_hook
from finsent.ingest.normalize import Skip, UndecodableBytes, decode_bytes, dedup_keys, known_text_encoding, make_item
from finsent.ingest.pipeline import Entry, Pipeline
from finsent.ingest.publisher import PublishError

log = logging.getLogger(__name__)

METRIC_SOURCE = "http"
_FIELDS = {
    "text",
    "title",
    "url",
    "source",
    "source_type",
    "author",
    "published_at",
    "tickers",
    "id",
    "guid",
    "v",
    "ingested_at",
    "truncated",
}
_JSON_TYPES = (
    "application/json",
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
    "application/x-jsonlines",
    "text/plain",
    "",
)


_CONNECT = web.AppKey("connect", asyncio.Future)

#: after a 408 the rest of a slow body is read and dropped for at most this long, then the connection closes
LINGER_S = 2.0


class BadBody(ValueError):
    pass


class BodyTooLarge(ValueError):
    pass


#: Content-Encodings the door accepts. gzip only: it is what HTTP clients send, and one decoder is one
#: thing to bound. deflate, br, zstd and chains of encodings are refused with 415 before the body is read.
ACCEPTED_ENCODINGS = ("identity", "gzip", "x-gzip")


def inflate_gzip(data: bytes, limit: int) -> bytes:
    """The gzip body ``data`` inflated, refusing to produce more than ``limit`` bytes.

    Called after authentication and off the event loop (a gzip bomb costs this thread at most
    ``limit`` bytes of output, never the loop). Several concatenated gzip members are one body
    (RFC 1952). Raises :class:`BodyTooLarge` past ``limit`` and :class:`BadBody` on corrupt data.
    """
    out: list[bytes] = []
    size = 0
    rest = data
    try:
        while rest:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            chunk = d.decompress(rest, limit - size + 1)
            size += len(chunk)
            out.append(chunk)
            if size > limit or d.unconsumed_tail:
                raise BodyTooLarge(f"gzip body inflates to more than {limit} bytes (the body limit)")
            if not d.eof:
                raise BadBody("gzip body is truncated")
            rest = d.unused_data.lstrip(b"\0")
    except zlib.error as exc:
        raise BadBody(f"gzip body is corrupt ({exc})") from None
    return b"".join(out)


def parse_body(data: bytes, content_type: str | None) -> list[Any]:
    """The list of decoded JSON values in the body (object, array or NDJSON)."""
    try:  # strict: a byte not valid in the charset (UTF-8 for JSON) is a 400 naming its offset, never a re-decode
        text = decode_bytes(data, content_type, strict=True).strip()
    except UndecodableBytes as exc:
        raise BadBody(str(exc)) from None
    if not text:
        raise BadBody("empty body: send a JSON object, a JSON array or NDJSON")
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if "ndjson" not in mime and "jsonl" not in mime:
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):  # ValueError also: an integer of more than 4,300 digits
            value = None
            if "\n" not in text:
                raise BadBody("body is not valid JSON") from None
        else:
            return value if isinstance(value, list) else [value]
    values: list[Any] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values.append(json.loads(line))
        except (ValueError, RecursionError):
            raise BadBody(f"line {n} is not valid JSON (NDJSON needs one object per line)") from None
    return values


def _item_from_json(
    obj: Any, max_text_chars: int, on_unparsed_date: Callable[[str], None] | None = None
) -> tuple[Entry | None, dict[str, str] | None]:
    if not isinstance(obj, dict):
        return None, {"reason": "not_object", "detail": "each item must be a JSON object"}
    text = obj.get("text")
    if text is None:
        return None, {"reason": "missing_field", "detail": "text is required"}
    for key in ("text", "title", "url", "source", "source_type", "author", "id", "guid"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            return None, {"reason": "bad_type", "detail": f"{key} must be a string"}
    tickers = obj.get("tickers") or []
    if not isinstance(tickers, list) or not all(isinstance(t, str) for t in tickers):
        return None, {"reason": "bad_type", "detail": "tickers must be a list of strings"}
    published = obj.get("published_at")
    if published is not None and (isinstance(published, bool) or not isinstance(published, (str, int, float))):
        return None, {"reason": "bad_type", "detail": "published_at must be ISO 8601 or epoch seconds"}
    try:
        item = make_item(
            source=obj.get("source") or "http",
            source_type=obj.get("source_type") or "news",
            text=text,
            title=obj.get("title"),
            url=obj.get("url"),
            author=obj.get("author"),
            published=published,
            guid=obj.get("guid"),
            item_id_override=obj.get("id"),
            tickers=tickers,
            max_text_chars=max_text_chars,
            on_unparsed_date=on_unparsed_date,
        )
    except Skip as exc:
        return None, {"reason": exc.reason, "detail": exc.detail}
    except Exception as exc:  # noqa: BLE001 - one bad item gets its own verdict, never the request a 500
        return None, {"reason": "bad_item", "detail": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return Entry(item, tuple(dedup_keys(item, obj.get("guid")))), None


@dataclass
class _Outcome:
    """Which of one batch's items (by object identity) were published / duplicates / oversize."""

    published: set[int] = field(default_factory=set)
    duplicates: set[int] = field(default_factory=set)
    oversize: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)


class Coalescer:
    """Merge the items of concurrent requests into one publish (one acked batch, not one per request).

    Requests that arrive while a publish is in flight wait for the next one, so under load the
    batch grows by itself and at low load nothing waits for a timer. The flush loop runs as its
    own task so a client that disconnects cannot cancel other clients' publish.
    """

    def _publish(self, entries: list[Entry]) -> Any:
        return self.pipeline.submit(METRIC_SOURCE, entries, give_up_after_s=self.publish_timeout_s)

    def _publish_isolated(self, entries: list[Entry]) -> tuple[Any, set[int]]:
        """After an unforeseen failure: publish item by item, so only the item(s) that fail are refused.

        Returns the merged result and the ``id()`` of every item that could not be published. A
        :class:`PublishError` (Kafka down) is not an item's fault and propagates.
        """
        from finsent.ingest.pipeline import SubmitResult

        merged, failed = SubmitResult(), set()
        for e in entries:
            try:
                res = self._publish([e])
            except PublishError:
                raise
            except Exception:  # noqa: BLE001
                log.exception("item %r could not be published; refused on its own", e.item.id)
                failed.add(id(e.item))
                continue
            merged.published.extend(res.published)
            merged.duplicates.extend(res.duplicates)
            merged.oversize.extend(res.oversize)
        return merged, failed

    def __init__(self, pipeline: Pipeline, executor: ThreadPoolExecutor, publish_timeout_s: float) -> None:
        self.pipeline = pipeline
        self.executor = executor
        self.publish_timeout_s = publish_timeout_s
        self.pending: list[tuple[list[Entry], asyncio.Future[_Outcome]]] = []
        self.flushing = False
        self.flushes = 0
        self._task: asyncio.Future[None] | None = None  # referenced so it is not garbage-collected

    async def submit(self, entries: list[Entry]) -> _Outcome:
        fut: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        self.pending.append((entries, fut))
        if not self.flushing:
            self.flushing = True
            self._task = asyncio.ensure_future(self._flush_loop())
        return await asyncio.shield(fut)

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                entries = [e for es, _ in batch for e in es]
                self.flushes += 1
                failed: set[int] = set()
                try:
                    res = await loop.run_in_executor(self.executor, self._publish, entries)
                except PublishError as exc:  # Kafka did not ack in time: every waiter answers 503, nothing lost
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(exc)
                    continue
                except Exception:  # noqa: BLE001 - one client's item must not fail the others' requests
                    try:
                        res, failed = await loop.run_in_executor(self.executor, self._publish_isolated, entries)
                    except PublishError as exc:
                        for _, f in batch:
                            if not f.done():
                                f.set_exception(exc)
                        continue
                outcome = _Outcome(
                    {id(i) for i in res.published},
                    {id(i) for i in res.duplicates},
                    {id(i) for i in res.oversize},
                    failed,
                )
                for _, f in batch:
                    if not f.done():
                        f.set_result(outcome)
        finally:
            self.flushing = False


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _problem(status: int, message: str, **extra: Any) -> web.Response:
    """A JSON error answer ``{"error": message, ...}``; a 401 names the bearer scheme, as HTTP asks."""
    headers = {"WWW-Authenticate": 'Bearer realm="finsent"'} if status == 401 else None
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


def _refuse(status: int, message: str, **extra: Any) -> web.Response:
    """An answer given before the body is read: the connection closes after it, so the unread body
    is never drained (a refused request costs its headers, not its body)."""
    resp = _problem(status, message, **extra)
    resp.force_close()
    return resp


@dataclass
class _Checked:
    """One request's items after validation: the usable entries (with their index in the request), the
    per-item refusals and the warnings (kept items with something the client should fix)."""

    entries: list[Entry] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # each entry's index in the request
    rejected: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)  # kept, with an unreadable date


class _Door:
    """The push endpoint's handlers and what they share (executors, coalescer, token, limits).

    One object rather than closures inside :func:`create_app`, so that each step of a push (headers,
    body, items, publish, answer) is a method that can be read alone; the routes are its bound methods.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        token: str | None,
        max_body_bytes: int,
        max_items: int,
        publish_timeout_s: float,
        body_timeout_s: float,
        ready: Callable[[], tuple[bool, str]] | None,
    ) -> None:
        from finsent.ingest.service import readiness

        self.pipeline = pipeline
        self.max_body_bytes = max_body_bytes
        self.max_items = max_items
        self.body_timeout_s = body_timeout_s
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="publish")
        #: one thread: authenticated gzip bodies are inflated one at a time, off the event loop
        self.inflate_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inflate")
        self.coalescer = Coalescer(pipeline, self.executor, publish_timeout_s)
        self.expected = f"Bearer {token}".encode() if token else None
        self.metrics = pipeline.metrics
        self.count_unparsed = unparsed_date_hook(self.metrics, METRIC_SOURCE)
        self.is_ready = ready or readiness(pipeline.publisher)

    def authorized(self, request: web.Request) -> bool:
        """The bearer token matches (constant time), or none is configured."""
        if self.expected is None:
            return True
        got = request.headers.get("Authorization", "").encode("utf-8", "replace")
        return hmac.compare_digest(got, self.expected)

    def refusal(self, request: web.Request) -> web.Response | None:
        """The answer to a request refused on its headers alone (token, size, content type, charset,
        encoding), before a byte of its body is read; None when the body may be read."""
        if not self.authorized(request):
            return _refuse(401, "missing or wrong bearer token (Authorization: Bearer <FINSENT_HTTP_TOKEN>)")
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return _refuse(413, f"body is {request.content_length} bytes; the limit is {self.max_body_bytes}")
        mime = (request.content_type or "").lower() if "Content-Type" in request.headers else ""
        if mime not in _JSON_TYPES:
            return _refuse(415, f"Content-Type {mime!r} not accepted: use application/json or application/x-ndjson")
        charset = request.charset
        if charset and known_text_encoding(charset) is None:
            return _refuse(415, f"charset {charset!r} is not a text encoding finsent can read: use utf-8")
        encoding = _encoding(request)
        if encoding not in ACCEPTED_ENCODINGS:
            return _refuse(415, f"Content-Encoding {encoding!r} not accepted: send the body as is or gzip it")
        return None

    async def read_body(self, request: web.Request) -> bytes | web.Response:
        """The body, inflated when gzip; or the answer when it came too slowly, is too large or is corrupt.

        Read under ``body_timeout_s`` (aiohttp has no body timeout of its own); inflated after the token was
        checked, in a worker thread and bounded by the body limit, so the loop never inflates."""
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = await request.read()  # raw bytes: the server does not inflate (auto_decompress=False)
        except web.HTTPRequestEntityTooLarge:
            return _refuse(413, f"body exceeds the limit of {self.max_body_bytes} bytes")
        except TimeoutError:
            self.metrics.errors.labels(METRIC_SOURCE, "body_timeout").inc()
            resp = _problem(408, f"request body not received within {self.body_timeout_s:g} s")
            resp.force_close()
            return resp
        if _encoding(request) != "identity":
            try:  # after authentication, in a worker thread, bounded: the loop never inflates
                body = await asyncio.get_running_loop().run_in_executor(
                    self.inflate_executor, inflate_gzip, body, self.max_body_bytes
                )
            except BodyTooLarge as exc:
                self.metrics.errors.labels(METRIC_SOURCE, "bad_body").inc()
                return _problem(413, str(exc))
            except BadBody as exc:
                self.metrics.errors.labels(METRIC_SOURCE, "bad_body").inc()
                return _problem(400, str(exc))
        return body

    def check_items(self, values: list[Any]) -> _Checked:
        """Validate and normalise each value on its own: a bad item is refused alone, never the request."""
        checked = _Checked()
        for i, obj in enumerate(values):

            def unparsed(why: str, i: int = i) -> None:
                self.count_unparsed(why)
                checked.warnings.append({"index": i, "reason": "unparsed_date", "detail": why})

            entry, err = _item_from_json(obj, self.pipeline.max_text_chars, unparsed)
            if err is not None:
                checked.rejected.append({"index": i, **err})
                self.pipeline.count_skipped(METRIC_SOURCE, err["reason"])
            else:
                checked.entries.append(entry)  # type: ignore[arg-type]
                checked.positions.append(i)
        return checked

    async def post_items(self, request: web.Request) -> web.Response:
        """``POST /v1/items``: headers, body, items, one coalesced publish, then each item's verdict."""
        refused = self.refusal(request)
        if refused is not None:
            return refused
        body = await self.read_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            values = parse_body(body, request.headers.get("Content-Type"))
        except BadBody as exc:
            self.metrics.errors.labels(METRIC_SOURCE, "bad_body").inc()
            return _problem(400, str(exc))
        if len(values) > self.max_items:
            return _problem(413, f"{len(values)} items in one request; the limit is {self.max_items}")
        self.metrics.fetched.labels(METRIC_SOURCE).inc(len(values))
        checked = self.check_items(values)
        if not checked.entries:
            status = 422 if values else 400
            return _problem(status, "no valid items", accepted=[], duplicates=[], rejected=checked.rejected)
        try:
            outcome = await self.coalescer.submit(checked.entries)
        except PublishError as exc:
            return _unavailable(checked.entries, exc)
        return _accepted(checked, outcome)

    async def healthz(self, request: web.Request) -> web.Response:
        pub = self.pipeline.publisher
        kafka = "dry-run" if pub is None else ("connected" if pub.connected else "not connected")
        return web.json_response({"status": "ok", "kafka": kafka})

    async def readyz(self, request: web.Request) -> web.Response:
        # open to anyone who can reach the port: ready or not, nothing more (the reason names the broker's
        # address); the loopback --metrics-port /readyz gives the reason to the operator
        ok, _why = self.is_ready()
        return web.json_response({"ready": ok, "status": "ready" if ok else "not ready"}, status=200 if ok else 503)

    async def on_startup(self, app: web.Application) -> None:
        if self.pipeline.publisher is not None:  # connect in the background: the first request need not pay
            loop = asyncio.get_running_loop()
            app[_CONNECT] = loop.run_in_executor(self.executor, self.pipeline.publisher.connect)

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        if not self.authorized(request):  # a token-protected endpoint does not show its traffic to strangers
            return _problem(401, "/metrics needs the bearer token here; or scrape --metrics-port (loopback)")
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def on_cleanup(self, app: web.Application) -> None:
        self.executor.shutdown(wait=True)
        self.inflate_executor.shutdown(wait=True)


def _encoding(request: web.Request) -> str:
    """The request's Content-Encoding, normalised (none or blank: identity)."""
    return request.headers.get("Content-Encoding", "identity").strip().lower() or "identity"


def _unavailable(entries: list[Entry], exc: PublishError) -> web.Response:
    """503 + Retry-After when Kafka did not ack in time: nothing is lost, and the items acked before the
    failure are named (a retry reports them as duplicates)."""
    log.error("publish failed, answering 503: %s", exc)
    acked = {id(i) for i in exc.acked}
    return web.json_response(
        {
            "error": f"Kafka is unavailable ({exc}); nothing was lost, retry the same request",
            "published": [e.item.id for e in entries if id(e.item) in acked],
        },
        status=503,
        headers={"Retry-After": "5"},
    )


def _accepted(checked: _Checked, outcome: _Outcome) -> web.Response:
    """202 with each item's verdict: accepted, duplicate, or refused (at validation, or by the publish:
    oversize or unpublishable), plus the warnings."""
    rejected = checked.rejected
    for idx, e in zip(checked.positions, checked.entries, strict=True):
        if id(e.item) in outcome.oversize:
            rejected.append({"index": idx, "reason": "oversize", "detail": "encoded item > max_message_bytes"})
        elif id(e.item) in outcome.failed:
            rejected.append({"index": idx, "reason": "unpublishable", "detail": "see the endpoint's log"})
    return web.json_response(
        {
            "accepted": [e.item.id for e in checked.entries if id(e.item) in outcome.published],
            "duplicates": [e.item.id for e in checked.entries if id(e.item) in outcome.duplicates],
            "rejected": rejected,
            **({"warnings": checked.warnings} if checked.warnings else {}),
        },
        status=202,
    )


def create_app(
    pipeline: Pipeline,
    *,
    token: str | None,
    max_body_bytes: int = 1_000_000,
    max_items: int = 1000,
    publish_timeout_s: float = 10.0,
    body_timeout_s: float = 30.0,
    ready: Callable[[], tuple[bool, str]] | None = None,
) -> web.Application:
    """The push endpoint's routes. ``ready`` answers ``/readyz`` (default: the publisher's readiness)."""
    door = _Door(
        pipeline,
        token=token,
        max_body_bytes=max_body_bytes,
        max_items=max_items,
        publish_timeout_s=publish_timeout_s,
        body_timeout_s=body_timeout_s,
        ready=ready,
    )
    app = web.Application(client_max_size=max_body_bytes)
    app.router.add_post("/v1/items", door.post_items)
    app.router.add_get("/healthz", door.healthz)
    app.router.add_get("/readyz", door.readyz)
    app.router.add_get("/metrics", door.metrics_endpoint)
    app.on_startup.append(door.on_startup)
    app.on_cleanup.append(door.on_cleanup)
    return app


def check_bind(host: str, token: str | None) -> str | None:
    """An error message when the endpoint would be open to the network without a token, or guarded by one
    that is no secret: a template's placeholder (``CHANGE-ME``...) or fewer than 16 characters
    (:func:`finsent.core.argtypes.token_problem`), on any address."""
    from finsent.core.argtypes import token_problem

    if token is None and not _is_loopback(host):
        return (
            f"refusing to listen on {host} without a token: set FINSENT_HTTP_TOKEN "
            "(clients send 'Authorization: Bearer <token>') or bind to 127.0.0.1"
        )
    return token_problem(token, "FINSENT_HTTP_TOKEN")


# -- serving: connection cap, header timeout, SIGTERM drain ----------------------------------------


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted by :class:`_CappedFactory` while it is open."""

    def __init__(self, inner: Any, owner: _CappedFactory) -> None:
        self.inner = inner
        self.owner = owner

    def connection_made(self, transport: Any) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.open -= 1
        self.inner.connection_lost(exc)


class _Refused(asyncio.Protocol):
    """A connection over the cap: ``503`` at once, then closed (its request is never read)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        body = json.dumps({"error": f"too many connections (the limit is {self.limit}); retry later"}).encode()
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        if transport.can_write_eof():
            transport.write_eof()
        # read (and drop) what the client still sends for a moment, so the close is a FIN, not a reset
        self._timer = asyncio.get_running_loop().call_later(1.0, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the client is done too: close now

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


class _CappedFactory:
    """Protocol factory over aiohttp's server: at most ``limit`` connections open at once."""

    def __init__(self, server: Any, limit: int, metrics: Any) -> None:
        self.server = server
        self.limit = limit
        self.metrics = metrics
        self.open = 0
        self.refused = 0

    def __call__(self) -> asyncio.Protocol:
        if self.open >= self.limit:
            self.refused += 1
            self.metrics.errors.labels(METRIC_SOURCE, "too_many_connections").inc()
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning(
                    "%d connection(s) refused so far: %d open is the limit (--max-connections)",
                    self.refused,
                    self.limit,
                )
            return _Refused(self.limit)
        self.open += 1
        return _Counted(self.server(), self)


async def serve_app(
    app: web.Application,
    host: str,
    port: int,
    *,
    stop: asyncio.Event,
    metrics: Any,
    max_connections: int = 1000,
    header_timeout_s: float = 10.0,
    shutdown_timeout_s: float = 6.0,
    started: Callable[[int], None] | None = None,
) -> None:
    """Serve ``app`` on ``host:port`` until ``stop`` is set, then stop within about ``shutdown_timeout_s``.

    Stopping: the listening socket closes first (no new connections), idle and half-sent
    connections are closed, requests in flight get ``shutdown_timeout_s`` to be answered (their
    publish is drained by the publisher, so they end with 202 or 503), then the app cleans up.
    ``started(port)`` is called once listening (the port actually bound).
    """
    from finsent.core.errors import ConfigError

    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=shutdown_timeout_s,
        keepalive_timeout=header_timeout_s,
        lingering_time=LINGER_S,
        # aiohttp would inflate gzip/deflate bodies in its parser, on the event loop, before the handler
        # has checked the token -- and again while draining a refused body. The handler inflates instead.
        auto_decompress=False,
    )
    await runner.setup()
    try:
        factory = _CappedFactory(runner.server, max_connections, metrics)
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(factory, host, port, reuse_address=True, backlog=512)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                hint="pick a free --port, or stop what holds it",
            ) from None
        bound = server.sockets[0].getsockname()[1] if server.sockets else port
        if started is not None:
            started(bound)
        try:
            await stop.wait()
        finally:
            server.close()
    finally:
        await runner.cleanup()
