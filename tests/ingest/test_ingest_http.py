"""HTTP push endpoint: auth, sizes, formats, per-item errors, acks from a real broker, 503 without one."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from finsent.core.settings import Settings
from finsent.ingest.dedup import DedupStore
from finsent.ingest.http_push import check_bind, create_app, parse_body
from finsent.ingest.metrics import IngestMetrics
from finsent.ingest.pipeline import Pipeline
from finsent.ingest.publisher import Publisher
from finsent.stream.broker import EmbeddedBroker, free_port
from tests.ingest.test_ingest_support import consume_all

TOKEN = "s3cret-token"


class AppThread:
    """Run an aiohttp app on 127.0.0.1:<free port> in a background event loop."""

    def __init__(self, app: web.Application) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner = web.AppRunner(app)
        asyncio.run_coroutine_threadsafe(self.runner.setup(), self.loop).result(10)
        self.port = free_port()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        asyncio.run_coroutine_threadsafe(site.start(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def request(
        self,
        path: str,
        body: bytes | None = None,
        *,
        token: str | None = TOKEN,
        ctype: str = "application/json",
        method: str | None = None,
    ) -> tuple[int, dict, dict]:
        headers = {"Content-Type": ctype}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=body,
            headers=headers,
            method=method or ("POST" if body is not None else "GET"),
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                raw, status, hdrs = resp.read(), resp.status, dict(resp.headers)
        except urllib.error.HTTPError as exc:
            raw, status, hdrs = exc.read(), exc.code, dict(exc.headers)
        try:
            return status, json.loads(raw), hdrs
        except json.JSONDecodeError:
            return status, {"raw": raw.decode()}, hdrs


def _pipeline(tmp_path, publisher=None) -> Pipeline:
    return Pipeline(
        publisher=publisher,
        dedup=DedupStore(tmp_path / "d.sqlite3"),
        metrics=IngestMetrics(CollectorRegistry()),
        out=open(tmp_path / "out.jsonl", "w"),
    )  # noqa: SIM115


@pytest.fixture
def dry_server(tmp_path):
    srv = AppThread(create_app(_pipeline(tmp_path), token=TOKEN, max_body_bytes=20_000, max_items=50))
    yield srv
    srv.close()


def test_auth_required_and_constant_time_compare(dry_server) -> None:
    body = json.dumps({"text": "hello"}).encode()
    assert dry_server.request("/v1/items", body, token=None)[0] == 401
    status, _, headers = dry_server.request("/v1/items", body, token="wrong")
    assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert dry_server.request("/v1/items", body)[0] == 202


def test_formats_object_array_ndjson_and_per_item_errors(dry_server) -> None:
    status, res, _ = dry_server.request("/v1/items", json.dumps({"text": "one $AAPL", "id": "client-1"}).encode())
    assert status == 202 and res["accepted"] == ["client-1"] and res["rejected"] == []
    mixed = [
        {"text": "<p>Good &amp; clean</p>", "url": "https://e.com/a?utm_source=x", "published_at": "2024-01-02T03:04Z"},
        {"title": "no text"},
        {"text": 5},
        {"text": "<b> </b>"},
        {"text": "bad time", "published_at": "2100-01-01T00:00:00Z"},
        "not an object",
        {"text": "fine too", "source_type": "social", "tickers": ["$NVDA"]},
    ]
    status, res, _ = dry_server.request("/v1/items", json.dumps(mixed).encode())
    assert status == 202 and len(res["accepted"]) == 2
    reasons = {r["index"]: r["reason"] for r in res["rejected"]}
    assert reasons == {1: "missing_field", 2: "bad_type", 3: "empty_text", 4: "bad_time", 5: "not_object"}
    status, res, _ = dry_server.request("/v1/items", json.dumps([{"text": "when?", "published_at": "soon"}]).encode())
    assert status == 202 and len(res["accepted"]) == 1 and res["rejected"] == []  # kept, the client told why
    assert [(w["index"], w["reason"]) for w in res["warnings"]] == [(0, "unparsed_date")]
    nd = b'{"text": "line one"}\n\n{"text": "line two"}\n'
    status, res, _ = dry_server.request("/v1/items", nd, ctype="application/x-ndjson")
    assert status == 202 and len(res["accepted"]) == 2
    status, res, _ = dry_server.request("/v1/items", nd)  # same items again: duplicates, not re-published
    assert status == 202 and res["accepted"] == [] and len(res["duplicates"]) == 2
    status, res, _ = dry_server.request("/v1/items", json.dumps([{"title": "x"}]).encode())
    assert status == 422 and res["rejected"][0]["reason"] == "missing_field"


def test_bad_bodies_sizes_and_types(dry_server) -> None:
    assert dry_server.request("/v1/items", b"{not json")[0] == 400
    assert dry_server.request("/v1/items", b"")[0] == 400
    assert dry_server.request("/v1/items", b"<html/>", ctype="text/html")[0] == 415
    big = json.dumps({"text": "x" * 30_000}).encode()
    status, res, _ = dry_server.request("/v1/items", big)
    assert status == 413 and "limit" in res["error"]
    many = json.dumps([{"text": f"t{i}"} for i in range(51)]).encode()
    assert dry_server.request("/v1/items", many)[0] == 413
    latin = '{"text": "Caf\u00e9 cr\u00e8me"}'.encode("latin-1")
    status, res, _ = dry_server.request("/v1/items", latin, ctype="application/json; charset=ISO-8859-1")
    assert status == 202


def test_healthz_and_metrics(dry_server) -> None:
    dry_server.request("/v1/items", json.dumps({"text": "counted"}).encode())
    status, res, _ = dry_server.request("/healthz")
    assert status == 200 and res["status"] == "ok" and res["kafka"] == "dry-run"
    status, res, _ = dry_server.request("/metrics")
    assert status == 200 and 'finsent_ingest_items_published_total{source="http"} 1.0' in res["raw"]


def test_bind_without_token_only_on_loopback() -> None:
    assert check_bind("127.0.0.1", None) is None
    assert check_bind("0.0.0.0", None) and check_bind("0.0.0.0", "a-real-token-0123456789") is None
    # a token that is no secret is refused on any address (issue 25): a placeholder, or under 16 characters
    assert "placeholder" in (check_bind("127.0.0.1", "CHANGE-ME") or "")
    assert "at least 16" in (check_bind("0.0.0.0", "short-token") or "")
    assert parse_body(b'[{"a":1},{"b":2}]', "application/json") == [{"a": 1}, {"b": 2}]


@pytest.mark.integration
def test_202_only_after_ack_then_503_when_broker_gone_and_nothing_lost(kafka_bootstrap, unique_name, tmp_path):
    settings = Settings(brokers=kafka_bootstrap, topic_raw=f"raw.{unique_name}", partitions=2)
    srv = AppThread(create_app(_pipeline(tmp_path / "a", Publisher(settings)), token=TOKEN, publish_timeout_s=10))
    try:
        for _ in range(50):  # the endpoint connects to Kafka in the background at start-up
            if srv.request("/healthz")[1]["kafka"] == "connected":
                break
            time.sleep(0.1)
        assert srv.request("/healthz")[1]["kafka"] == "connected"
        items = [{"text": f"pushed {i}", "id": f"push-{unique_name}-{i}"} for i in range(5)]
        status, res, _ = srv.request("/v1/items", json.dumps(items).encode())
        assert status == 202 and sorted(res["accepted"]) == sorted(i["id"] for i in items)
        got = consume_all(kafka_bootstrap, settings.kafka.topic_raw, expect=5)
        assert sorted(r["id"] for r in got) == sorted(res["accepted"])
    finally:
        srv.close()

    port = free_port()  # nothing listens here yet: "the broker is gone"
    down = Settings(brokers=f"127.0.0.1:{port}", topic_raw=f"raw2.{unique_name}", partitions=1)
    dedup_dir = tmp_path / "b"
    pub = Publisher(down, delivery_timeout_s=2, backoff_s=(0.2, 0.5))
    srv = AppThread(create_app(_pipeline(dedup_dir, pub), token=TOKEN, publish_timeout_s=2))
    body = json.dumps([{"text": "must not be lost", "id": f"keep-{unique_name}"}]).encode()
    try:
        status, res, headers = srv.request("/v1/items", body)
        assert status == 503 and headers.get("Retry-After") and res["published"] == []
        broker = EmbeddedBroker(port=port, start_timeout_s=30).start()
        try:
            status, res, _ = srv.request("/v1/items", body)  # the client retries the same request
            assert status == 202 and res["accepted"] == [f"keep-{unique_name}"]
            got = consume_all(broker.bootstrap, down.kafka.topic_raw, expect=1)
            assert [r["id"] for r in got] == [f"keep-{unique_name}"]
            srv.close()
            pub.close()
        finally:
            broker.stop(timeout_s=1)
    finally:
        if srv.thread.is_alive():
            srv.close()


@pytest.mark.integration
def test_concurrent_requests_are_coalesced_and_each_answered_for_its_items(kafka_bootstrap, unique_name, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    settings = Settings(brokers=kafka_bootstrap, topic_raw=f"raw.{unique_name}", partitions=2)
    pub = Publisher(settings)
    app = create_app(_pipeline(tmp_path, pub), token=TOKEN)
    srv = AppThread(app)
    try:

        def push(n: int) -> tuple[int, dict]:
            # every request carries its own item and one shared item: exactly one request may publish the latter
            body = [{"text": f"item {n}", "id": f"c-{unique_name}-{n}"}, {"text": "shared", "id": f"c-{unique_name}-s"}]
            status, res, _ = srv.request("/v1/items", json.dumps(body).encode())
            return status, res

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(push, range(40)))
        assert all(status == 202 for status, _ in results)
        for n, (_, res) in enumerate(results):
            assert f"c-{unique_name}-{n}" in res["accepted"]
        shared = f"c-{unique_name}-s"
        assert sum(shared in res["accepted"] for _, res in results) == 1
        assert sum(shared in res["duplicates"] for _, res in results) == 39
        got = consume_all(kafka_bootstrap, settings.kafka.topic_raw, expect=41)
        assert sorted(r["id"] for r in got) == sorted([f"c-{unique_name}-{n}" for n in range(40)] + [shared])
    finally:
        srv.close()
        pub.close()
