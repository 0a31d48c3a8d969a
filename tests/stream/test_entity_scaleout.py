"""Entity alerts scale out: 3 workers raise the same alerts as 1 worker on the same replay (Tansu broker, chdb).

The replay (:func:`tests.alerts.test_entity_agent.replay_items`, plus a second, smaller surge about Pfizer in hour 3) is
published to the scored topic of 3 partitions, keyed by item id as the scorer publishes it, so every worker
reads mentions of every company. Mentions are re-keyed by entity, so each company's detector lives on one
worker: each alert must be raised by exactly one of the three, and the alerts (ids, windows, counts, index,
evidence) must equal those of a single worker reading the same replay. Like the topic agent's two-worker test,
the replay starts once the group is settled (every partition owned, each worker holding one).
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from finsent.alerts.entity_agent import attach
from finsent.core.events import ScoredItem
from finsent.stream.store import open_store
from tests.alerts.test_entity_agent import BAD_STORIES, SOURCES, _scored, _start, publish_replay, replay_items

pytestmark = pytest.mark.integration

PFIZER_STORIES = [
    "recalls two million vaccine doses over contamination",
    "factory fire halts production in Belgium",
    "drug regulator widens safety investigation",
    "quarterly sales miss forecasts by a wide margin",
    "chief financial officer departs suddenly",
    "late stage cancer trial fails endpoint",
    "union strike spreads to Irish plants",
    "price caps erode margins further",
    "patent lawsuit loss opens door to generics",
    "shareholders sue over misleading trial data",
    "insurers drop coverage for its obesity pill",
    "supply chain outage delays key antibiotic",
]


def two_surges() -> list[ScoredItem]:
    start = _start()
    items = replay_items(start)
    t0 = start + timedelta(hours=3, minutes=40)
    for k in range(24):
        title = ("Pfizer: " if k < 12 else "Report: Pfizer ") + PFIZER_STORIES[k % 12]
        items.append(_scored(f"pfe{k}", t0 + timedelta(minutes=k), "PFE", "negative", title, SOURCES[(k + 1) % 4]))
    assert len(BAD_STORIES) == 12
    return sorted(items, key=lambda s: (s.item.published_at, s.id))


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from finsent.models.runtime import Classifier
    from finsent.models.testing import make_tiny_model

    return Classifier.load(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def _assigned(w: Any, topic: str) -> set[int]:
    try:
        return {tp.partition for tp in w.app.consumer.assignment() if tp.topic == topic}
    except Exception:  # noqa: BLE001 - not yet started
        return set()


def run_replay(n_workers: int, settings: Any, store: Any, classifier: Any, items: list[ScoredItem]) -> list[list[Any]]:
    """The alerts each of ``n_workers`` workers raised on the replay (once every mention reached its owner)."""
    from finsent.stream.service import WorkerThread
    from tests.stream_helpers import wait_for

    workers = []
    try:
        for _ in range(n_workers):
            workers.append(WorkerThread(settings, classifier=classifier, store=store, extensions=[attach]).start())
        topics = (settings.kafka.topic_scored, settings.kafka.topic_entity_counts)

        def settled() -> bool:
            owned = [[_assigned(w, t) for w in workers] for t in topics]
            return all(
                sorted(p for ps in o for p in ps) == list(range(settings.kafka.partitions)) for o in owned
            ) and all(o_ for o in owned for o_ in o)

        wait_for(settled, 120, f"{n_workers} worker(s) owning every partition")
        time.sleep(2)
        assert settled(), "the group rebalanced again"
        publish_replay(settings, items)
        states = [w.context.extensions.get("entity_alerts") for w in workers]
        n_mentions = sum(len(s.entities) for s in items)
        try:
            wait_for(lambda: sum(st.mentions + st.late for st in states) >= n_mentions, 90, "every mention")
        except AssertionError as exc:
            why = [(st.mentions, st.late, st.bad_values, [u.inputs for u in st.units.values()]) for st in states]
            raise AssertionError(f"{n_workers} worker(s): {exc}: of {n_mentions}: {why}") from None
        wait_for(lambda: sum(len(st.alerts) for st in states) >= 2, 60, "both surges alerted")
        time.sleep(3)  # a duplicate from another worker would show up by now
        assert sum(st.late for st in states) == 0, [(st.late, [u.inputs for u in st.units.values()]) for st in states]
        return [list(st.alerts) for st in states]
    finally:
        for w in workers:
            w.stop()


def test_three_workers_raise_the_same_entity_alerts_as_one_worker_each_from_exactly_one_worker(
    kafka_bootstrap, chdb_db_url, unique_name, tiny_classifier
) -> None:
    from tests.stream_helpers import stream_settings

    items = two_surges()
    store = open_store(chdb_db_url)
    store.ensure_schema()
    try:
        one = run_replay(
            1,
            stream_settings(kafka_bootstrap, chdb_db_url, unique_name + "a", partitions=3, entity_lateness_s=7200),
            store,
            tiny_classifier,
            items,
        )
        three = run_replay(
            3,
            stream_settings(kafka_bootstrap, chdb_db_url, unique_name + "b", partitions=3, entity_lateness_s=7200),
            store,
            tiny_classifier,
            items,
        )
    finally:
        store.close()
    single = sorted((a.to_dict() for a in one[0]), key=lambda d: d["id"])
    assert sorted(d["entity_id"] for d in single) == ["JPM", "PFE"]  # on different partitions (murmur2 % 3)
    raised = [a.to_dict() for alerts in three for a in alerts]
    assert sorted(raised, key=lambda d: d["id"]) == single
    # each alert from exactly one worker (the entity's owner)
    assert sorted(a["id"] for a in raised) == sorted({a["id"] for a in raised})
    print(f"\nalerts per worker (3 workers): {[[a.entity_id for a in alerts] for alerts in three]}")
