"""A restarted worker starts its entity detector from the store, not cold (issue 26).

The history: 30 hours of normal news about six companies, Exxon in bad news all the time (three distinct negative
stories an hour from three outlets: its normal level), and in hour 26 the JPMorgan burst (60 negative headlines).
A detector that knows the first 24 hours sees only JPMorgan; a cold one, judging Exxon by the prior alone (0.1
novel negatives an hour), raises Exxon again as soon as its window fills. Each test shows the cold answer too, so
it fails if the restore does nothing.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import pytest

from finsent.alerts.entity_agent import EntityAlerts, attach, decode_record, entity_records, watermark_keys
from finsent.core.events import ScoredItem, decode_alert, utcnow
from tests.alerts.test_entity_agent import SOURCES, _scored, _settings, replay_items, tiny_classifier  # noqa: F401

HOURS = 30
BASELINE_HOURS = 24
BURST_HOUR = 26
VERBS = ["faces", "reports", "discloses", "warns of", "confirms", "denies", "suffers", "admits"]
TROUBLES = [
    "refinery fire near {c}",
    "pipeline leak outside {c}",
    "tanker spill off {c}",
    "strike at its {c} terminal",
    "emissions fine in {c}",
    "well blowout close to {c}",
    "lawsuit from {c} residents",
    "plant shutdown at {c}",
    "gas flaring probe in {c}",
    "chemical release in {c}",
]
PLACES = ["Baytown", "Beaumont", "Joliet", "Billings", "Baton Rouge", "Torrance", "Fawley", "Antwerp", "Jurong"]


def chronic_exxon(start: datetime, hours: int) -> list[ScoredItem]:
    """Three distinct negative Exxon stories an hour, each from a different outlet: Exxon's normal level."""
    out = []
    for h in range(hours):
        for q in range(3):
            n = h * 3 + q
            trouble = TROUBLES[n % len(TROUBLES)].format(c=PLACES[(n // len(TROUBLES)) % len(PLACES)])
            title = f"Exxon {VERBS[n % len(VERBS)]} {trouble}, day {n}"
            at = start + timedelta(hours=h, minutes=10 + 17 * q)
            out.append(_scored(f"xom{n}", at, "XOM", "negative", title, SOURCES[q]))
    return out


def history(start: datetime) -> list[ScoredItem]:
    items = replay_items(start, hours=HOURS, burst_hour=BURST_HOUR) + chronic_exxon(start, HOURS)
    return sorted(items, key=lambda s: (s.item.published_at, s.id))


def _start() -> datetime:
    return (utcnow() - timedelta(hours=HOURS + 1)).replace(minute=0, second=0, microsecond=0)


def _split(items: list[ScoredItem], start: datetime) -> tuple[list[ScoredItem], list[ScoredItem]]:
    cut = start + timedelta(hours=BASELINE_HOURS)
    return [s for s in items if s.item.published_at < cut], [s for s in items if s.item.published_at >= cut]


def _feed(state: EntityAlerts, items: list[ScoredItem], restore: bool) -> list[Any]:
    """Offer the items' mentions to their owning units as the detect agent does (restoring each unit first)."""
    raised: list[Any] = []
    partitions = state.partitions or state.settings.kafka.partitions
    records, _, _, _ = entity_records((s.to_json() for s in items), None, partitions)
    keys = watermark_keys(partitions)
    for key, value in records:
        via = keys.index(key)  # one record per owning partition, keyed so that it lands there
        if restore and via not in state.units:
            raised += state.restore(via)
        raised += state.offer(decode_record(value), via)
    now = max(s.item.published_at for s in items) + timedelta(hours=4)
    for u in state.units.values():  # the watermark moves on: close every bucket
        raised += state._raised(u._release(now))
    return raised


@pytest.mark.integration
@pytest.mark.parametrize("engine", ["chdb", "server"])
def test_a_restored_detector_knows_the_baseline_and_the_episode_a_cold_one_does_not(
    engine: str, request: pytest.FixtureRequest
) -> None:
    from finsent.stream.store import open_store

    url = request.getfixturevalue("chdb_db_url" if engine == "chdb" else "clickhouse_db_url")
    start = _start()
    items = history(start)
    before, after = _split(items, start)
    store = open_store(url)
    store.ensure_schema()
    try:
        settings = _settings(partitions=2)
        first = EntityAlerts(settings, store_getter=lambda: store, sinks=[], partitions=2)
        raised = _feed(first, before, restore=True)  # an empty store: a cold start, rightly
        assert [a.entity_id for a in raised] == ["XOM"]  # Exxon's level is news to a detector with no history
        store.insert_scored(before)
        store.insert_alerts(raised)

        cold = EntityAlerts(settings, store_getter=lambda: store, sinks=[], partitions=2)
        assert sorted(a.entity_id for a in _feed(cold, after, restore=False)) == ["JPM", "XOM"]

        warm = EntityAlerts(settings, store_getter=lambda: store, sinks=[], partitions=2)
        # the broker redelivers the last baseline hour as well: counted once, not late
        redelivered = [s for s in before if s.item.published_at >= start + timedelta(hours=BASELINE_HOURS - 1)]
        alerts = _feed(warm, redelivered + after, restore=True)
        assert [(a.entity_id, a.entity_name) for a in alerts] == [("JPM", "JPMorgan Chase")]
        assert alerts[0].window_end > start + timedelta(hours=BURST_HOUR)
        assert warm.restored_units == 2 and warm.late == 0
        assert "XOM" in {st.entity_id for st in warm.states().values()}  # the episode goes on, not raised again
        # the alerts a restore re-raises carry the version that scored their mentions, as live ones do
        _, rebuilt = EntityAlerts(settings, store_getter=lambda: store, sinks=[], partitions=2)._rebuild()
        again = [a for _, raised in rebuilt.values() for a in raised]
        assert [(a.entity_id, a.model_version) for a in again] == [("XOM", "test-model")]
    finally:
        store.close()


def test_a_store_that_cannot_be_read_starts_the_unit_cold_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        database = "x"

        def query(self, *a: Any, **k: Any) -> Any:
            raise OSError("connection refused")

    state = EntityAlerts(_settings(), store_getter=Broken, sinks=[], partitions=2)
    assert state.restore(0) == [] and 0 in state.units and state.restored_units == 0
    assert "starts cold" in caplog.text and "connection refused" in caplog.text


@pytest.mark.integration
def test_a_restarted_worker_detects_the_spike_at_once_and_raises_no_alert_from_a_cold_start(
    kafka_bootstrap,
    chdb_db_url,
    unique_name,
    tiny_classifier,  # noqa: F811 - the fixture imported above
) -> None:
    """A real worker on Tansu + chdb sees the baseline and stops; a second one, same group, sees the rest."""
    from finsent.stream.service import WorkerThread
    from finsent.stream.store import open_store
    from tests.alerts.test_entity_agent import publish_replay
    from tests.stream_helpers import read_topic, stream_settings, wait_for

    s = stream_settings(kafka_bootstrap, chdb_db_url, unique_name, entity_lateness_s=7200)
    store = open_store(chdb_db_url)
    store.ensure_schema()
    start = _start()
    before, after = _split(history(start), start)
    try:
        with WorkerThread(s, classifier=tiny_classifier, store=store, extensions=[attach]) as w:
            state = w.context.extensions.get("entity_alerts")
            for i in range(0, len(before), 60):  # stored as the worker's store stage stores them, then published
                store.insert_scored(before[i : i + 60])
                publish_replay(s, before[i : i + 60], chunk=60, pause_s=0.0)
            seen = lambda: state.mentions + state.redelivered  # noqa: E731 - a mention a restore counted is skipped
            try:
                wait_for(lambda: seen() >= len(before), 90, "the baseline at its owners")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {seen()} of {len(before)}, {state.late} late") from None
            wait_for(lambda: state.alerts, 30, "Exxon's first-day alert")
            time.sleep(2)
            assert [a.entity_id for a in state.alerts] == ["XOM"]
        with WorkerThread(s, classifier=tiny_classifier, store=store, extensions=[attach]) as w:
            state = w.context.extensions.get("entity_alerts")
            t0 = time.monotonic()
            for i in range(0, len(after), 60):
                store.insert_scored(after[i : i + 60])
                publish_replay(s, after[i : i + 60], chunk=60, pause_s=0.0)
            try:
                wait_for(lambda: state.alerts, 60, "the JPMorgan alert")
            except AssertionError as exc:
                units = {v: (len(u.pending), u.released_upto, u.watermark(), u.inputs) for v, u in state.units.items()}
                why = f"{state.mentions} mentions, {state.redelivered} redelivered, {state.late} late, units {units}"
                raise AssertionError(f"{exc}: {why}") from None
            detected_s = time.monotonic() - t0
            time.sleep(3)  # the last buckets close: a cold Exxon would fire now
            assert [(a.entity_id, a.entity_name) for a in state.alerts] == [("JPM", "JPMorgan Chase")]
            assert state.restored_units >= 1 and state.late == 0
            print(f"JPMorgan detected {detected_s:.1f} s after the restarted worker got the rest")
    finally:
        store.close()
    published = [decode_alert(r.value) for r in read_topic(s, s.kafka.topic_alerts, 2)]
    assert sorted(a.entity_id for a in published if a.kind == "entity") == ["JPM", "XOM"]


@pytest.mark.integration
def test_a_fresh_worker_does_not_restore_what_its_own_scorer_stored_ahead_of_the_entity_stage(chdb_db_url) -> None:
    """A first start on a backfill: the scorer of this very run stores items (one raw partition drained weeks of
    event time ahead) before the entity stage reads its first record. Restoring from them closed the buckets up to
    the store's newest event time and made the stream's older mentions late (``finsent bench entities
    --through-stack``: 933 of 5,340); only what was scored before the worker started is the previous life."""
    from dataclasses import replace

    from finsent.stream.store import open_store

    start = _start()
    items = history(start)
    store = open_store(chdb_db_url)
    store.ensure_schema()
    try:
        state = EntityAlerts(_settings(entity_lateness_s=3600), store_getter=lambda: store, sinks=[], partitions=2)
        time.sleep(1.1)  # scored_at has seconds: what follows is scored after the worker started
        ahead = [replace(s, scored_at=utcnow()) for s in items if s.item.published_at >= start + timedelta(hours=20)]
        store.insert_scored(ahead)
        alerts = _feed(state, items, restore=True)
        assert state.late == 0 and state.restored_units == 0
        assert sorted(a.entity_id for a in alerts) == ["JPM", "XOM"]  # Exxon is news to a first start; so is the burst
    finally:
        store.close()
