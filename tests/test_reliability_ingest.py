"""Reliability of the ingest side against hostile servers and bytes (issue 22, items 3 and 10, and minors).

Item 3: a feed server that sends its headers one byte a second is a real socket server on loopback,
not a mock: before the fix a fetch from it never ended (the 20 s deadline was only checked while the
body was read), and eight of them took every slot of the poller's pool so a good feed was never
polled again. The numbers asserted: the fetch fails as ``timeout`` within deadline + 2 s, and a good
feed in a pool full of slow feeds is still polled at least 3 times in 8 s.
"""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from finsent.ingest.dedup import DedupStore
from finsent.ingest.feeds import FeedSource
from finsent.ingest.fetch import Fetcher, FetchError
from finsent.ingest.metrics import IngestMetrics
from finsent.ingest.pipeline import Pipeline
from finsent.ingest.poller import Poller
from tests.test_ingest_support import LocalHTTP

DATA = Path(__file__).parent / "data" / "ingest"


class SlowHeaderServer:
    """Accepts every connection, reads the request, then drips its response headers one byte a second.

    The header never ends (a long ``X-Slow`` line), so only the client's whole-request deadline can
    end the exchange. ``connections`` counts accepted connections; ``open`` those still dripping.
    """

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.open = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="slow-header-accept", daemon=True).start()

    def url(self, path: str = "/feed.xml") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self.open += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/rss+xml\r\nX-Slow: " + b"a" * 100_000
        try:
            conn.recv(65536)
            for byte in head:
                if self._closed.wait(self.interval_s):
                    break
                conn.sendall(bytes([byte]))
        except OSError:  # the client gave up and closed: what we want
            pass
        finally:
            conn.close()
            with self._lock:
                self.open -= 1

    def close(self) -> None:
        self._closed.set()
        self.sock.close()


@pytest.fixture
def slow_server():
    srv = SlowHeaderServer()
    yield srv
    srv.close()


def _pipeline(tmp_path: Path) -> Pipeline:
    return Pipeline(publisher=None, dedup=DedupStore(tmp_path / "d.sqlite3"),
                    metrics=IngestMetrics(CollectorRegistry()), out=io.StringIO())


@pytest.mark.faults
def test_slow_headers_time_out_within_the_whole_request_deadline(slow_server) -> None:
    deadline = 2.0
    fetcher = Fetcher(user_agent="finsent-test/1", timeout_s=deadline, max_bytes=100_000)
    started = time.monotonic()
    with pytest.raises(FetchError) as exc:
        fetcher.get(slow_server.url())
    took = time.monotonic() - started
    assert exc.value.kind == "timeout", exc.value
    assert deadline - 0.1 <= took <= deadline + 2.0, f"timed out after {took:.2f}s, deadline {deadline}s"
    # the client closed its socket: the server's drip ends on its next write (within ~2 intervals)
    until = time.monotonic() + 5
    while slow_server.open and time.monotonic() < until:
        time.sleep(0.1)
    assert slow_server.open == 0


@pytest.mark.faults
def test_deadline_covers_a_chain_of_slow_redirects() -> None:
    """Five hops of 0.7 s each: every hop is within a per-read timeout, the whole chain is not."""
    srv = LocalHTTP()

    def hop(req):  # type: ignore[no-untyped-def]
        time.sleep(0.7)
        n = int(req.path.rsplit("/", 1)[1])
        return 302, {"Location": f"/hop/{n + 1}"}, b""

    for n in range(10):
        srv.routes[f"/hop/{n}"] = hop
    try:
        fetcher = Fetcher(user_agent="t", timeout_s=2.0, max_bytes=1000, max_redirects=8)
        started = time.monotonic()
        with pytest.raises(FetchError) as exc:
            fetcher.get(srv.url("/hop/0"))
        assert exc.value.kind == "timeout"
        assert time.monotonic() - started <= 2.0 + 2.0
        assert len(srv.hits("/hop/3")) <= 1 and not srv.hits("/hop/5")  # the chain stopped at the deadline
    finally:
        srv.close()


@pytest.mark.faults
def test_eight_slow_feeds_do_not_starve_a_good_feed(slow_server, tmp_path, caplog) -> None:
    """A pool of 8 (the default) full of slow-header feeds: the good feed is still polled, the slow ones fail.

    Before the fix the good feed got 0 polls (the slow polls never ended) and nothing was logged.
    """
    good_srv = LocalHTTP()
    good_srv.static("/feed.xml", (DATA / "feed_a.xml").read_bytes(), "application/rss+xml")
    pipe = _pipeline(tmp_path)
    fetcher = Fetcher(user_agent="finsent-test/1", timeout_s=1.5, max_bytes=1_000_000)
    slow = [FeedSource(slow_server.url(f"/feed{n}.xml?n={n}"), fetcher, interval_s=0.5) for n in range(8)]
    for n, src in enumerate(slow):
        src.name = f"rss:slow{n}"  # one metrics label each (they share a host)
    good = FeedSource(good_srv.url("/feed.xml"), fetcher, interval_s=0.5, remember_validators=False)
    poller = Poller([*slow, good], pipe, max_workers=8, max_backoff_s=2.0)  # the slow feeds are scheduled first
    seconds = 8.0
    caplog.set_level(logging.ERROR, logger="finsent.ingest.poller")
    t = threading.Thread(target=poller.run_forever, kwargs={"stop_grace_s": 3.0})
    try:
        t.start()
        time.sleep(seconds)
    finally:
        poller.stop.set()
        t.join(10)
        good_srv.close()
    assert not t.is_alive()
    good_polls = len(good_srv.hits("/feed.xml"))
    assert good_polls >= 3, f"the good feed was polled {good_polls} times in {seconds:.0f}s"
    timeouts = [pipe.metrics.errors.labels(s.name, "timeout")._value.get() for s in slow]
    assert all(n >= 1 for n in timeouts), timeouts  # every slow poll that ended was counted as failed...
    logged = [r for r in caplog.records if "failed (timeout)" in r.getMessage()]
    assert len(logged) == sum(timeouts)  # ...and logged once
    assert slow_server.connections >= 8
