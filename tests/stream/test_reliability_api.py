"""Issue 22, item 6: the worker's HTTP server (``/metrics``, probes and the ``/v1/*`` data API) against hostile clients.

Real sockets on loopback, the real server (:func:`finsent.stream.metrics.serve_metrics`) and, at the end, a real
``finsent worker`` process. What is asserted, in numbers: 1,000 half-sent requests leave at most ``cap`` handler
threads and every one of them is closed within the header timeout (+1 s); a good request answers meanwhile in
under 2 s; a client dripping one byte at a time is cut at the header deadline; past the cap with every
connection busy, a new one gets 503 at once; the data API needs the bearer token (401), answers 403 beyond
loopback without one, and the probes stay open; SIGTERM of a worker holding 300 half-open connections
returns within 10 s.
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from finsent.stream.broker import free_port
from finsent.stream.metrics import GuardedHTTPServer, is_loopback, serve_metrics
from tests.stream_helpers import stream_settings, wait_for, worker_env

HALF_SENT = b"GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Agent: slow"  # no end of headers, ever


def _handler_threads() -> int:
    return sum(1 for t in threading.enumerate() if "process_request_thread" in t.name)


def _get(
    port: int, path: str, token: str | None = None, host: str = "127.0.0.1", timeout: float = 5.0
) -> tuple[int, str]:
    req = urllib.request.Request(
        f"http://{host}:{port}{path}", headers={"Authorization": f"Bearer {token}"} if token else {}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def serve() -> Iterator[Callable[..., GuardedHTTPServer]]:
    servers: list[GuardedHTTPServer] = []

    def start(host: str = "127.0.0.1", **kw: Any) -> GuardedHTTPServer:
        server = serve_metrics(host, free_port(), registry=kw.pop("registry", CollectorRegistry()), **kw)
        assert server is not None
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (EOF or reset); False while it is still open."""
    sock.setblocking(False)
    try:
        return sock.recv(4096) == b"" or True  # data (a 503 line) means it answered and closes
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_a_thousand_half_sent_requests_hold_at_most_cap_threads_and_are_closed(serve) -> None:
    cap, timeout_s = 64, 2.0
    server = serve(max_connections=cap, header_timeout_s=timeout_s)
    port = server.server_address[1]
    before = _handler_threads()
    socks: list[socket.socket] = []
    peak = 0
    try:
        for i in range(1000):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(HALF_SENT)
            socks.append(s)
            if i % 50 == 0:
                peak = max(peak, _handler_threads() - before)
        peak = max(peak, _handler_threads() - before)
        assert server.open_connections <= cap
        # at most the cap, plus the threads of connections just cut that are still ending (a few ms each,
        # longer on a loaded machine); then the cap itself
        assert peak <= cap + 16, f"{peak} handler threads for a cap of {cap}"
        wait_for(lambda: _handler_threads() - before <= cap, 3, f"at most {cap} handler threads")
        # a good request answers meanwhile (it takes the place of the oldest half-sent one)
        t0 = time.monotonic()
        status, body = _get(port, "/healthz")
        assert (status, body) == (200, "ok\n") and time.monotonic() - t0 < 2.0
        assert server.evicted >= 1000 - cap
        # the header deadline closes the rest
        deadline = time.monotonic() + timeout_s + 1.5
        while server.open_connections and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.open_connections == 0
        time.sleep(0.3)
        assert _handler_threads() - before == 0
        still_open = sum(1 for s in socks if not _closed_by_server(s))
        assert still_open == 0, f"{still_open} of 1000 half-sent connections still open after {timeout_s + 1.5} s"
    finally:
        for s in socks:
            s.close()


def test_a_client_dripping_its_headers_is_cut_at_the_deadline(serve) -> None:
    server = serve(header_timeout_s=1.5)
    s = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5)
    t0 = time.monotonic()
    cut_at = None
    try:
        for ch in b"GET /metrics HTTP/1.1\r\nHost: a-very-long-host-name-sent-slowly\r\n":
            s.sendall(bytes([ch]))  # one byte every 0.2 s: each read is quick, the whole is not
            time.sleep(0.2)
            if _closed_by_server(s):
                cut_at = time.monotonic() - t0
                break
            s.setblocking(True)
    except OSError:
        cut_at = time.monotonic() - t0
    finally:
        s.close()
    assert cut_at is not None and 1.4 <= cut_at <= 2.8, cut_at
    assert server.timed_out == 1


def test_past_the_cap_with_every_connection_busy_a_new_one_gets_503_at_once(serve) -> None:
    release = threading.Event()

    def slow(_params: dict[str, str]) -> tuple[int, Any]:
        release.wait(10)
        return 200, {"ok": True}

    server = serve(max_connections=4, routes={"/v1/slow": slow})
    port = server.server_address[1]
    busy = [threading.Thread(target=_get, args=(port, "/v1/slow"), kwargs={"timeout": 15}) for _ in range(4)]
    try:
        for t in busy:
            t.start()
        wait_for(
            lambda: server.open_connections == 4 and all(d is None for d in server._open.values()),
            5,
            "4 requests being answered",
        )
        t0 = time.monotonic()
        status, body = _get(port, "/healthz")
        assert status == 503 and "too many open connections" in body
        assert time.monotonic() - t0 < 1.0 and server.refused == 1
    finally:
        release.set()
        for t in busy:
            t.join(15)
    assert _get(port, "/healthz") == (200, "ok\n")


