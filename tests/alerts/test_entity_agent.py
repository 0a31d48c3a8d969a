"""Live entity alerts (finsent.alerts.entity_agent): pure parts, then the real worker on a Tansu broker and chdb.

The crafted replay (:func:`replay_items`) is ten hours of normal news about six companies, mostly neutral or
positive, and in hour 6 the case of issue 26: 60 negative JPMorgan headlines in 60 seconds from four outlets.
It must raise exactly one entity alert, naming JPMorgan, with the window, counts, index and headlines with links.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from prometheus_client import REGISTRY

from finsent.alerts.entity_agent import (
    EntityAlerts,
    EntityGaugeSink,
    Pending,
    attach,
    decode_record,
    entity_metrics,
    entity_records,
)
from finsent.core.events import EntityMention, RawItem, ScoredItem, decode_alert, utcnow
from finsent.core.settings import load_settings

UTC = timezone.utc  # noqa: UP017

COMPANIES = {  # entity id -> (name, words of its normal news)
    "JPM": ("JPMorgan Chase", "JPMorgan"),
    "AAPL": ("Apple", "Apple"),
    "TSLA": ("Tesla", "Tesla"),
    "XOM": ("Exxon Mobil", "Exxon"),
    "PFE": ("Pfizer", "Pfizer"),
    "MSFT": ("Microsoft", "Microsoft"),
}
NORMAL = [
    "opens a new office in {city}",
    "names a new head of {unit}",
    "hosts an investor day in {city}",
    "expands its {unit} team",
    "reports steady demand for {unit}",
    "signs a supply deal in {city}",
    "launches a {unit} product",
    "holds its annual meeting in {city}",
]
CITIES = ["Boston", "Denver", "Austin", "Dublin", "Tokyo", "Madrid", "Oslo", "Lima", "Cairo", "Perth", "Seoul"]
UNITS = ["payments", "research", "logistics", "retail", "cloud", "marketing", "design", "security", "audit"]
# 60 negative JPMorgan headlines: 12 different stories, each retold 5 times (retellings cluster, as they should)
BAD_STORIES = [
    "regulators open a probe into its London trading desk",
    "prosecutors subpoena mortgage records",
    "a whistleblower alleges fraud at the wealth unit",
    "auditors flag hidden derivatives losses",
    "senators demand answers over client data breach",
    "credit rating cut to negative outlook",
    "fined two billion dollars for sanctions violations",
    "chief risk officer resigns abruptly",
    "outage freezes millions of customer accounts",
    "lawsuit claims rigged currency benchmarks",
    "quarterly profit plunges on bad loan charges",
    "bond traders suspended amid spoofing inquiry",
]
RETOLD = [
    "JPMorgan: {s}",
    "JPMorgan {s}, sources say",
    "Report: JPMorgan {s}",
    "JPMorgan {s} as shares slump",
    "Breaking - JPMorgan {s}",
]
SOURCES = ["Reuters", "Bloomberg", "CNBC", "MarketWatch"]


def _scored(item_id: str, at: datetime, eid: str, sentiment: str, title: str, source: str) -> ScoredItem:
    name, word = COMPANIES[eid]
    text = f"{title}."
    probs = {"negative": 0.05, "neutral": 0.05, "positive": 0.05, sentiment: 0.9}
    mention = EntityMention(word, 0, len(word), sentiment, probs, eid, name, 90)
    item = RawItem(
        id=item_id,
        source=source,
        source_type="news",
        text=text,
        title=title,
        url=f"https://news.example/{item_id}",
        ingested_at=utcnow(),
        published_at=at,
    )
    return ScoredItem(item, sentiment, probs, "banking", 0.9, "test-model", utcnow(), (mention,))


def replay_items(start: datetime, hours: int = 10, burst_hour: int = 6) -> list[ScoredItem]:
    """Event-time ordered: 4 normal stories per company per hour (1 in 12 negative), and the JPMorgan burst."""
    out: list[ScoredItem] = []
    n = 0
    for h in range(hours):
        for q in range(4):
            for j, eid in enumerate(COMPANIES):
                n += 1
                at = start + timedelta(hours=h, minutes=15 * q + j)
                word = COMPANIES[eid][1]
                title = f"{word} " + NORMAL[n % len(NORMAL)].format(
                    city=CITIES[n % len(CITIES)], unit=UNITS[n % len(UNITS)]
                )
                sentiment = "negative" if n % 12 == 0 else ("positive" if n % 2 else "neutral")
                out.append(_scored(f"n{n}", at, eid, sentiment, f"{title} ({n})", SOURCES[n % 4]))
        if h == burst_hour:
            t0 = start + timedelta(hours=h, minutes=30)
            for k in range(60):
                story = RETOLD[k // 12].format(s=BAD_STORIES[k % 12])
                out.append(_scored(f"jpm{k}", t0 + timedelta(seconds=k), "JPM", "negative", story, SOURCES[k % 4]))
    return sorted(out, key=lambda s: (s.item.published_at, s.id))


def _settings(**kw: Any) -> Any:
    return load_settings(**{"entity_lateness_s": 7200, **kw})


def _start() -> datetime:
    return (utcnow() - timedelta(hours=12)).replace(minute=0, second=0, microsecond=0)


def _values(items: list[ScoredItem]) -> list[bytes]:
    return [s.to_json() for s in items]


def _pending(values: list[bytes]) -> list[Pending]:
    records, _, _, _ = entity_records(values)
    return [p for _, v in records for p in decode_record(v)]


# --- pure parts --------------------------------------------------------------------------------------------------
def test_entity_records_one_record_per_owning_partition_one_mention_per_item_and_skip_garbage() -> None:
    from finsent.alerts.entity_agent import watermark_keys

    t = _start()
    a = _scored("a", t, "JPM", "negative", "JPMorgan falls", "Reuters")
    twice = ScoredItem(
        a.item, a.sentiment, a.sentiment_probs, a.topic, a.topic_prob, a.model_version, a.scored_at, a.entities * 2
    )
    b = _scored("b", t + timedelta(minutes=1), "AAPL", "positive", "Apple rises", "CNBC")
    records, n, bad, newest = entity_records([twice.to_json(), b"not json", None, b.to_json()], [0, 1, 1, 1], 2)
    assert bad == 2 and n == 2 and newest == {0: t, 1: t + timedelta(minutes=1)}
    state = EntityAlerts(_settings(), sinks=[], partitions=2)
    owners = {state.partition_of("JPM"), state.partition_of("AAPL")}
    # keyed by the owning partition's key: the default partitioner puts each record where its entities live
    assert sorted(k for k, _ in records) == sorted(watermark_keys(2)[p] for p in owners)
    by_key = {k: decode_record(v) for k, v in records}
    jpm = by_key[watermark_keys(2)[state.partition_of("JPM")]]
    jpm = [p for p in jpm if p.mention.key == "JPM"]
    assert [(p.mention.item_id, p.mention.key, p.mention.sentiment, p.mention.source, p.mention.url) for p in jpm] == [
        ("a", "JPM", "negative", "Reuters", "https://news.example/a")
    ]
    assert jpm[0].mention.at == t and "JPMorgan falls" in jpm[0].text


@pytest.mark.parametrize(
    "bad",
    [
        b"{}",
        b'{"key": "", "name": "x", "m": []}',
        b'{"key": "K", "name": "x", "m": [["i", "2024-01-01T00:00:00Z", "angry", 1, "s", "t", null, ""]]}',
        b'{"key": "K", "name": "x", "m": [["i", "yesterday", "negative", 1, "s", "t", null, ""]]}',
        b'{"key": "K", "name": "x", "m": [["too", "short"]]}',
    ],
)
def test_a_malformed_entity_record_is_a_value_error_not_a_crash(bad: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        decode_record(bad)


def test_sixty_negative_jpmorgan_headlines_in_sixty_seconds_raise_one_alert_naming_jpmorgan() -> None:
    state = EntityAlerts(_settings(), sinks=[])
    alerts = state.offer(_pending(_values(replay_items(_start()))))
    alerts += state.tick()
    assert [(a.kind, a.entity_id, a.entity_name) for a in alerts] == [("entity", "JPM", "JPMorgan Chase")]
    a = alerts[0]
    ev = a.evidence or {}
    assert a.negative >= 4 and len(ev["sources"]) >= 2 and a.score >= 4.0
    assert a.window_end - a.window_start == timedelta(hours=6)
    assert ev["headlines"] and all(h["url"].startswith("https://news.example/jpm") for h in ev["headlines"])
    assert ev["buzz"] >= 60 and ev["negative"] >= 60
    assert state.late == 0


def test_the_reorder_buffer_gives_the_same_alerts_whatever_the_arrival_order_within_the_lateness() -> None:
    items = replay_items(_start())
    in_order = EntityAlerts(_settings(), sinks=[])
    expect = in_order.offer(_pending(_values(items)))
    # the partitions of a replay are read unevenly: shuffle within blocks of 40 minutes of event time
    blocks: dict[int, list[ScoredItem]] = {}
    for s in items:
        blocks.setdefault(int(s.item.published_at.timestamp()) // 2400, []).append(s)
    mixed = [s for k in sorted(blocks) for s in reversed(blocks[k])]
    state = EntityAlerts(_settings(), sinks=[])
    got = []
    for i in range(0, len(mixed), 25):
        got += state.offer(_pending(_values(mixed[i : i + 25])))
    assert [a.to_dict() for a in got] == [a.to_dict() for a in expect] and len(got) == 1
    # a redelivered batch changes nothing; a mention older than the lateness is late, counted and ignored
    again = state.offer(_pending(_values(items[-30:])))
    assert again == []
    old = _scored("old", _start(), "JPM", "negative", "JPMorgan old news", "Reuters")
    late_before = state.late
    assert state.offer(_pending([old.to_json()])) == [] and state.late == late_before + 1


def test_the_watermark_waits_for_every_partition_so_a_backlog_read_unevenly_makes_nothing_late() -> None:
    from finsent.alerts.entity_agent import watermark_keys, watermark_records

    items = replay_items(_start())
    state = EntityAlerts(_settings(entity_lateness_s=0), sinks=[], partitions=2)  # no lateness allowance at all

    def feed(part: int, chunk: list[ScoredItem]) -> list[Any]:
        vals = _values(chunk)
        records, _, _, newest = entity_records(vals, [part] * len(vals))
        out = [a for _, v in records for a in state.offer(decode_record(v))]
        for _, v in watermark_records([b"k"], newest):
            out += state.offer_watermark(decode_record(v))
        return out

    got = feed(0, items[0::2])  # the whole of partition 0 first: partition 1 holds the watermark
    assert got == [] and state.unit(0).released_upto is None
    got += feed(1, items[1::2])
    assert state.late == 0 and [a.entity_id for a in got] == ["JPM"]
    from kafka.partitioner.default import murmur2

    keys = watermark_keys(5)
    assert [(murmur2(k) & 0x7FFFFFFF) % 5 for k in keys] == [0, 1, 2, 3, 4]


def test_a_quiet_stream_closes_its_buckets_on_the_wall_clock() -> None:
    clock = [0.0]
    state = EntityAlerts(_settings(entity_lateness_s=60, entity_bucket_s=60), sinks=[], clock=lambda: clock[0])
    t0 = _start()
    burst = [
        _scored(f"jpm{k}", t0 + timedelta(seconds=k), "JPM", "negative", f"JPMorgan: {BAD_STORIES[k]}", SOURCES[k % 4])
        for k in range(12)
    ]
    assert state.offer(_pending(_values(burst))) == []
    clock[0] = 100.0  # the bucket ends at t0+60, the watermark needs 60 s more: still open
    assert state.tick() == []
    clock[0] = 121.0
    assert [a.entity_id for a in state.tick()] == ["JPM"]


def _sample(name: str, labels: dict[str, str]) -> float | None:
    for metric in REGISTRY.collect():
        for s in metric.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def test_gauges_hold_only_the_alerting_names_bounded_and_cleared_when_the_episode_ends() -> None:
    from finsent.alerts.entity_detector import EntityState

    sink = EntityGaugeSink(limit=3)
    states = {f"E{i}": EntityState(f"E{i}", f"E{i}", f"Name {i}", index=float(i), active=True) for i in range(5)}
    sink([], states)
    shown = {i for i in range(5) if _sample("finsent_entity_alert_active", {"entity_id": f"E{i}"}) is not None}
    assert shown == {2, 3, 4}
    assert _sample("finsent_entities_alerting", {}) == 5
    sink([], {"E4": states["E4"]})
    assert _sample("finsent_entity_alert_active", {"entity_id": "E3"}) is None
    assert _sample("finsent_entity_alert_active", {"entity_id": "E4", "entity": "Name 4"}) == 1
    sink([], {})
    assert _sample("finsent_entity_alert_active", {"entity_id": "E4"}) is None
    assert entity_metrics() is entity_metrics()


def test_a_watchlist_limits_the_alerts_and_is_reloaded_without_a_restart(tmp_path) -> None:
    wl = tmp_path / "watch.csv"
    wl.write_text("entity\nAAPL\n", encoding="utf-8")
    items = replay_items(_start())
    state = EntityAlerts(_settings(entity_watchlist=str(wl), entity_watch_mode="only"), sinks=[])
    assert state.offer(_pending(_values(items))) == []  # JPMorgan is not watched
    wl.write_text("entity\nAAPL\nJPM\n", encoding="utf-8")
    state.watchlist.maybe_reload(force=True)
    state2 = EntityAlerts(_settings(entity_watchlist=str(wl), entity_watch_mode="only"), sinks=[])
    assert [a.entity_id for a in state2.offer(_pending(_values(items)))] == ["JPM"]


def test_alertmanager_payload_names_the_entity_and_carries_headlines_with_links() -> None:
    from finsent.alerts.entity_agent import ALERTNAME, EntityAlertmanagerSink

    state = EntityAlerts(_settings(), sinks=[])
    alert = state.offer(_pending(_values(replay_items(_start()))))[0]
    sink = EntityAlertmanagerSink("http://127.0.0.1:9", 3600, "http://grafana/d/finsent-entities/x")
    p = sink.entity_payload(alert, 60)
    assert p["labels"]["alertname"] == ALERTNAME and p["labels"]["entity"] == "JPMorgan Chase"
    assert p["labels"]["entity_id"] == "JPM" and "var-entity=JPM" in p["annotations"]["dashboard"]
    assert "(https://news.example/jpm" in p["annotations"]["description"]


# --- the real worker ---------------------------------------------------------------------------------------------
def publish_replay(settings: Any, items: list[ScoredItem], chunk: int = 6, pause_s: float = 0.05) -> None:
    """Publish in event-time order, paced, keyed by item id as the scorer publishes (spread over partitions)."""
    from finsent.stream.kafka import make_producer

    producer = make_producer(settings.kafka, client_id="test-entity-replay")
    try:
        for i in range(0, len(items), chunk):
            for s in items[i : i + chunk]:
                producer.send(settings.kafka.topic_scored, key=s.id.encode(), value=s.to_json())
            producer.flush()
            time.sleep(pause_s)
    finally:
        producer.close()


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from finsent.models.runtime import Classifier
    from finsent.models.testing import make_tiny_model

    return Classifier.load(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.mark.integration
def test_worker_raises_one_entity_alert_naming_the_company_and_sends_it_to_every_sink(
    kafka_bootstrap, chdb_db_url, unique_name, tiny_classifier
) -> None:
    from finsent.alerts.agent import attach as attach_topic
    from finsent.stream.service import WorkerThread
    from finsent.stream.store import open_store
    from tests.stream_helpers import read_topic, stream_settings, wait_for

    s = stream_settings(kafka_bootstrap, chdb_db_url, unique_name, entity_lateness_s=7200)
    store = open_store(chdb_db_url)
    store.ensure_schema()
    items = replay_items(_start())
    try:
        with WorkerThread(s, classifier=tiny_classifier, store=store, extensions=[attach_topic, attach]) as w:
            state = w.context.extensions.get("entity_alerts")
            publish_replay(s, items)
            try:
                wait_for(lambda: state.mentions >= len(items), 60, "every mention at its owner")
            except AssertionError as exc:
                why = f"{state.mentions} mentions, {state.late} late, {state.bad_values} bad"
                raise AssertionError(f"{exc}: {why}") from None
            wait_for(lambda: state.alerts, 30, "the entity alert")
            time.sleep(2)
            assert [(a.entity_id, a.entity_name) for a in state.alerts] == [("JPM", "JPMorgan Chase")]
            alert = state.alerts[0]
            wait_for(lambda: any(r["id"] == alert.id for r in store.alerts()), 20, "the alert in the store")
            wait_for(
                lambda: _sample("finsent_entity_alert_active", {"entity_id": "JPM"}) == 1.0, 10, "the alerting gauge"
            )
            assert (_sample("finsent_entity_mentions_total", {"sentiment": "negative"}) or 0) >= 60
        row = next(r for r in store.alerts() if r["id"] == alert.id)
        assert row["kind"] == "entity" and row["entity_id"] == "JPM" and row["entity_name"] == "JPMorgan Chase"
        assert row["evidence"]["headlines"][0]["url"].startswith("https://news.example/jpm")
    finally:
        store.close()
    published = [decode_alert(r.value) for r in read_topic(s, s.kafka.topic_alerts, 1)]
    assert [a.id for a in published if a.kind == "entity"] == [alert.id]
    assert json.loads(alert.to_json())["evidence"]["sources"]


def test_attach_adds_nothing_when_entity_alerts_are_off() -> None:
    from finsent.stream.context import WorkerContext

    ctx = WorkerContext.__new__(WorkerContext)
    object.__setattr__(ctx, "settings", load_settings(entity_alerts=False))
    assert attach(object(), ctx) is None


# --- per-origin watermark: a raw backlog drained unevenly -----------------------------------------------------------
def test_scored_records_carry_their_raw_partition_and_old_records_decode_without_it() -> None:
    from dataclasses import replace

    from finsent.core.events import InvalidEvent, decode_scored
    from finsent.models.runtime import Prediction
    from finsent.stream.pipeline.scoring import RawMessage, decode_and_score

    class _Neutral:
        version = "test-model"

        def predict(self, texts: list[str], titles: Any = None) -> list[Any]:
            probs = {"negative": 0.1, "neutral": 0.8, "positive": 0.1}
            return [Prediction("neutral", probs, "Macro", 0.9, False) for _ in texts]

    msgs = [
        RawMessage(RawItem(f"r{i}", "s", "news", "t", utcnow()).to_json(), "finsent.raw", p, i)
        for i, p in enumerate([2, 0, 1])
    ]
    msgs.insert(1, RawMessage(b"not json", "finsent.raw", 5, 9))  # a dead letter shifts nothing
    scored, dead, payloads, _ = decode_and_score(_Neutral(), msgs, 1_000_000, 20_000)
    assert len(dead) == 1 and [s.raw_partition for s in scored] == [2, 0, 1]
    assert [decode_scored(v).raw_partition for _, v, _ in payloads] == [2, 0, 1]
    old = replace(scored[0], raw_partition=None)
    assert b"raw_partition" not in old.to_json() and decode_scored(old.to_json()).raw_partition is None
    with pytest.raises(InvalidEvent, match="raw_partition"):
        decode_scored(old.to_json()[:-1] + b',"raw_partition":"zero"}')


def _uneven_backlog(items: list[ScoredItem], state: EntityAlerts, clock: list[float]) -> list[Any]:
    """Items on two raw partitions (alternating), the scorer draining raw 0 first and then eight times as fast as
    raw 1 (a backfill replayed at full speed: Faust fetched one raw partition before the other), each scored
    record on scored partition crc32(id) % 2, as the mention agent of one worker would read and send them:
    mentions, then its newest event time per origin."""
    import zlib
    from dataclasses import replace

    from finsent.alerts.entity_agent import watermark_records

    raw = {r: [replace(s, raw_partition=r) for s in items[r::2]] for r in (0, 1)}
    seen: dict[Any, datetime] = {}
    out: list[Any] = []
    step = 0
    while raw[0] or raw[1]:
        slow = 1 if step >= 10 else 0  # raw 1's first record is read once raw 0 is hours ahead
        batch = raw[0][:8] + raw[1][:slow]
        raw[0], raw[1] = raw[0][8:], raw[1][slow:]
        for part in (0, 1):
            chunk = [s for s in batch if zlib.crc32(s.id.encode()) % 2 == part]
            vals = _values(chunk)
            records, _, _, newest = entity_records(vals, [part] * len(vals))
            out += [a for _, v in records for a in state.offer(decode_record(v))]
            for origin, at in newest.items():
                seen[origin] = max(at, seen.get(origin, at))
            for _, v in watermark_records([b"k"], seen):
                out += state.offer_watermark(decode_record(v))
        step += 1
        clock[0] = step * 0.05  # every origin that has items left moves well within IDLE_S
    return out


def test_an_uneven_raw_backlog_makes_nothing_late_with_the_default_lateness() -> None:
    """Issue 26's *Limit*: raw partition 0 drained hours of event time ahead of raw partition 1. Both scored
    partitions mix both raw ones, so a watermark per scored partition ran with raw 0 and made raw 1's mentions
    late; per (scored, raw) origin it waits for raw 1, and the alerts are those of the replay read in order."""
    from finsent.alerts.entity_agent import IDLE_S, origin_name

    settings = load_settings()
    assert settings.entities.entity_lateness_s == 3600  # the default, no allowance for the backlog's spread
    items = replay_items(_start())
    clock = [0.0]
    in_order = EntityAlerts(settings, sinks=[], clock=lambda: clock[0])
    expect = in_order.offer(_pending(_values(items)))
    clock[0] = IDLE_S + 1
    expect += in_order.tick()
    assert [a.entity_id for a in expect] == ["JPM"]

    clock = [0.0]
    state = EntityAlerts(settings, sinks=[], clock=lambda: clock[0], partitions=2)
    got = _uneven_backlog(items, state, clock)
    assert state.late == 0  # per scored partition alone: 100+ of raw 1's mentions came after their bucket closed
    assert sorted(k for k in state.unit(0).inputs if k) == ["0/0", "0/1", "1/0", "1/1"]
    clock[0] += IDLE_S + 1  # the backlog is drained: every origin idles, the last buckets close on the wall clock
    got += state.tick()
    assert [a.to_dict() for a in got] == [a.to_dict() for a in expect]
    assert origin_name((3, 1)) == "3/1" and origin_name(3) == "3"


# --- what a stored entity alert shows: headlines and the model version ----------------------------------------------
def test_an_entity_alert_quotes_untitled_stories_by_their_text_and_names_the_majority_model_version() -> None:
    """News without a headline field (the crypto news CSV, tweets) gave entity alerts blank headlines, and their
    model version was empty; both now come from the mentions the detector holds."""
    from dataclasses import replace

    from finsent.alerts.entity_detector import story_title

    items = []
    for s in replay_items(_start()):
        if s.id.startswith("jpm"):  # the burst: untitled, two thirds scored by the newer model (a hot reload)
            k = int(s.id[3:])
            s = replace(s, item=replace(s.item, title=None), model_version="m-new" if k % 3 else "m-old")
        items.append(s)
    state = EntityAlerts(_settings(), sinks=[])
    alerts = state.offer(_pending(_values(items))) + state.tick()
    assert [a.entity_id for a in alerts] == ["JPM"]
    a = alerts[0]
    assert a.model_version == "m-new"
    titles = [h["title"] for h in (a.evidence or {})["headlines"]]
    assert titles and all(t.startswith("JPMorgan") for t in titles)
    # a version 1 record from before the version column decodes, with no version
    row = ["i", "2024-01-01T00:00:00Z", "negative", 80, "Reuters", "t", None, "text"]
    body = {"key": "JPM", "id": "JPM", "name": "JPMorgan", "m": [row]}
    assert [p.mention.model_version for p in decode_record(json.dumps(body))] == [""]
    body["m"] = [[*row, "m-1"]]
    assert [p.mention.model_version for p in decode_record(json.dumps(body))] == ["m-1"]
    assert story_title("", "  a\nlong   text " * 40, 30) == "a long text a long text a…"
    assert story_title("Headline", "text") == "Headline"
