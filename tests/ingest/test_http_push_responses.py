"""The push endpoint's answers, byte for byte: status, JSON body and the headers a client acts on, for good,
duplicate, partly bad, wholly bad, oversized, unauthenticated, mistyped, gzip and slow requests, plus the
metrics they move. A characterisation test (issue 23): the handler was split into steps, and any change to
what a client or an operator sees must show up here, not in production."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from finsent.ingest.http_push import create_app, serve_app
from finsent.ingest.pipeline import Pipeline
from tests.ingest.test_ingest_http import TOKEN, _pipeline

AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json", **AUTH}
UNREADABLE_SOON = "'soon' is not a time finsent reads (ISO 8601, RFC 822, epoch seconds or milliseconds)"


class Served:
    """``create_app`` served by :func:`serve_app` (the real server settings: no inflating in the parser,
    lingering after a refusal) on 127.0.0.1, in a background event loop."""

    def __init__(self, app, metrics) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.stop = asyncio.Event()
        bound: list[int] = []
        self.done = asyncio.run_coroutine_threadsafe(
            serve_app(app, "127.0.0.1", 0, stop=self.stop, metrics=metrics, started=bound.append), self.loop
        )
        deadline = time.monotonic() + 30
        while not bound and time.monotonic() < deadline and not self.done.done():
            time.sleep(0.02)
        assert bound, "the endpoint did not start"
        self.port = bound[0]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.done.result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def served(pipeline, **kwargs) -> Served:
    return Served(create_app(pipeline, token=TOKEN, **kwargs), pipeline.metrics)


@pytest.fixture
def door(tmp_path) -> Iterator[tuple[Served, Pipeline]]:
    """A dry-run door (no broker: accepted items are printed), small limits so every refusal is cheap."""
    pipeline = _pipeline(tmp_path)
    srv = served(pipeline, max_body_bytes=2_000, max_items=3, body_timeout_s=0.5)
    yield srv, pipeline
    srv.close()


def call(
    srv: Served, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, object, dict[str, str]]:
    """(status, JSON body or text, headers) over a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("POST" if body is not None else "GET", path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw), hdrs
    except json.JSONDecodeError:
        return resp.status, raw.decode(), hdrs


def post(srv: Served, value: object, headers: dict[str, str] = JSON) -> tuple[int, object]:
    status, body, _ = call(srv, "/v1/items", json.dumps(value).encode(), headers)
    return status, body


def metric(pipeline, name: str, **labels: str) -> float:
    return pipeline.metrics.registry.get_sample_value(name, labels) or 0.0


def test_accepted_duplicate_and_per_item_verdicts(door) -> None:
    srv, pipeline = door
    assert post(srv, {"text": "one $AAPL", "id": "c-1"}) == (
        202,
        {"accepted": ["c-1"], "duplicates": [], "rejected": []},
    )
    assert post(srv, {"text": "one $AAPL", "id": "c-1"}) == (
        202,
        {"accepted": [], "duplicates": ["c-1"], "rejected": []},
    )
    mixed = [
        {"text": "kept", "id": "c-2", "published_at": "soon"},
        {"title": "no text"},
        {"text": "x", "tickers": "AAPL"},
    ]
    assert post(srv, mixed) == (
        202,
        {
            "accepted": ["c-2"],
            "duplicates": [],
            "rejected": [
                {"index": 1, "reason": "missing_field", "detail": "text is required"},
                {"index": 2, "reason": "bad_type", "detail": "tickers must be a list of strings"},
            ],
            "warnings": [{"index": 0, "reason": "unparsed_date", "detail": UNREADABLE_SOON}],
        },
    )
    assert post(srv, [{"text": 5}, "no"]) == (
        422,
        {
            "error": "no valid items",
            "accepted": [],
            "duplicates": [],
            "rejected": [
                {"index": 0, "reason": "bad_type", "detail": "text must be a string"},
                {"index": 1, "reason": "not_object", "detail": "each item must be a JSON object"},
            ],
        },
    )
    assert post(srv, []) == (400, {"error": "no valid items", "accepted": [], "duplicates": [], "rejected": []})
    nd = b'{"text": "nd one", "id": "n-1"}\n\n{"text": "nd two", "id": "n-2"}\n'
    status, body, _ = call(srv, "/v1/items", nd, {"Content-Type": "application/x-ndjson", **AUTH})
    assert (status, body) == (202, {"accepted": ["n-1", "n-2"], "duplicates": [], "rejected": []})
    assert metric(pipeline, "finsent_ingest_items_fetched_total", source="http") == 2 + 3 + 2 + 2
    assert metric(pipeline, "finsent_ingest_items_skipped_total", source="http", reason="bad_type") == 2
    assert metric(pipeline, "finsent_ingest_unparsed_dates_total", source="http") == 1


