"""The ingesters as services, with real processes: /healthz and /readyz, SIGTERM in every state, bad HTTP clients.

Every scenario runs `finsent ingest ...` as a subprocess against a real Tansu broker (its own one
where the test kills it) and checks what systemd or Kubernetes would see: the probes, the exit
status, a stop within 10 s (``STOP_BOUND_S``) and no traceback. The push endpoint is attacked with
raw sockets: headers trickled a byte at a time, bodies that never complete, more connections than
the cap, while good clients keep being served.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from finsent.core.wait import WaitTimeout
from finsent.core.wait import wait_until as core_wait_until
from finsent.ingest.service import STOP_BOUND_S
from finsent.stream.broker import EmbeddedBroker, free_port
from tests.ingest.test_ingest_support import LocalHTTP, consume_all

DATA = Path(__file__).parents[1] / "data" / "ingest"
TOKEN = "svc-token-8d1f0c2b7a"  # at least 16 characters: shorter tokens are refused at start (issue 25)

pytestmark = pytest.mark.integration


# -- helpers (also used by test_faults_ingest.py) ------------------------------------------------


class Ingester:
    """``python -m finsent ingest ARGS`` in the background, stderr to a file, stdout captured."""

    def __init__(self, args: list[str], tmp: Path, brokers: str, topic: str, **env: str) -> None:
        self.err_path = tmp / f"ingest-{args[0]}-{time.monotonic_ns()}.err"
        self.out_path = self.err_path.with_suffix(".out")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")}
        full_env.update(
            FINSENT_BROKERS=brokers,
            FINSENT_TOPIC_RAW=topic,
            FINSENT_PARTITIONS="2",
            FINSENT_INGEST_STATE_DIR=str(tmp / "state"),
            FINSENT_LOG_LEVEL="INFO",
            **env,
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "finsent", "ingest", *args],
            env=full_env,
            cwd=tmp,
            stdout=self.out_path.open("w"),
            stderr=self.err_path.open("w"),
        )
        self.took: float | None = None

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def summary(self) -> dict[str, Any]:
        lines = [ln for ln in self.stdout.splitlines() if ln.startswith("{")]
        assert lines, f"no summary line; stderr:\n{self.stderr[-3000:]}"
        return json.loads(lines[-1])

    def sigterm(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then wait; records how long the stop took in ``took``."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        finally:
            self.took = time.monotonic() - t0
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def assert_clean_stop(self, code: int = 0) -> None:
        text = self.stderr
        print(f"{' '.join(self.proc.args[3:5])}: stopped in {self.took:.2f} s, exit {self.proc.returncode}")
        assert self.proc.returncode == code, text[-3000:]
        assert self.took is not None and self.took <= STOP_BOUND_S, f"stop took {self.took:.1f} s\n{text[-2000:]}"
        assert "Traceback" not in text and "Task was destroyed" not in text, text[-3000:]


def get(url: str, token: str | None = None, timeout: float = 5.0) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return -1, str(exc)


def post(
    port: int, body: bytes, token: str | None = None, ctype: str = "application/json", timeout: float = 60.0
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": ctype, **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/items", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, {"raw": raw.decode(errors="replace")}


def wait_until(cond, timeout_s: float, what: str, proc: Ingester | None = None) -> None:
    """finsent.core.wait.wait_until, failing at once (with the ingester's stderr) when ``proc`` has exited."""

    def alive() -> None:
        if proc is not None and proc.proc.poll() is not None:
            raise AssertionError(
                f"the ingester exited ({proc.proc.returncode}) waiting for {what}:\n{proc.stderr[-3000:]}"
            )

    try:
        core_wait_until(cond, timeout_s, 0.1, what=what, check=alive)
    except WaitTimeout as exc:
        detail = f"\n{proc.stderr[-3000:]}" if proc is not None else ""
        raise AssertionError(f"{exc}{detail}") from None


def status_of(url: str) -> int:
    return get(url)[0]


def write_rows(path: Path, n: int, prefix: str) -> list[str]:
    """A JSONL replay file of ``n`` rows with ids ``prefix-i``; returns the ids."""
    ids = [f"{prefix}-{i}" for i in range(n)]
    path.write_text("".join(json.dumps({"id": i, "text": f"row {i} shares of acme move"}) + "\n" for i in ids))
    return ids


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    """A Tansu broker of this test only (it may be killed)."""
    broker = EmbeddedBroker(port=free_port(), start_timeout_s=30).start()
    try:
        yield broker
    finally:
        broker.stop(timeout_s=1)


def kill_broker(broker: EmbeddedBroker) -> None:
    assert broker.proc is not None
    broker.proc.kill()  # no goodbye, like a crashed node
    broker.proc.wait()


@pytest.fixture
def feed_server() -> Iterator[LocalHTTP]:
    srv = LocalHTTP()
    srv.static("/a.xml", (DATA / "feed_a.xml").read_bytes())
    yield srv
    srv.close()


# -- pollers -------------------------------------------------------------------------------------


def test_rss_poller_health_ready_then_sigterm_while_idle(kafka_bootstrap, unique_name, tmp_path, feed_server) -> None:
    port = free_port()
    topic = f"raw.{unique_name}"
    ing = Ingester(
        ["rss", feed_server.url("/a.xml"), "--interval", "3600", "--metrics-port", str(port)],
        tmp_path,
        kafka_bootstrap,
        topic,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: status_of(f"{base}/healthz") == 200, 60, "/healthz", ing)
        wait_until(lambda: status_of(f"{base}/readyz") == 200, 60, "/readyz 200 (connected to Kafka)", ing)
        assert "finsent_ingest_items_fetched_total" in get(f"{base}/metrics")[1]
        wait_until(lambda: "fetched" in ing.stderr, 60, "the first poll", ing)
        time.sleep(0.5)
        ing.sigterm()
    finally:
        ing.kill()
    ing.assert_clean_stop(0)
    summary = ing.summary()
    assert summary["stopped"] == "SIGTERM" and summary["produced"] > 0
    got = consume_all(kafka_bootstrap, topic, expect=summary["produced"])
    assert len(got) == summary["produced"]  # what it counted is on the topic, nothing more


def test_rss_poller_not_ready_without_broker_and_sigterm_mid_publish_to_a_dead_broker(tmp_path, feed_server) -> None:
    port = free_port()
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: the broker is gone
    ing = Ingester(
        [
            "rss",
            feed_server.url("/a.xml"),
            "--interval",
            "3600",
            "--metrics-port",
            str(port),
            "--publish-timeout",
            "120",
        ],
        tmp_path,
        dead,
        "raw.dead",
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: status_of(f"{base}/healthz") == 200, 60, "/healthz", ing)
        code, why = get(f"{base}/readyz")
        assert code == 503 and "Kafka" in why, why
        wait_until(lambda: "did not ack" in ing.stderr, 60, "a publish retrying against the dead broker", ing)
        ing.sigterm()  # the publish would wait 120 s for the broker
    finally:
        ing.kill()
    ing.assert_clean_stop(0)
    summary = ing.summary()
    assert summary["produced"] == 0  # nothing unacknowledged counted as produced
    assert "handed back" in ing.stderr


# -- replay --------------------------------------------------------------------------------------


def test_replay_sigterm_while_publishing_counts_exactly_what_is_on_the_topic(
    kafka_bootstrap, unique_name, tmp_path
) -> None:
    topic = f"raw.{unique_name}"
    path = tmp_path / "rows.jsonl"
    ids = write_rows(path, 3000, unique_name)
    port = free_port()
    ing = Ingester(
        ["replay", str(path), "--rate", "150", "--metrics-port", str(port)], tmp_path, kafka_bootstrap, topic
    )
    try:

        def published() -> float:
            code, text = get(f"http://127.0.0.1:{port}/metrics")
            if code != 200:
                return 0.0
            return sum(
                float(ln.rsplit(" ", 1)[1])
                for ln in text.splitlines()
                if ln.startswith("finsent_ingest_items_published_total{")
            )

        wait_until(lambda: published() >= 100, 90, "100 items acknowledged", ing)
        assert status_of(f"http://127.0.0.1:{port}/readyz") == 200
        ing.sigterm()
    finally:
        ing.kill()
    ing.assert_clean_stop(0)
    summary = ing.summary()
    assert summary["stopped"] == "SIGTERM"
    assert 100 <= summary["produced"] < len(ids)
    got = consume_all(kafka_bootstrap, topic, expect=summary["produced"])
    on_topic = [r["id"] for r in got]
    assert len(on_topic) == len(set(on_topic)) == summary["produced"]  # acked == on the topic, once each
    assert set(on_topic) <= set(ids)


def test_replay_sigterm_while_the_broker_is_gone_hands_back_and_exits_within_bound(
    own_broker, unique_name, tmp_path
) -> None:
    path = tmp_path / "rows.jsonl"
    write_rows(path, 2000, unique_name)
    ing = Ingester(
        ["replay", str(path), "--rate", "100", "--publish-timeout", "120"],
        tmp_path,
        own_broker.bootstrap,
        f"raw.{unique_name}",
    )
    try:
        wait_until(lambda: "connected to Kafka" in ing.stderr, 60, "connected", ing)
        time.sleep(1.0)
        kill_broker(own_broker)
        time.sleep(2.0)  # a publish is in flight, its acks never come (it would wait 30 s for them)
        ing.sigterm()
    finally:
        ing.kill()
    ing.assert_clean_stop(6)  # a replay cut short with unacknowledged rows says so: exit 6, one line
    summary = ing.summary()
    assert summary["stopped"] == "SIGTERM" and summary["unacked"] > 0
    last = ing.stderr.strip().splitlines()[-1]
    assert last.startswith("finsent: error: stopping:") and "handed back" in last, last


def test_replay_sigterm_before_kafka_answers_at_all(tmp_path) -> None:
    path = tmp_path / "rows.jsonl"
    write_rows(path, 50, "never")
    ing = Ingester(["replay", str(path), "--publish-timeout", "120"], tmp_path, f"127.0.0.1:{free_port()}", "raw.x")
    try:
        time.sleep(4.0)  # inside the first bootstrap attempts
        ing.sigterm()
    finally:
        ing.kill()
    ing.assert_clean_stop(6)
    assert ing.summary()["produced"] == 0 and ing.summary()["unacked"] == 50


# -- the push endpoint -----------------------------------------------------------------------------


def _http(tmp: Path, brokers: str, topic: str, *extra: str, token: str | None = TOKEN) -> tuple[Ingester, int]:
    port = free_port()
    env = {"FINSENT_HTTP_TOKEN": token} if token else {}
    ing = Ingester(["http", "--port", str(port), *extra], tmp, brokers, topic, **env)
    wait_until(lambda: status_of(f"http://127.0.0.1:{port}/healthz") == 200, 60, "the endpoint", ing)
    return ing, port


def test_http_readyz_metrics_token_and_sigterm_while_idle(kafka_bootstrap, unique_name, tmp_path) -> None:
    mport = free_port()
    ing, port = _http(tmp_path, kafka_bootstrap, f"raw.{unique_name}", "--metrics-port", str(mport))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: status_of(f"{base}/readyz") == 200, 60, "/readyz 200", ing)
        assert json.loads(get(f"{base}/readyz")[1])["ready"] is True
        status, _ = post(port, json.dumps({"text": "acme up", "id": f"h-{unique_name}"}).encode(), TOKEN)
        assert status == 202
        # the decision on /metrics: behind the token on the public port, open on the loopback metrics port
        assert get(f"{base}/metrics")[0] == 401
        code, text = get(f"{base}/metrics", TOKEN)
        assert code == 200 and 'finsent_ingest_items_published_total{source="http"} 1.0' in text
        code, text = get(f"http://127.0.0.1:{mport}/metrics")
        assert code == 200 and 'finsent_ingest_items_published_total{source="http"} 1.0' in text
        assert status_of(f"http://127.0.0.1:{mport}/readyz") == 200
        assert f"metrics on http://127.0.0.1:{mport}/metrics" in ing.stderr  # bound to loopback by default
        ing.sigterm()
    finally:
        ing.kill()
    ing.assert_clean_stop(0)


