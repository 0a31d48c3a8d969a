"""Reliability of the ingest side against hostile servers and bytes (issue 22, items 3 and 10, and minors).

Item 3: a feed server that sends its headers one byte a second is a real socket server on loopback,
not a mock: before the fix a fetch from it never ended (the 20 s deadline was only checked while the
body was read), and eight of them took every slot of the poller's pool so a good feed was never
polled again. The numbers asserted: the fetch fails as ``timeout`` within deadline + 2 s, and a good
feed in a pool full of slow feeds is still polled at least 3 times in 8 s.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
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
from tests.ingest.test_ingest_support import LocalHTTP

DATA = Path(__file__).parents[1] / "data" / "ingest"


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
    return Pipeline(
        publisher=None,
        dedup=DedupStore(tmp_path / "d.sqlite3"),
        metrics=IngestMetrics(CollectorRegistry()),
        out=io.StringIO(),
    )


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
def test_rss_once_against_a_slow_header_feed_ends_at_its_deadline(slow_server, tmp_path) -> None:
    """The probe's case as a real process: `finsent ingest rss --once` was still running at 150 s."""
    env = {**os.environ, "FINSENT_INGEST_FETCH_TIMEOUT_S": "2", "FINSENT_INGEST_STATE_DIR": str(tmp_path)}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "finsent", "ingest", "rss", "--once", "--dry-run", slow_server.url()],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    took = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr[-2000:]  # the one source failed
    assert "failed (timeout)" in proc.stderr and "no complete response within 2s" in proc.stderr
    assert took < 2 + 2 + 15, f"took {took:.1f}s"  # deadline + 2 s + the interpreter's start on a busy machine


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

    Before the fix the good feed got 0 polls (the slow polls never ended) and nothing was logged; with the
    deadline alone (no slot kept for working sources) 6 of 13, as the slow feeds retook every freed slot.
    """
    good_srv = LocalHTTP()
    good_srv.static("/feed.xml", (DATA / "feed_a.xml").read_bytes(), "application/rss+xml")
    pipe = _pipeline(tmp_path)
    fetcher = Fetcher(user_agent="finsent-test/1", timeout_s=1.5, max_bytes=1_000_000)
    slow = [FeedSource(slow_server.url(f"/feed{n}.xml?n={n}"), fetcher, interval_s=0.5) for n in range(8)]
    for n, src in enumerate(slow):
        src.name = f"rss:slow{n}"  # one metrics label each (they share a host)
    good = FeedSource(good_srv.url("/feed.xml"), fetcher, interval_s=0.5, remember_validators=False)
    # the slow feeds are scheduled first, and retry 0.5 s after each failure (no growing back-off)
    poller = Poller([*slow, good], pipe, max_workers=8, max_backoff_s=0.5)
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
    print(f"good feed: {good_polls} polls in {seconds:.0f}s")
    # due every 0.5 s once the first slow polls hit their deadline (1.5 s): 13 (measured 13); 9 at least.
    # Without a slot kept for working sources the slow feeds retake the freed slots: 6 measured, 0 before any fix
    assert good_polls >= 9, f"the good feed was polled {good_polls} times in {seconds:.0f}s"
    timeouts = [pipe.metrics.errors.labels(s.name, "timeout")._value.get() for s in slow]
    assert all(n >= 1 for n in timeouts), timeouts  # every slow poll that ended was counted as failed...
    logged = [r for r in caplog.records if "failed (timeout)" in r.getMessage()]
    assert len(logged) == sum(timeouts)  # ...and logged once
    assert slow_server.connections >= 8


# --- item 10: one bad byte must not corrupt the other items of a request ----------------------------

GOOD = "Société Générale … €5 dividend"
MOJIBAKE = ("Ã©", "â€¦", "â‚¬")  # what cp1252 makes of é, … and € when it re-reads their UTF-8 bytes


def _no_mojibake(text: str) -> bool:
    return not any(m in text for m in MOJIBAKE)


def test_decode_bytes_never_re_decodes_good_text() -> None:
    from finsent.ingest.normalize import UndecodableBytes, decode_bytes

    good = GOOD.encode()
    body = good + b" \xff " + good  # one byte that is not UTF-8 between two good texts
    text = decode_bytes(body)  # loose text: only the bad byte is read as Windows-1252
    assert text == f"{GOOD} \u00ff {GOOD}" and _no_mojibake(text)
    assert decode_bytes(b"caf\xe9") == "café"  # a Latin-1 field given as bytes still reads
    with pytest.raises(UndecodableBytes) as exc:
        decode_bytes(body, "application/json", strict=True)  # a JSON body: refused, with the offset
    assert exc.value.offset == len(good) + 1 and f"offset {len(good) + 1}" in str(exc.value)
    with pytest.raises(UndecodableBytes) as exc:
        decode_bytes(b"\xef\xbb\xbf" + good + b"\xc3(", strict=True)  # the offset counts the BOM too
    assert exc.value.offset == 3 + len(good)
    # a declared charset is still honoured, strictly too (ISO-8859-1 read as cp1252, its 5 holes as Latin-1)
    assert decode_bytes("Café €".encode("cp1252"), "application/json; charset=ISO-8859-1", strict=True) == "Café €"
    assert decode_bytes(b"a\x81b", "application/json; charset=latin-1", strict=True) == "a\x81b"


def _mixed_body() -> tuple[bytes, int]:
    """A JSON array: a good item, then an item whose text has one raw byte that is not UTF-8; and its offset."""
    head = json.dumps([{"text": GOOD, "id": "good-1"}], ensure_ascii=False)[:-1].encode() + b', {"text": "bad '
    return head + b'\xff byte", "id": "bad-1"}]', len(head)


@pytest.mark.faults
def test_push_with_one_bad_byte_is_refused_with_its_offset_and_stores_nothing(tmp_path) -> None:
    from finsent.ingest.http_push import create_app
    from tests.ingest.test_ingest_http import TOKEN, AppThread

    out = tmp_path / "out.jsonl"
    pipe = Pipeline(
        publisher=None,
        dedup=DedupStore(tmp_path / "d.sqlite3"),
        metrics=IngestMetrics(CollectorRegistry()),
        out=open(out, "w"),  # noqa: SIM115
    )
    srv = AppThread(create_app(pipe, token=TOKEN, max_body_bytes=20_000, max_items=50))
    try:
        body, offset = _mixed_body()
        for ctype in ("application/json", "application/json; charset=utf-8", "application/x-ndjson"):
            payload = body if "ndjson" not in ctype else body[1:-1].replace(b"}, {", b"}\n{")
            at = payload.index(b"\xff")
            assert at == (offset if "ndjson" not in ctype else offset - 2)
            status, res, _ = srv.request("/v1/items", payload, ctype=ctype)
            assert status == 400, (ctype, status, res)
            assert f"offset {at}" in res["error"] and "0xff" in res["error"], res
        status, res, _ = srv.request("/v1/items", json.dumps([{"text": GOOD, "id": "good-1"}]).encode())
        assert status == 202 and res["accepted"] == ["good-1"]
    finally:
        srv.close()
        pipe.out.close()
    printed = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(p["id"], p["text"]) for p in printed] == [("good-1", GOOD)]  # published once, exactly, no mojibake


@pytest.mark.integration
@pytest.mark.faults
def test_push_with_one_bad_byte_never_reaches_kafka_garbled(kafka_bootstrap, unique_name, tmp_path) -> None:
    """Through a real broker: what is on finsent.raw after a good request and a request with one bad byte."""
    from finsent.core.settings import Settings
    from finsent.ingest.http_push import create_app
    from finsent.ingest.publisher import Publisher
    from tests.ingest.test_ingest_http import TOKEN, AppThread
    from tests.ingest.test_ingest_support import consume_all

    settings = Settings(brokers=kafka_bootstrap, topic_raw=f"raw.{unique_name}", partitions=1)
    pipe = Pipeline(
        publisher=Publisher(settings),
        dedup=DedupStore(tmp_path / "d.sqlite3"),
        metrics=IngestMetrics(CollectorRegistry()),
    )
    srv = AppThread(create_app(pipe, token=TOKEN, publish_timeout_s=10))
    try:
        body, offset = _mixed_body()
        status, res, _ = srv.request("/v1/items", body)
        assert status == 400 and f"offset {offset}" in res["error"]
        status, res, _ = srv.request("/v1/items", json.dumps([{"text": GOOD, "id": f"ok-{unique_name}"}]).encode())
        assert status == 202
        got = consume_all(kafka_bootstrap, settings.kafka.topic_raw, expect=1)
    finally:
        srv.close()
        pipe.publisher.close()
    assert [(r["id"], r["text"]) for r in got] == [(f"ok-{unique_name}", GOOD)]


# --- minors: stray CSV quotes, replay progress, ids with whitespace, years the store cannot hold ------------


def test_a_stray_quote_that_closes_an_open_one_lines_later_is_a_bad_row_not_merged_rows(tmp_path) -> None:
    from finsent.ingest.replay import iter_file_records

    path = tmp_path / "stray.csv"
    path.write_text('id,text\n1,"abc\n2,def\n3,gh"i\n4,ok\n5,"a real\nmulti-line field"\n')
    bad: list = []
    got = [(r.item.id, r.item.text) for r in iter_file_records(path, on_bad_row=bad.append)]
    assert [(b.line, b.reason) for b in bad] == [(2, "unterminated_quote")]
    # before: [("1", "abc 2,def 3,ghi"), ("4", "ok"), ...]: three rows silently merged into one
    assert got == [("2", "def"), ("3", 'gh"i'), ("4", "ok"), ("5", "a real multi-line field")]


def test_replay_prints_progress_lines_without_a_terminal(tmp_path, capsys, monkeypatch) -> None:
    from finsent.ingest import replay as replay_mod

    monkeypatch.setattr(replay_mod, "PROGRESS_EVERY_S", 0.0)
    path = tmp_path / "rows.csv"
    path.write_text(
        "text,published_at\n"
        + "".join(f"row {i},2024-01-01T00:00:00Z\n" for i in range(20))
        + "bad,2100-01-01T00:00:00Z\n"
    )
    stats = replay_mod.replay([path], _pipeline(tmp_path), progress=True)
    assert (stats.produced, stats.skipped) == (20, 1)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("replay: ")]
    assert len(lines) >= 3  # one per row here (every 0 s); every 5 s by default
    assert lines[-1] == "replay: 21 rows read, 20 published, 1 bad (done)"


def test_ids_with_surrounding_whitespace_are_refused_not_stripped(tmp_path) -> None:
    from finsent.ingest.normalize import Skip, make_item
    from finsent.ingest.replay import iter_file_records

    assert make_item(source="s", source_type="news", text="t", item_id_override="a").id == "a"
    for bad_id in (" a", "a ", "a\n", "\ta"):
        with pytest.raises(Skip) as exc:
            make_item(source="s", source_type="news", text="t", item_id_override=bad_id)
        assert exc.value.reason == "bad_id" and "whitespace" in exc.value.detail
    path = tmp_path / "ids.jsonl"
    path.write_text('{"id": "x1", "text": "one"}\n{"id": "x1 ", "text": "two"}\n')
    bad: list = []
    assert [r.item.id for r in iter_file_records(path, on_bad_row=bad.append)] == ["x1"]  # two ids, not one
    assert [(b.line, b.reason) for b in bad] == [(2, "bad_id")]


def test_times_the_store_cannot_hold_are_unreadable_with_a_reason_not_clamped(tmp_path) -> None:
    from finsent.ingest.normalize import make_item, to_utc

    for when in (
        "2106-02-07T06:28:16Z",
        "2300-01-01T00:00:00Z",
        "1969-12-31T23:59:59Z",
        "1900-01-01",
        "Sat, 01 Jan 2200 00:00:00 GMT",
        5_000_000_000,
    ):
        assert to_utc(when) is None, when  # an unknown time, never 1970 or 2106
        why: list[str] = []  # every ingester: the item is kept without a time, and told why
        item = make_item(source="s", source_type="news", text="t", published=when, on_unparsed_date=why.append)
        assert item.published_at is None and "1970-01-01 .. 2106-02-07" in why[0], when
    for when in ("1970-01-01T00:00:00Z", "2106-02-07T06:28:15Z", "2024-05-01T12:00:00Z"):
        assert to_utc(when) is not None and to_utc(when, strict=True) is not None
