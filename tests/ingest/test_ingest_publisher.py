"""Publisher and replay against a real Tansu broker: acks, exactly-once ids, broker down then up."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from finsent.core.errors import ConfigError
from finsent.core.settings import Settings
from finsent.ingest.dedup import DedupStore
from finsent.ingest.metrics import IngestMetrics
from finsent.ingest.normalize import make_item
from finsent.ingest.pipeline import Pipeline
from finsent.ingest.publisher import Publisher, PublishError
from finsent.ingest.replay import ReplayStats, iter_file_items, replay, replay_to_kafka
from finsent.stream.broker import EmbeddedBroker, free_port
from tests.ingest.test_ingest_support import LocalHTTP, consume_all

pytestmark = pytest.mark.integration
DATA = Path(__file__).parents[1] / "data" / "ingest"


def _items(n: int, prefix: str = "p"):
    return [
        make_item(source="test", source_type="news", text=f"{prefix} item {i}", guid=f"{prefix}{i}") for i in range(n)
    ]


def test_publish_waits_for_acks_and_consumes_back_exactly_once(kafka_bootstrap, unique_name, tmp_path) -> None:
    settings = Settings(brokers=kafka_bootstrap, topic_raw=f"raw.{unique_name}", partitions=2)
    items = _items(50)
    dedup = DedupStore(tmp_path / "d.sqlite3")
    pipe = Pipeline(publisher=Publisher(settings), dedup=dedup, metrics=IngestMetrics(CollectorRegistry()))
    entries = [
        pipe.normalize("test", source="test", source_type="news", text=i.text, guid=f"p{n}")
        for n, i in enumerate(items)
    ]
    res = pipe.submit("test", entries)
    assert len(res.published) == 50
    res2 = pipe.submit("test", entries)  # the second time everything is a duplicate
    assert res2.published == [] and len(res2.duplicates) == 50
    pipe.publisher.close()
    got = consume_all(kafka_bootstrap, settings.kafka.topic_raw, expect=50)
    assert sorted(r["id"] for r in got) == sorted(i.id for i in items)
    assert all(r["v"] == 1 and r["source_type"] == "news" for r in got)


def test_broker_down_then_up_nothing_lost_nothing_duplicated(unique_name, tmp_path) -> None:
    port = free_port()
    settings = Settings(brokers=f"127.0.0.1:{port}", topic_raw=f"raw.{unique_name}", partitions=1)
    publisher = Publisher(settings, delivery_timeout_s=4, backoff_s=(0.2, 1.0))
    items = _items(20, "down")
    acked: list[str] = []
    broker = EmbeddedBroker(port=port, start_timeout_s=30)

    def start_later() -> None:
        time.sleep(2.5)
        broker.start()

    t = threading.Thread(target=start_later)
    t.start()
    try:
        started = time.monotonic()
        res = publisher.publish_detailed(items, on_acked=lambda xs: acked.extend(x.id for x in xs))
        assert time.monotonic() - started >= 2.0  # it really waited for the broker
        assert sorted(acked) == sorted(i.id for i in items) == sorted(i.id for i in res.acked)
        publisher.close()
        got = consume_all(broker.bootstrap, settings.kafka.topic_raw, expect=20)
        assert sorted(r["id"] for r in got) == sorted(i.id for i in items)
    finally:
        t.join()
        broker.stop(timeout_s=1)


def test_unreachable_broker_gives_up_when_asked_and_marks_nothing(tmp_path) -> None:
    settings = Settings(brokers=f"127.0.0.1:{free_port()}", topic_raw="raw.nowhere")
    dedup = DedupStore(tmp_path / "d.sqlite3")
    pipe = Pipeline(
        publisher=Publisher(settings, delivery_timeout_s=2, backoff_s=(0.2, 0.5)),
        dedup=dedup,
        metrics=IngestMetrics(CollectorRegistry()),
    )
    entry = pipe.normalize("t", source="t", source_type="news", text="hello", url="https://e.com/1")
    with pytest.raises(PublishError) as exc:
        pipe.submit("t", [entry], give_up_after_s=3)
    assert [i.id for i in exc.value.pending] == [entry.item.id]
    assert dedup.known(entry.keys) == set()  # not acked -> not marked -> will be retried later


def test_replay_file_ids_stable_and_published(kafka_bootstrap, unique_name, capsys) -> None:
    path = DATA / "replay.csv"
    first = [i.id for i in iter_file_items(path)]
    assert first == [i.id for i in iter_file_items(path)] and len(set(first)) == len(first)
    settings = Settings(brokers=kafka_bootstrap, topic_raw=f"raw.{unique_name}", partitions=1)
    stats = replay_to_kafka(settings, [path], rate=200)
    assert stats.produced == len(first) and stats.skipped == 2
    got = consume_all(kafka_bootstrap, settings.kafka.topic_raw, expect=len(first))
    assert sorted(r["id"] for r in got) == sorted(first)


def test_replay_cli_dry_run_prints_items_and_one_summary(tmp_path, capsys, monkeypatch) -> None:
    from finsent.cli import main

    monkeypatch.setenv("FINSENT_INGEST_STATE_DIR", str(tmp_path))
    rc = main(["ingest", "replay", str(DATA / "replay.csv"), str(DATA / "replay.jsonl"), "--dry-run", "--limit", "6"])
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    items, summary = lines[:-1], lines[-1]
    assert summary == {  # 2 empty CSV rows + 1 non-JSON line, each with its line
        "produced": 6,
        "skipped": 3,
        "bad_rows": [
            {"file": "replay.csv", "line": 4, "reason": "empty_text", "detail": "no text after cleaning"},
            {"file": "replay.csv", "line": 5, "reason": "empty_text", "detail": "no text after cleaning"},
            {"file": "replay.jsonl", "line": 3, "reason": "not_json", "detail": "Expecting value at column 1"},
        ],
    }
    assert len(items) == 6
    first = items[0]
    assert first["title"] == "Apple results" and first["tickers"] == ["AAPL"]
    assert first["published_at"] == "2024-03-01T14:30:00.000Z"
    assert items[1]["text"] == "Stocks fall & bonds rally"
    assert not list(tmp_path.iterdir())  # dry-run writes no dedup state


def test_replay_speedup_follows_original_spacing(tmp_path) -> None:
    path = tmp_path / "timed.jsonl"
    path.write_text(
        "\n".join(json.dumps({"text": f"t{i}", "published_at": f"2024-01-01T00:00:{i * 2:02d}Z"}) for i in range(3))
        + "\n"
    )
    pipe = Pipeline(
        publisher=None, dedup=DedupStore(None), metrics=IngestMetrics(CollectorRegistry()), out=io.StringIO()
    )
    t0 = time.monotonic()
    stats = replay([path], pipe, speedup=4, progress=False)  # 4 s of original time -> ~1 s
    elapsed = time.monotonic() - t0
    assert stats.produced == 3 and 0.9 <= elapsed < 3


def test_replay_honours_encoding_and_says_what_to_do(tmp_path) -> None:
    from finsent.ingest.replay import ReplayInputError

    path = tmp_path / "latin.csv"
    path.write_bytes('text,title\n"Soci\u00e9t\u00e9 G\u00e9n\u00e9rale \u00e0 Paris",x\n'.encode("latin-1"))
    with pytest.raises(ReplayInputError, match="--encoding latin-1"):
        list(iter_file_items(path))
    (item,) = iter_file_items(path, encoding="latin-1")
    assert item.text == "Société Générale à Paris"
    bad = tmp_path / "notext.csv"
    bad.write_text("body,label\nx,y\n")
    with pytest.raises(ReplayInputError, match="'text' column"):
        list(iter_file_items(bad))


def test_abort_releases_a_publish_waiting_for_a_dead_broker() -> None:
    settings = Settings(brokers=f"127.0.0.1:{free_port()}", topic_raw="raw.dead")
    pub = Publisher(settings, delivery_timeout_s=2, backoff_s=(5.0, 5.0))
    timer = threading.Timer(1.0, pub.abort)
    timer.start()
    started = time.monotonic()
    with pytest.raises(PublishError) as exc:
        pub.publish(_items(3, "abort"))  # would wait the whole publish_timeout_s (30 s)
    assert time.monotonic() - started < 8 and len(exc.value.pending) == 3 and exc.value.acked == []
    timer.join()


def test_replay_stops_early_on_request(tmp_path) -> None:
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(100)))
    pipe = Pipeline(
        publisher=None, dedup=DedupStore(None), metrics=IngestMetrics(CollectorRegistry()), out=io.StringIO()
    )
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    t0 = time.monotonic()
    stats = replay([path], pipe, rate=20, progress=False, stop=stop)  # 100 items at 20/s would take 5 s
    assert time.monotonic() - t0 < 1.5 and 5 <= stats.produced <= 15


def test_replay_reads_a_json_array_file(tmp_path) -> None:
    path = tmp_path / "items.json"
    path.write_text(json.dumps([{"text": "one", "id": "x1"}, 5, {"text": "two $AMD"}]))
    items = list(iter_file_items(path))
    assert [i.text for i in items] == ["one", "two $AMD"] and items[0].id == "x1" and items[1].tickers == ("AMD",)


def test_broker_restart_mid_stream_nothing_lost(unique_name) -> None:
    port = free_port()
    settings = Settings(brokers=f"127.0.0.1:{port}", topic_raw=f"raw.{unique_name}", partitions=1)
    publisher = Publisher(settings, delivery_timeout_s=3, backoff_s=(0.2, 1.0))
    before, after = _items(5, "before"), _items(5, "after")
    broker = EmbeddedBroker(port=port, start_timeout_s=30).start()
    try:
        assert publisher.publish(before) == 5
        broker.stop(timeout_s=1)  # in-memory broker: everything it held is gone, like a crashed cluster
        restart = threading.Timer(2.0, broker.start)
        restart.start()
        res = publisher.publish_detailed(after)  # fails while the broker is down, then succeeds on the new one
        restart.join()
        assert sorted(i.id for i in res.acked) == sorted(i.id for i in after)
        publisher.close()
        got = consume_all(broker.bootstrap, settings.kafka.topic_raw, expect=5)
        assert sorted(r["id"] for r in got) == sorted(i.id for i in after)
    finally:
        broker.stop(timeout_s=1)


def test_publish_returns_acked_count_and_never_sends_oversize(kafka_bootstrap, unique_name) -> None:
    settings = Settings(brokers=kafka_bootstrap, topic_raw=f"raw.{unique_name}", partitions=1, max_message_bytes=1024)
    small = _items(3, "small")
    big = make_item(source="test", source_type="news", text="word " * 400, guid="big")
    with Publisher(settings) as pub:
        assert pub.publish(small) == 3
        res = pub.publish_detailed([big, *small])
        assert [i.id for i in res.oversize] == [big.id] and len(res.acked) == 3
    got = consume_all(kafka_bootstrap, settings.kafka.topic_raw, expect=6)
    assert big.id not in {r["id"] for r in got} and len(got) == 6  # small ones twice: no dedup in Publisher


# -- bounded publish wait ------------------------------------------------------------------------


def test_replay_cli_without_a_broker_gives_up_with_one_line_and_exit_6(tmp_path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": f"row {i} $AAPL"}) + "\n" for i in range(5)))
    env = {**os.environ, "FINSENT_INGEST_STATE_DIR": str(tmp_path / "state"), "FINSENT_LOG_LEVEL": "INFO"}
    env.pop("FINSENT_PUBLISH_TIMEOUT_S", None)
    port = free_port()  # nothing listens there
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "finsent",
            "ingest",
            "replay",
            str(path),
            "--brokers",
            f"127.0.0.1:{port}",
            "--publish-timeout",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - started
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 6, proc.stderr
    assert elapsed < 15
    assert err and err[-1].startswith("finsent: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(err) < 10, proc.stderr  # kafka-python's reconnect chatter is rate-limited
    last = err[-1]
    assert f"127.0.0.1:{port}" in last and "within 3 s" in last and "0 item(s) acknowledged before" in last
    assert "FINSENT_BROKERS" in last and "finsent broker" in last
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["produced"] == 0 and summary["unacked"] == 5  # nothing unacked counted as produced


def test_every_publishing_ingest_command_has_publish_timeout_defaulting_to_the_setting(monkeypatch) -> None:
    from finsent.cli import build_parser
    from finsent.cli.ingest import build_pipeline, publish_timeout
    from finsent.core.settings import load_settings

    monkeypatch.setenv("FINSENT_PUBLISH_TIMEOUT_S", "7.5")
    settings = load_settings()
    assert settings.ingest.publish_timeout_s == 7.5
    parser = build_parser()
    commands = {
        "replay": ["f.csv"],
        "rss": ["http://x/feed"],
        "mastodon": ["stocks"],
        "reddit": ["stocks"],
        "bluesky": ["$AAPL"],
        "http": [],
    }
    for command, extra in commands.items():
        args = parser.parse_args(["ingest", command, *extra])
        assert publish_timeout(args, settings) == 7.5, command
        args = parser.parse_args(["ingest", command, *extra, "--publish-timeout", "2"])
        assert publish_timeout(args, settings) == 2.0, command
    with pytest.raises(SystemExit):
        parser.parse_args(["ingest", "replay", "f.csv", "--publish-timeout", "0"])
    _, publisher = build_pipeline(settings, dry_run=False, use_dedup=False)
    assert publisher.publish_timeout_s == 7.5 and publisher.delivery_timeout_s == 7.5
    assert Publisher(settings).publish_timeout_s == 7.5  # the library default is the setting too
    publisher.close()
    with pytest.raises(ConfigError, match="FINSENT_PUBLISH_TIMEOUT_S"):
        load_settings(publish_timeout_s=0)


def test_replay_broker_dies_midway_counts_only_acked_and_marks_only_acked(unique_name, tmp_path) -> None:
    broker = EmbeddedBroker(port=free_port(), start_timeout_s=30).start()
    settings = Settings(brokers=broker.bootstrap, topic_raw=f"raw.{unique_name}", partitions=1)
    files = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": f"{name} row {i}"}) + "\n" for i in range(5)))
        files.append(path)
    ids_a, ids_b = ([i.id for i in iter_file_items(f)] for f in files)
    on_broker: list[str] = []
    dedup = DedupStore(tmp_path / "d.sqlite3")
    publisher = Publisher(settings, delivery_timeout_s=2, backoff_s=(0.2, 0.5), publish_timeout_s=3)

    class BrokerDiesAfterFirstFile(Pipeline):
        def submit(self, *args, **kwargs):
            res = super().submit(*args, **kwargs)
            if self.produced == 5 and broker.proc is not None:  # file a is acked: read it back, then kill
                on_broker.extend(r["id"] for r in consume_all(broker.bootstrap, settings.kafka.topic_raw, expect=5))
                broker.stop(timeout_s=1)
            return res

    pipe = BrokerDiesAfterFirstFile(publisher=publisher, dedup=dedup, metrics=IngestMetrics(CollectorRegistry()))
    stats = ReplayStats()
    try:
        started = time.monotonic()
        with pytest.raises(PublishError) as exc:
            replay(files, pipe, progress=False, stats=stats)
        assert time.monotonic() - started < 20  # bounded (3 s after the broker died), not forever
    finally:
        publisher.close()
        broker.stop(timeout_s=1)
    assert sorted(on_broker) == sorted(ids_a)  # what was acked is really on the broker
    assert stats.produced == pipe.produced == 5  # and only that is counted
    assert sorted(i.id for i in exc.value.pending) == sorted(ids_b) and exc.value.acked == []
    assert dedup.known(f"id:{i}" for i in ids_a + ids_b) == {f"id:{i}" for i in ids_a}  # b is not marked


def test_rss_once_without_a_broker_gives_up_with_exit_6_and_marks_nothing(tmp_path) -> None:
    srv = LocalHTTP()
    srv.static("/a.xml", (DATA / "feed_a.xml").read_bytes())
    env = {**os.environ, "FINSENT_INGEST_STATE_DIR": str(tmp_path / "state")}
    port = free_port()
    try:
        started = time.monotonic()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "finsent",
                "ingest",
                "rss",
                srv.url("/a.xml"),
                "--once",
                "--brokers",
                f"127.0.0.1:{port}",
                "--publish-timeout",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=tmp_path,
        )
    finally:
        srv.close()
    assert proc.returncode == 6, proc.stderr
    assert time.monotonic() - started < 15 and "Traceback" not in proc.stderr
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("finsent: error: ") and f"127.0.0.1:{port}" in err[-1] and len(err) < 12, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["produced"] == 0 and summary["sources_failed"] == 1
    # nothing was acked, so nothing is marked (no key, no feed cursor): the next run fetches them again
    db = tmp_path / "state" / "dedup.sqlite3"
    if db.exists():
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM seen").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM cursors").fetchone() == (0,)
