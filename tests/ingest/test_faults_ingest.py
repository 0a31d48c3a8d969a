"""Faults under the ingesters, with real processes: a broker restart under a replay, bad clients at the push endpoint.

* **Broker killed and restarted under ``finsent ingest replay``.** The embedded Tansu is memory-only,
  so the restarted broker is empty: what it must hold afterwards is everything the replay had not
  got acknowledged by the old one -- the replay re-sends what was unacknowledged -- and the replay
  ends with every row acknowledged (exit 0, ``produced`` = all rows). To know exactly what the old
  broker held, the replay is frozen (SIGSTOP) while the old broker's topic is read, then the broker
  is killed, a new one started on the same port and the replay resumed (SIGCONT).
* **The push endpoint under bad clients.** 200 good concurrent requests mixed with bad ones (lone
  surrogates, a 5,000-digit integer, a charset that is no text encoding, bodies that never complete),
  then Kafka killed: each request gets its own verdict (202 / 400 / 408 / 415 / 422 / 503), never a
  500, and the good items are on the topic exactly once.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from finsent.stream.broker import EmbeddedBroker, free_port
from tests.ingest.test_ingest_service import (
    TOKEN,
    Ingester,
    _http,
    get,
    kill_broker,
    own_broker,  # noqa: F401 - the fixture
    post,
    status_of,
    wait_until,
    write_rows,
)
from tests.ingest.test_ingest_support import consume_all

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def _published(port: int) -> float:
    code, text = get(f"http://127.0.0.1:{port}/metrics")
    if code != 200:
        return 0.0
    return sum(
        float(ln.rsplit(" ", 1)[1])
        for ln in text.splitlines()
        if ln.startswith("finsent_ingest_items_published_total{")
    )


def test_broker_restart_under_a_replay_resends_everything_unacknowledged(
    own_broker: EmbeddedBroker,  # noqa: F811
    unique_name: str,
    tmp_path: Path,
) -> None:
    n = 1500
    topic = f"raw.{unique_name}"
    path = tmp_path / "rows.jsonl"
    ids = write_rows(path, n, unique_name)
    mport = free_port()
    ing = Ingester(
        ["replay", str(path), "--rate", "150", "--publish-timeout", "90", "--metrics-port", str(mport)],
        tmp_path,
        own_broker.bootstrap,
        topic,
    )
    try:
        wait_until(lambda: _published(mport) >= 300, 90, "300 rows acknowledged by the first broker", ing)
        ing.proc.send_signal(signal.SIGSTOP)  # freeze the replay: the old broker's content is now final
        try:
            on_old = [r["id"] for r in consume_all(own_broker.bootstrap, topic, expect=300, timeout_s=30)]
            kill_broker(own_broker)
            own_broker.stop()
            own_broker.start()  # same port, empty (memory-only)
        finally:
            ing.proc.send_signal(signal.SIGCONT)
        restarted = time.monotonic()
        wait_until(lambda: ing.proc.poll() is not None, 110, "the replay to finish", ing)
    finally:
        ing.kill()
    took = time.monotonic() - restarted
    text = ing.stderr
    assert ing.proc.returncode == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    summary = ing.summary()
    assert summary["produced"] == n and "unacked" not in summary  # every row acknowledged in the end
    on_new = [r["id"] for r in consume_all(own_broker.bootstrap, topic, expect=n - len(set(on_old)), timeout_s=40)]
    dups = [i for i, c in Counter(on_new).items() if c > 1]
    print(
        f"old broker held {len(set(on_old))}, new broker {len(on_new)} ({len(dups)} duplicated); "
        f"replay finished {took:.1f} s after the restart"
    )
    missing = set(ids) - set(on_old) - set(on_new)
    assert not missing, f"{len(missing)} rows neither on the old nor on the new broker (lost): {sorted(missing)[:5]}"
    assert set(on_new) <= set(ids) and set(on_old) <= set(ids)
    assert not dups, f"re-sent twice to the new broker: {dups[:5]}"
    assert len(set(on_old)) >= 300 and len(on_new) >= n - len(set(on_old))


def _slow_body(port: int) -> str:
    """Headers with Content-Length 500 and a body that never completes: the status line the server sends."""
    head = (
        f"POST /v1/items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer {TOKEN}"
        "\r\nContent-Length: 500\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head + b'[{"text": "never ends')
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0].decode(errors="replace")


def test_push_endpoint_under_bad_clients_and_kafka_down(
    own_broker: EmbeddedBroker,  # noqa: F811
    unique_name: str,
    tmp_path: Path,
) -> None:
    topic = f"raw.{unique_name}"
    ing, port = _http(tmp_path, own_broker.bootstrap, topic, "--body-timeout", "2", "--publish-timeout", "4")
    wait_until(lambda: status_of(f"http://127.0.0.1:{port}/readyz") == 200, 60, "/readyz", ing)

    def one(job: tuple[str, Any]) -> tuple[str, Any, int, dict[str, Any]]:
        kind, arg = job
        if kind == "good":
            status, body = post(port, json.dumps({"text": f"acme rises {arg}", "id": arg}).encode(), TOKEN)
        elif kind == "surrogate_id":
            status, body = post(port, b'{"text": "fine", "id": "bad-\\ud800-' + arg.encode() + b'"}', TOKEN)
        elif kind == "surrogate_text":
            status, body = post(port, json.dumps({"text": "bad \ud800 text", "id": arg}).encode(), TOKEN)
        elif kind == "huge_int":
            status, body = post(port, b'{"text": "x", "published_at": ' + b"9" * 5000 + b"}", TOKEN)
        elif kind == "rot13":
            status, body = post(port, b'{"text": "hello"}', TOKEN, ctype="application/json; charset=rot13")
        else:  # slow body
            line = _slow_body(port)
            status, body = int(line.split()[1]) if line.startswith("HTTP/") else -1, {"line": line}
        return kind, arg, status, body

    good = [f"g-{unique_name}-{i}" for i in range(200)]
    jobs: list[tuple[str, Any]] = [("good", g) for g in good]
    for i in range(3):
        jobs += [
            ("surrogate_id", str(i)),
            ("surrogate_text", f"st-{unique_name}-{i}"),
            ("huge_int", i),
            ("rot13", i),
            ("slow", i),
        ]
    order = jobs[::2] + jobs[1::2]  # bad ones interleaved with good ones
    with ThreadPoolExecutor(48) as pool:
        results = list(pool.map(one, order))
    want = {"good": 202, "surrogate_text": 202, "surrogate_id": 422, "huge_int": 400, "rot13": 415, "slow": 408}
    wrong = [(k, a, s, b) for k, a, s, b in results if s != want[k]]
    assert not wrong, wrong[:5]
    for kind, arg, _, body in results:
        if kind in ("good", "surrogate_text"):
            assert body["accepted"] == [arg], body
    expected = set(good) | {f"st-{unique_name}-{i}" for i in range(3)}
    got = [r["id"] for r in consume_all(own_broker.bootstrap, topic, expect=len(expected))]
    assert sorted(got) == sorted(expected)  # each good item exactly once

    kill_broker(own_broker)  # Kafka down: 503 + Retry-After for each, never a 500
    down = [f"d-{unique_name}-{i}" for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        answers = list(
            pool.map(lambda i: post(port, json.dumps({"text": "kafka is down", "id": i}).encode(), TOKEN), down)
        )
    assert [s for s, _ in answers] == [503] * 20, answers[:3]
    assert all(b["published"] == [] and "retry" in b["error"] for _, b in answers)
    wait_until(lambda: status_of(f"http://127.0.0.1:{port}/readyz") == 503, 30, "/readyz 503 without Kafka", ing)
    ing.sigterm()
    ing.kill()
    ing.assert_clean_stop(0)
