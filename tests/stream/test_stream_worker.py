"""The scoring worker end to end: real Tansu broker, real stores (chdb and clickhouse-server), tiny real model."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from finsent.core.errors import StoreUnavailable
from finsent.core.events import decode_scored
from finsent.stream.service import WorkerThread
from finsent.stream.store import open_store
from tests.stream_helpers import (
    make_items,
    produce,
    produce_items,
    read_topic,
    reasons,
    stream_settings,
    wait_for,
    worker_env,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from finsent.models.runtime import Classifier
    from finsent.models.testing import make_tiny_model

    return Classifier.load(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def _scored_total() -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "finsent_items_scored":
            total += sum(s.value for s in metric.samples if s.name == "finsent_items_scored_total")
    return total


MALFORMED: list[tuple[bytes | None, str]] = [
    (b"this is not json", "not_json"),
    (b'{"id": "m1", "source": "t", "source_type": "news"}', "missing_field"),
    (b'{"id": "m2", "source": "t", "source_type": "news", "text": 42}', "bad_type"),
    (b'{"id": "m3", "source": "t", "source_type": "news", "text": "   "}', "empty_text"),
    (b'{"id": "m4", "text": "\xff\xfe broken"}', "invalid_utf8"),
    (b'{"id": "m5", "source": "t", "source_type": "news", "text": "' + b"x" * 5000 + b'"}', "oversize"),
    (b"[1, 2, 3]", "not_object"),
    (None, "empty_message"),
]


@pytest.mark.parametrize("engine", ["chdb", "clickhouse"])
def test_items_stored_once_published_and_malformed_dead_lettered(
    engine: str, kafka_bootstrap: str, unique_name: str, tiny_classifier: Any, request: pytest.FixtureRequest
) -> None:
    store_url = request.getfixturevalue("chdb_db_url" if engine == "chdb" else "clickhouse_db_url")
    s = stream_settings(kafka_bootstrap, store_url, unique_name)
    before, after = make_items(30, "before"), make_items(20, "after")
    produce_items(s, before)
    produce(s, [v for v, _ in MALFORMED], [b"bad-%d" % i for i in range(len(MALFORMED))])
    produce_items(s, after)  # the agent must keep going after the bad input
    scored_before = _scored_total()
    store = open_store(store_url)
    try:
        with WorkerThread(s, classifier=tiny_classifier, store=store) as w:
            wait_for(
                lambda: (
                    w.scorer.stats.snapshot()["stored"] >= 50
                    and sum(w.scorer.stats.snapshot()["dead_lettered"].values()) >= len(MALFORMED)
                ),
                60,
                "50 stored items and all dead letters",
            )
        counts = store.count()
        assert counts == {"rows": 50, "unique_ids": 50}
        ids = {r[0] for r in store.query(f"SELECT id FROM {store.database}.items FINAL")}  # type: ignore[attr-defined]
        assert ids == {it.id for it in before + after}
    finally:
        store.close()
    assert _scored_total() - scored_before == 50

    scored = read_topic(s, s.kafka.topic_scored, 50)
    decoded = [decode_scored(r.value) for r in scored]
    assert sorted(d.id for d in decoded) == sorted(it.id for it in before + after)
    assert all(d.model_version == tiny_classifier.version for d in decoded)
    assert all(r.key == d.id.encode() for r, d in zip(scored, decoded, strict=True))

    dlq = read_topic(s, s.kafka.topic_dlq, len(MALFORMED))
    assert reasons(dlq) == sorted(r for _, r in MALFORMED)
    not_json = next(json.loads(r.value) for r in dlq if json.loads(r.value)["reason"] == "not_json")
    assert not_json["payload"] == "this is not json" and not_json["topic"] == s.kafka.topic_raw
    assert not_json["offset"] >= 0


class FlakyStore:
    """A real store behind a fault injector: the first ``fail_after_write`` inserts are written and then
    reported as failed (the 'stored but the answer was lost' case), so the worker must retry the batch."""

    def __init__(self, inner: Any, fail_after_write: int = 0, fail_before_write: bool = False) -> None:
        self.inner = inner
        self.fail_after_write = fail_after_write
        self.fail_before_write = fail_before_write
        self.attempts = 0
        self.lock = threading.Lock()

    def insert_scored(self, items: Any) -> int:
        with self.lock:
            self.attempts += 1
            if self.fail_before_write:
                raise StoreUnavailable("injected: store down")
            n = self.inner.insert_scored(items)
            if self.fail_after_write > 0:
                self.fail_after_write -= 1
                raise StoreUnavailable("injected: connection lost after the write")
            return n

    def ensure_schema(self) -> None:
        self.inner.ensure_schema()

    def close(self) -> None:
        pass


def test_store_failure_after_write_is_retried_and_never_duplicated(
    kafka_bootstrap: str, chdb_db_url: str, unique_name: str, tiny_classifier: Any
) -> None:
    s = stream_settings(kafka_bootstrap, chdb_db_url, unique_name, batch_max=64)
    items = make_items(40, "flaky")
    produce_items(s, items)
    inner = open_store(chdb_db_url)
    flaky = FlakyStore(inner, fail_after_write=2)
    try:
        with WorkerThread(s, classifier=tiny_classifier, store=flaky) as w:
            wait_for(lambda: w.scorer.stats.snapshot()["stored"] >= 40, 60, "40 stored")
        assert flaky.attempts >= 3  # two failed attempts were retried
        counts = inner.count(physical=True)
        assert counts["rows"] == 40 and counts["unique_ids"] == 40
        assert counts["physical_rows"] >= 40
        assert sum(tc.total for tc in inner.topic_counts(since=__import__("datetime").timedelta(hours=1))) == 40
    finally:
        inner.close()


def test_unstored_batch_is_not_committed_and_is_redelivered(
    kafka_bootstrap: str, chdb_db_url: str, unique_name: str, tiny_classifier: Any
) -> None:
    """While the store is down nothing is acked: a worker stopped then is replaced by one that stores all."""
    s = stream_settings(kafka_bootstrap, chdb_db_url, unique_name)
    items = make_items(25, "redeliver")
    produce_items(s, items)
    inner = open_store(chdb_db_url)
    try:
        down = FlakyStore(inner, fail_before_write=True)
        with WorkerThread(s, classifier=tiny_classifier, store=down) as w:
            wait_for(lambda: down.attempts >= 2, 60, "the worker to try the down store")
            assert w.scorer.stats.snapshot()["stored"] == 0
        assert inner.count()["rows"] == 0
        # same group, store back: the uncommitted items come again and are stored exactly once
        with WorkerThread(s, classifier=tiny_classifier, store=inner) as w2:
            wait_for(lambda: w2.scorer.stats.snapshot()["stored"] >= 25, 60, "redelivered items stored")
        assert inner.count() == {"rows": 25, "unique_ids": 25}
    finally:
        inner.close()


def test_second_consumer_group_replays_without_duplicates(
    kafka_bootstrap: str, chdb_db_url: str, unique_name: str, tiny_classifier: Any
) -> None:
    """A full redelivery (another group reads everything again) never shows twice in query results."""
    s = stream_settings(kafka_bootstrap, chdb_db_url, unique_name)
    items = make_items(30, "replay")
    produce_items(s, items)
    store = open_store(chdb_db_url)
    try:
        for group in ("a", "b"):
            gs = s.model_copy(update={"consumer_group": f"{s.kafka.consumer_group}-{group}"})
            with WorkerThread(gs, classifier=tiny_classifier, store=store) as w:
                wait_for(lambda w=w: w.scorer.stats.snapshot()["stored"] >= 30, 60, f"group {group} stored 30")
        counts = store.count(physical=True)
        assert counts["rows"] == 30 and counts["unique_ids"] == 30
        assert counts["physical_rows"] >= 30  # 60 until merged: FINAL hides the redelivered copies
    finally:
        store.close()


def test_worker_command_serves_metrics_and_stops_on_sigterm(
    kafka_bootstrap: str, clickhouse_db_url: str, unique_name: str, tiny_classifier: Any
) -> None:
    import signal
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    from finsent.stream.broker import free_port

    s = stream_settings(kafka_bootstrap, clickhouse_db_url, unique_name)
    port = free_port()
    produce_items(s, make_items(12, "cli"))
    env = worker_env(s, tiny_classifier.model_dir, FINSENT_METRICS_PORT=str(port))
    proc = subprocess.Popen(
        [sys.executable, "-m", "finsent.cli", "worker", "--group", s.kafka.consumer_group, "--batch-within", "0.1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    store = open_store(clickhouse_db_url)
    store.ensure_schema()
    try:
        wait_for(lambda: store.count()["rows"] == 12 or proc.poll() is not None, 90, "12 rows from `finsent worker`")
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "finsent_items_scored_total{" in body
        assert "finsent_end_to_end_latency_seconds_bucket" in body
        assert "finsent_consumer_lag_messages{" in body and "finsent_items_consumed_total{kafka_topic=" in body
        assert 'finsent_items_dead_lettered_total{reason="decode_error"} 0.0' in body
        for path, status in (("/healthz", 200), ("/readyz", 200)):
            assert urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).status == status
        with pytest.raises(urllib.error.HTTPError) as nope:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/anything-else", timeout=5)
        assert nope.value.code == 404
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "worker stopped: consumed 12, stored 12" in out
    finally:
        if proc.poll() is None:
            proc.kill()
        store.close()


@pytest.mark.faults
def test_worker_killed_mid_stream_then_restarted_stores_everything_once(
    kafka_bootstrap: str, clickhouse_db_url: str, unique_name: str, tiny_classifier: Any
) -> None:
    """kill -9 of `finsent worker` while it is storing; a restart in the same group finishes the job.

    Whatever was stored but not yet committed when the process died is redelivered to the new
    worker and stored again; queries must still see every item exactly once.
    """
    import signal
    import subprocess
    import sys

    s = stream_settings(kafka_bootstrap, clickhouse_db_url, unique_name, batch_max=8, batch_within_s=0.05)
    # enough items that the kill lands mid-stream: on a quiet machine the tiny model stored 400 within one poll
    n = 2000
    produce_items(s, make_items(n, "kill"))
    env = worker_env(s, tiny_classifier.model_dir, FINSENT_METRICS_PORT="0")
    cmd = [
        sys.executable,
        "-m",
        "finsent.cli",
        "worker",
        "--group",
        s.kafka.consumer_group,
        "--batch-max",
        "8",
        "--batch-within",
        "0.05",
    ]
    store = open_store(clickhouse_db_url)
    store.ensure_schema()
    try:
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            from finsent.core.wait import wait_until

            wait_until(lambda: store.count()["rows"] >= 40 or first.poll() is not None, 90, 0.02, what="the first rows")
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        finally:
            if first.poll() is None:
                first.kill()
        partial = store.count()["rows"]
        assert 0 < partial < n, f"kill came too late to test anything: {partial} of {n} stored"
        second = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: store.count()["rows"] >= n or second.poll() is not None, 120, "all rows after restart")
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=60) == 0
        finally:
            if second.poll() is None:
                second.kill()
        counts = store.count(physical=True)
        assert counts["rows"] == n and counts["unique_ids"] == n
        assert counts["physical_rows"] >= n
    finally:
        store.close()


def test_query_while_the_worker_holds_the_embedded_store(
    kafka_bootstrap: str, tmp_path: Path, unique_name: str, tiny_classifier: Any
) -> None:
    """chdb allows one process per data path: `finsent query` then reads through the running worker's API."""
    import signal
    import subprocess
    import sys
    import urllib.request

    from finsent.stream.broker import free_port

    store_url = f"chdb://{tmp_path / 'held'}"
    s = stream_settings(kafka_bootstrap, store_url, unique_name)
    port = free_port()
    produce_items(s, make_items(9, "held"))
    env = worker_env(s, tiny_classifier.model_dir, FINSENT_METRICS_PORT=str(port))
    assert env["FINSENT_STORE"] == store_url
    proc = subprocess.Popen(
        [sys.executable, "-m", "finsent", "worker", "--group", s.kafka.consumer_group, "--batch-within", "0.1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def query(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "finsent", "query", *args], env=env, capture_output=True, text=True, timeout=60
        )

    def stored() -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/count", timeout=5) as r:
                return int(json.loads(r.read())["rows"])
        except OSError:
            return -1

    try:
        wait_for(lambda: stored() == 9 or proc.poll() is not None, 90, "9 rows stored by `finsent worker`")
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        count = query("count", "--json")
        assert count.returncode == 0, count.stderr
        assert json.loads(count.stdout) == {"rows": 9, "unique_ids": 9}
        top = query("top", "--since", "1h", "--json")
        assert top.returncode == 0, top.stderr
        body = json.loads(top.stdout)
        assert sum(t["total"] for t in body["topics"]) == 9 and body["since_s"] == 3600
        human = query("top", "--since", "1h", "--topic", "NO-SUCH-TOPIC")
        assert human.returncode == 0 and "no items on topic 'NO-SUCH-TOPIC'" in human.stdout
        alerts = query("alerts")
        assert alerts.returncode == 0 and "no alerts stored" in alerts.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    # the worker is gone: the store is free again and the same query reads it directly
    after = query("count", "--json")
    assert after.returncode == 0 and json.loads(after.stdout) == {"rows": 9, "unique_ids": 9}