def test_the_data_api_needs_the_token_and_the_probes_stay_open(serve) -> None:
    text = "Acme CEO arrested for fraud (stored item text)"
    reg = CollectorRegistry()
    Counter("finsent_items_scored", "x", ["topic"], registry=reg).labels("Macro").inc()
    routes = {"/v1/top": lambda _q: (200, {"items": [{"text": text}]})}
    server = serve(registry=reg, routes=routes, api_token="s3cret-token", ready=lambda: (True, "ready"))
    port = server.server_address[1]
    status, body = _get(port, "/v1/top")
    assert status == 401 and "FINSENT_API_TOKEN" in body and text not in body
    assert _get(port, "/v1/top", token="wrong")[0] == 401
    status, body = _get(port, "/v1/top", token="s3cret-token")
    assert status == 200 and json.loads(body)["items"][0]["text"] == text
    for path, expect in (("/metrics", "finsent_items_scored_total"), ("/healthz", "ok"), ("/readyz", "ready")):
        status, body = _get(port, path)
        assert status == 200 and expect in body and text not in body, path


def test_without_a_token_the_data_api_serves_only_on_loopback(serve) -> None:
    routes = {"/v1/count": lambda _q: (200, {"rows": 3})}
    local = serve(routes=routes)
    assert _get(local.server_address[1], "/v1/count") == (200, '{"rows": 3}\n')
    wide = serve("0.0.0.0", routes=routes)
    status, body = _get(wide.server_address[1], "/v1/count")
    assert status == 403 and "set FINSENT_API_TOKEN" in json.loads(body)["error"]
    assert _get(wide.server_address[1], "/healthz") == (200, "ok\n")
    assert _get(wide.server_address[1], "/metrics")[0] == 200
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("::")


@pytest.mark.integration
def test_bad_query_parameters_are_400_not_503(serve, chdb_db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    from finsent.stream.store import open_store
    from finsent.stream.store.reports import api_handlers

    store = open_store(chdb_db_url)
    store.ensure_schema()
    try:
        server = serve(routes=api_handlers(lambda: store))
        port = server.server_address[1]
        for since in ("inf", "1e20", "nan", "abc"):
            status, body = _get(port, f"/v1/count?since={since}")
            assert status == 400 and "bad query parameter" in body, (since, status, body)
        assert _get(port, "/v1/count?since=60")[0] == 200
    finally:
        store.close()
    assert "Traceback" not in caplog.text


@pytest.mark.integration
@pytest.mark.faults
def test_worker_process_token_and_sigterm_with_300_half_open_connections(
    tmp_path: Path, kafka_bootstrap: str, unique_name: str
) -> None:
    from finsent.models.testing import make_tiny_model

    tiny = make_tiny_model(tmp_path / "tiny")
    store_url = f"chdb://{tmp_path / 'store'}"
    s = stream_settings(kafka_bootstrap, store_url, unique_name)
    port = free_port()
    token = secrets.token_hex(20)
    env = worker_env(
        s,
        tiny,
        FINSENT_PARTITIONS="1",
        FINSENT_METRICS_PORT=str(port),
        FINSENT_METRICS_HOST="0.0.0.0",
        FINSENT_API_TOKEN=token,
        FINSENT_REGISTRY="",
        FINSENT_CACHE_DIR=str(tmp_path / "cache"),
    )
    log = tmp_path / "worker.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "finsent", "worker"], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    socks: list[socket.socket] = []
    try:
        wait_for(lambda: proc.poll() is not None or _get_or_none(port, "/healthz") == 200, 120, "the worker's /healthz")
        assert proc.poll() is None, log.read_text()[-3000:]
        assert _get(port, "/v1/count")[0] == 401
        wait_for(lambda: _get_or_none(port, "/v1/count", token) == 200, 60, "the API with the token")
        assert proc.poll() is None, log.read_text()[-3000:]
        # `finsent query` asks the worker holding the embedded store, with the token from its settings
        out = subprocess.run(
            [sys.executable, "-m", "finsent", "query", "count", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        no_token = {k: v for k, v in env.items() if k != "FINSENT_API_TOKEN"}
        out = subprocess.run(
            [sys.executable, "-m", "finsent", "query", "count", "--json"],
            env=no_token,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode != 0 and "refused its data API (HTTP 401)" in out.stderr, out.stderr[-2000:]
        assert "set FINSENT_API_TOKEN" in out.stderr and "Traceback" not in out.stderr
        for _ in range(300):
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            c.sendall(HALF_SENT)
            socks.append(c)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        took = time.monotonic() - t0
    finally:
        for c in socks:
            c.close()
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert took < 10.0, f"SIGTERM took {took:.1f} s with 300 half-open connections"
    assert "Traceback" not in text
    print(f"SIGTERM of a worker holding 300 half-open connections: exit 0 in {took:.1f} s")


def _get_or_none(port: int, path: str, token: str | None = None) -> int | None:
    try:
        return _get(port, path, token=token, timeout=2)[0]
    except OSError:
        return None
