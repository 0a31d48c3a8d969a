"""Publisher and replay against a real Tansu broker: acks, exactly-once ids, broker down then up."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from finsent.core.settings import Settings
from finsent.ingest.dedup import DedupStore
from finsent.ingest.metrics import IngestMetrics
from finsent.ingest.normalize import make_item
from finsent.ingest.pipeline import Pipeline
from finsent.ingest.publisher import Publisher, PublishError
from finsent.ingest.replay import iter_file_items, replay, replay_to_kafka
from finsent.stream.broker import EmbeddedBroker, free_port
from tests.test_ingest_support import consume_all

pytestmark = pytest.mark.integration
DATA = Path(__file__).parent / "data" / "ingest"


def _items(n: int, prefix: str = "p"):
    return [make_item(source="test", source_type="news", text=f"{prefix} item {i}", guid=f"{prefix}{i}")
            for i in range(n)]


def test_publish_waits_for_acks_and_consumes_back_exactly_once(kafka_bootstrap, unique_name, tmp_path) -> None:
    settings = Settings(brokers=kafka_bootstrap, topic_raw=f"raw.{unique_name}", partitions=2)
    items = _items(50)
    dedup = DedupStore(tmp_path / "d.sqlite3")
    pipe = Pipeline(publisher=Publisher(settings), dedup=dedup, metrics=IngestMetrics(CollectorRegistry()))
    entries = [pipe.normalize("test", source="test", source_type="news", text=i.text, guid=f"p{n}")
               for n, i in enumerate(items)]
    res = pipe.submit("test", entries)
    assert len(res.published) == 50
    res2 = pipe.submit("test", entries)  # the second time everything is a duplicate
    assert res2.published == [] and len(res2.duplicates) == 50
    pipe.publisher.close()
    got = consume_all(kafka_bootstrap, settings.topic_raw, expect=50)
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
        got = consume_all(broker.bootstrap, settings.topic_raw, expect=20)
        assert sorted(r["id"] for r in got) == sorted(i.id for i in items)
    finally:
        t.join()
        broker.stop(timeout_s=1)


def test_unreachable_broker_gives_up_when_asked_and_marks_nothing(tmp_path) -> None:
    settings = Settings(brokers=f"127.0.0.1:{free_port()}", topic_raw="raw.nowhere")
    dedup = DedupStore(tmp_path / "d.sqlite3")
    pipe = Pipeline(publisher=Publisher(settings, delivery_timeout_s=2, backoff_s=(0.2, 0.5)), dedup=dedup,
                    metrics=IngestMetrics(CollectorRegistry()))
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
    got = consume_all(kafka_bootstrap, settings.topic_raw, expect=len(first))
    assert sorted(r["id"] for r in got) == sorted(first)


def test_replay_cli_dry_run_prints_items_and_one_summary(tmp_path, capsys, monkeypatch) -> None:
    from finsent.cli import main

    monkeypatch.setenv("FINSENT_INGEST_STATE_DIR", str(tmp_path))
    rc = main(["ingest", "replay", str(DATA / "replay.csv"), str(DATA / "replay.jsonl"), "--dry-run", "--limit", "6"])
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    items, summary = lines[:-1], lines[-1]
    assert summary == {"produced": 6, "skipped": 3}  # 2 empty CSV rows + 1 non-JSON line
    assert len(items) == 6
    first = items[0]
    assert first["title"] == "Apple results" and first["tickers"] == ["AAPL"]
    assert first["published_at"] == "2024-03-01T14:30:00.000Z"
    assert items[1]["text"] == "Stocks fall & bonds rally"
    assert not list(tmp_path.iterdir())  # dry-run writes no dedup state


def test_replay_speedup_follows_original_spacing(tmp_path) -> None:
    path = tmp_path / "timed.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"t{i}", "published_at": f"2024-01-01T00:00:{i * 2:02d}Z"})
                              for i in range(3)) + "\n")
    pipe = Pipeline(publisher=None, dedup=DedupStore(None), metrics=IngestMetrics(CollectorRegistry()),
                    out=io.StringIO())
    t0 = time.monotonic()
    stats = replay([path], pipe, speedup=4, progress=False)  # 4 s of original time -> ~1 s
    elapsed = time.monotonic() - t0
    assert stats.produced == 3 and 0.9 <= elapsed < 3


def test_replay_honours_encoding_and_says_what_to_do(tmp_path) -> None:
    from finsent.ingest.replay import ReplayInputError

    path = tmp_path / "latin.csv"
    path.write_bytes("text,title\n\"Soci\u00e9t\u00e9 G\u00e9n\u00e9rale \u00e0 Paris\",x\n".encode("latin-1"))
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
        pub.publish(_items(3, "abort"))  # would wait forever (no give_up_after_s)
    assert time.monotonic() - started < 8 and len(exc.value.pending) == 3 and exc.value.acked == []
    timer.join()


def test_replay_stops_early_on_request(tmp_path) -> None:
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(100)))
    pipe = Pipeline(publisher=None, dedup=DedupStore(None), metrics=IngestMetrics(CollectorRegistry()),
                    out=io.StringIO())
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
        got = consume_all(broker.bootstrap, settings.topic_raw, expect=5)
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
    got = consume_all(kafka_bootstrap, settings.topic_raw, expect=6)
    assert big.id not in {r["id"] for r in got} and len(got) == 6  # small ones twice: no dedup in Publisher