def test_refusals_from_the_headers_close_the_connection(door) -> None:
    srv, pipeline = door
    body = json.dumps({"text": "hello"}).encode()
    status, res, hdrs = call(srv, "/v1/items", body, {"Content-Type": "application/json"})
    assert (status, res) == (
        401,
        {"error": "missing or wrong bearer token (Authorization: Bearer <FINSENT_HTTP_TOKEN>)"},
    )
    assert hdrs["www-authenticate"] == 'Bearer realm="finsent"' and hdrs["connection"] == "close"
    status, res, hdrs = call(srv, "/v1/items", b"x" * 2_001, JSON)
    assert (status, res) == (413, {"error": "body is 2001 bytes; the limit is 2000"}) and hdrs["connection"] == "close"
    status, res, hdrs = call(srv, "/v1/items", body, {"Content-Type": "text/html", **AUTH})
    assert (status, res) == (
        415,
        {"error": "Content-Type 'text/html' not accepted: use application/json or application/x-ndjson"},
    )
    assert hdrs["connection"] == "close"
    status, res, _ = call(srv, "/v1/items", body, {"Content-Type": "application/json; charset=klingon", **AUTH})
    assert (status, res) == (415, {"error": "charset 'klingon' is not a text encoding finsent can read: use utf-8"})
    status, res, _ = call(srv, "/v1/items", body, {**JSON, "Content-Encoding": "br"})
    assert (status, res) == (415, {"error": "Content-Encoding 'br' not accepted: send the body as is or gzip it"})
    assert metric(pipeline, "finsent_ingest_items_fetched_total", source="http") == 0


def test_bad_bodies_gzip_and_too_many_items(door) -> None:
    srv, pipeline = door
    assert call(srv, "/v1/items", b"{not json", JSON)[:2] == (400, {"error": "body is not valid JSON"})
    assert call(srv, "/v1/items", b"  ", JSON)[:2] == (
        400,
        {"error": "empty body: send a JSON object, a JSON array or NDJSON"},
    )
    assert post(srv, [{"text": f"t{i}"} for i in range(4)]) == (
        413,
        {"error": "4 items in one request; the limit is 3"},
    )
    gz = gzip.compress(json.dumps([{"text": "zipped", "id": "z-1"}]).encode())
    status, res, _ = call(srv, "/v1/items", gz, {**JSON, "Content-Encoding": "gzip"})
    assert (status, res) == (202, {"accepted": ["z-1"], "duplicates": [], "rejected": []})
    bomb = gzip.compress(b" " * 5_000)
    status, res, _ = call(srv, "/v1/items", bomb, {**JSON, "Content-Encoding": "gzip"})
    assert (status, res) == (413, {"error": "gzip body inflates to more than 2000 bytes (the body limit)"})
    status, res, _ = call(srv, "/v1/items", gz[:-4], {**JSON, "Content-Encoding": "x-gzip"})
    assert (status, res) == (400, {"error": "gzip body is truncated"})
    assert metric(pipeline, "finsent_ingest_errors_total", source="http", kind="bad_body") == 4


def test_a_slow_body_is_408_and_closed(door) -> None:
    srv, pipeline = door
    head = (
        f"POST /v1/items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Length: 100\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(head + b'{"text": ')
        t0 = time.monotonic()
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    head_out, _, body = data.partition(b"\r\n\r\n")
    assert head_out.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in head_out
    assert json.loads(body) == {"error": "request body not received within 0.5 s"}
    assert time.monotonic() - t0 < 5
    assert metric(pipeline, "finsent_ingest_errors_total", source="http", kind="body_timeout") == 1


def test_health_readiness_and_metrics_answers(door) -> None:
    srv, _ = door
    assert call(srv, "/healthz")[:2] == (200, {"status": "ok", "kafka": "dry-run"})
    assert call(srv, "/readyz")[:2] == (200, {"ready": True, "status": "ready"})
    status, res, hdrs = call(srv, "/metrics")
    assert (status, res) == (
        401,
        {"error": "/metrics needs the bearer token here; or scrape --metrics-port (loopback)"},
    )
    assert hdrs["www-authenticate"] == 'Bearer realm="finsent"'
    status, text, hdrs = call(srv, "/metrics", headers=AUTH)
    assert status == 200 and hdrs["content-type"] == CONTENT_TYPE_LATEST
    assert "finsent_ingest_items_fetched_total" in str(text)


def test_not_ready_is_503(tmp_path) -> None:
    srv = served(_pipeline(tmp_path), ready=lambda: (False, "broker 10.0.0.1:9092 down"))
    try:
        assert call(srv, "/readyz")[:2] == (503, {"ready": False, "status": "not ready"})
    finally:
        srv.close()
