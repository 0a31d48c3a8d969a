"""Shared helpers of the ingest tests (no tests here): read a topic back from the real broker."""

from __future__ import annotations

import contextlib
import json
import time

from kafka import KafkaConsumer, TopicPartition


def consume_all(bootstrap: str, topic: str, expect: int, timeout_s: float = 20.0) -> list[dict]:
    """Every record of ``topic`` (all partitions, from the start, no consumer group), as dicts.

    Reads until ``expect`` records arrived and then ~1 s more, so that extra (duplicate)
    records would be seen too.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        deadline = time.monotonic() + timeout_s
        parts = None
        while not parts and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                time.sleep(0.2)
        assert parts, f"topic {topic} does not exist"
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[dict] = []
        settle: float | None = None
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    obj = json.loads(r.value)
                    assert r.key.decode() == obj["id"]
                    out.append(obj)
            if len(out) >= expect:
                settle = settle or time.monotonic() + 1.0
                if time.monotonic() > settle:
                    break
        return out
    finally:
        consumer.close()


class LocalHTTP:
    """A real HTTP server on 127.0.0.1 serving scripted responses; records every request.

    ``routes[path] = handler(request) -> (status, headers, body)`` where ``request`` has
    ``.path`` (with query) and ``.headers``.
    """

    def __init__(self) -> None:
        import http.server
        import threading

        self.routes: dict[str, object] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                outer.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                route = outer.routes.get(self.path.split("?", 1)[0])
                if route is None:
                    status, headers, body = 404, {"Content-Type": "text/plain"}, b"not found"
                else:
                    status, headers, body = route(self)  # type: ignore[operator]
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body:
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def static(self, path: str, body: bytes, content_type: str = "application/xml", **headers: str) -> None:
        self.routes[path] = lambda req: (200, {"Content-Type": content_type, **headers}, body)

    def hits(self, path: str) -> list[dict[str, str]]:
        return [h for p, h in self.requests if p.split("?", 1)[0] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