def test_http_not_ready_without_broker_and_sigterm_with_a_request_waiting_on_it(tmp_path) -> None:
    ing, port = _http(tmp_path, f"127.0.0.1:{free_port()}", "raw.dead", "--publish-timeout", "120")
    result: dict[str, Any] = {}
    try:
        code, why = get(f"http://127.0.0.1:{port}/readyz")
        assert code == 503 and json.loads(why) == {"ready": False, "status": "not ready"}, why  # open: no address

        def push() -> None:
            result["answer"] = post(port, json.dumps({"text": "waits for a broker", "id": "w1"}).encode(), TOKEN)

        client = threading.Thread(target=push)
        client.start()
        wait_until(lambda: "did not ack" in ing.stderr, 60, "the publish retrying", ing)
        ing.sigterm()
        client.join(30)
    finally:
        ing.kill()
    ing.assert_clean_stop(0)
    status, body = result["answer"]
    assert status == 503 and body["published"] == [], body  # answered, not cut off: nothing lost, retry


def _slow_headers(port: int, out: dict[str, float], key: str, gap_s: float = 0.25) -> None:
    """Trickle a request's headers one byte every ``gap_s``; record when the server closed the connection."""
    request = b"POST /v1/items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + b"X-Pad: " + b"a" * 500
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            for byte in request:
                s.sendall(bytes([byte]))
                time.sleep(gap_s)
            out[key] = -1.0  # sent it all: never closed
        except OSError:
            out[key] = time.monotonic() - t0


def _slow_body(port: int, out: dict[str, Any], key: str) -> None:
    """Complete headers announcing 1000 bytes, then a trickle that never completes the body."""
    head = (
        f"POST /v1/items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer {TOKEN}"
        "\r\nContent-Length: 1000\r\n\r\n"
    ).encode()
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head + b'{"text": "')
        answer = b""
        s.settimeout(0.3)
        while time.monotonic() - t0 < 25:
            try:
                s.sendall(b"x")
            except OSError:
                break
            try:
                chunk = s.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
        out[key] = (time.monotonic() - t0, answer.split(b"\r\n", 1)[0].decode(errors="replace"))


def test_http_slowloris_headers_and_bodies_are_cut_while_good_clients_are_served(tmp_path) -> None:
    header_s, body_s = 2.0, 2.0
    ing, port = _http(
        tmp_path,
        "127.0.0.1:9",
        "raw.dry",
        "--dry-run",
        "--header-timeout",
        str(header_s),
        "--body-timeout",
        str(body_s),
        "--max-connections",
        "50",
    )
    heads: dict[str, float] = {}
    bodies: dict[str, Any] = {}
    try:
        threads = [threading.Thread(target=_slow_headers, args=(port, heads, f"h{i}")) for i in range(10)]
        threads += [threading.Thread(target=_slow_body, args=(port, bodies, f"b{i}")) for i in range(5)]
        for t in threads:
            t.start()
        good = []
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # good clients meanwhile, one after another
            good.append(post(port, json.dumps({"text": f"good {len(good)}"}).encode(), TOKEN, timeout=10)[0])
        for t in threads:
            t.join(40)
    finally:
        ing.sigterm()
        ing.kill()
    assert good and set(good) == {202}, good
    slack = 4.0  # a busy 2-core machine: the bound is the timeout plus scheduling, never "sent it all"
    assert len(heads) == 10 and all(0 < v <= header_s + slack for v in heads.values()), heads
    assert len(bodies) == 5
    for took, status_line in bodies.values():
        assert status_line.startswith("HTTP/1.1 408"), bodies
        assert took <= body_s + 2.0 + slack, bodies  # 408, then at most LINGER_S of draining
    ing.assert_clean_stop(0)


def test_http_connections_beyond_the_cap_get_503_and_others_are_served_again(tmp_path) -> None:
    cap = 8
    ing, port = _http(
        tmp_path, "127.0.0.1:9", "raw.dry", "--dry-run", "--header-timeout", "3", "--max-connections", str(cap)
    )
    held: list[socket.socket] = []
    try:
        for _ in range(cap):  # idle connections that send nothing: each holds a slot
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = extra.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After" in answer and b"too many" in answer, answer
        assert "too_many_connections" in ing.stderr or "refused" in ing.stderr
        for s in held:  # the server closes the idle ones after the header timeout
            s.settimeout(10)
            assert s.recv(10) == b""
        assert post(port, json.dumps({"text": "served again"}).encode(), TOKEN)[0] == 202
    finally:
        for s in held:
            s.close()
        ing.sigterm()
        ing.kill()
    ing.assert_clean_stop(0)
