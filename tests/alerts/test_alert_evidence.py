"""Stored topic alerts carry their headlines and the model version that scored them (issue 25).

Before, a stored topic alert had no headline (``evidence`` empty) and ``model_version`` ''. Over a real store
(chdb and clickhouse-server 18.16): the AlertRunner raises the spike from stored counts, and the stored alert
names the most negative items of the topic in its window, most negative first, and the model version that
scored most of the window's items (a hot reload split it: two versions). Items of other topics and outside the
window never appear. A store that cannot answer leaves the alert without evidence, and it still goes out.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest

from finsent.alerts.base import with_evidence
from finsent.alerts.detector import make_detector
from finsent.alerts.runner import AlertRunner
from finsent.core.events import Alert, decode_alert, utcnow
from finsent.core.settings import load_settings
from finsent.stream.store import open_store
from tests.alerts.test_alerts_runner import _history


def test_alert_events_carry_model_version_and_older_payloads_decode() -> None:
    now = utcnow()
    a = Alert("banking", now, now - timedelta(minutes=1), now, 6, 10, 0.6, 0.1, 7.0, "ewma_z", model_version="m2")
    assert decode_alert(a.to_json()).model_version == "m2"
    old = a.to_dict()
    del old["model_version"]  # an alert sent before issue 25
    assert decode_alert(json.dumps(old)).model_version == ""


def test_a_store_that_cannot_answer_leaves_the_alert_as_raised(caplog: pytest.LogCaptureFixture) -> None:
    class Down:
        def topic_alert_evidence(self, *args: object) -> dict:
            raise ConnectionError("store down")

    now = utcnow()
    a = Alert("banking", now, now - timedelta(minutes=1), now, 6, 10, 0.6, 0.1, 7.0, "ewma_z")
    assert with_evidence(Down(), [a]) == [a] and with_evidence(None, [a]) == [a]
    assert "no headlines for the warning alert on banking (store down)" in caplog.text
    entity = replace(a, kind="entity", topic="", evidence={"headlines": [{"title": "x"}]})
    assert with_evidence(Down(), [entity]) == [entity]  # entity alerts bring their own evidence


@pytest.mark.integration
@pytest.mark.parametrize("engine", ["chdb", "clickhouse"])
def test_stored_spike_alert_names_its_headlines_and_model_version(engine: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("chdb_db_url" if engine == "chdb" else "clickhouse_db_url")
    store = open_store(url)
    try:
        store.ensure_schema()
        now = utcnow()
        items = _history(now, minutes=150, spike_last=6)
        # a hot reload in every minute: items of a minute's first 40 s scored by "test-model-b" (most of any window),
        # the rest by "test-model"; each negative item gets its own p_negative so the order is known
        items = [
            replace(
                it,
                model_version="test-model-b" if it.item.ingested_at.second < 40 else it.model_version,
                sentiment_probs={**it.sentiment_probs, "negative": 0.5 + (i % 4000) / 10000}
                if it.sentiment == "negative"
                else it.sentiment_probs,
            )
            for i, it in enumerate(items)
        ]
        store.insert_scored(items)
        runner = AlertRunner(store, make_detector(load_settings().alerts), 60, lookback=timedelta(hours=3))
        raised = runner.poll(now + timedelta(seconds=60))
        assert raised and {a.topic for a in raised} == {"banking"}
        stored = {r["id"]: r for r in store.alerts(since=timedelta(hours=4))}
        for a in raised:
            row = stored[a.id]
            window = [
                it for it in items if it.topic == "banking" and a.window_start <= it.item.ingested_at < a.window_end
            ]
            negatives = sorted(
                (it for it in window if it.sentiment == "negative"), key=lambda it: -it.sentiment_probs["negative"]
            )
            heads = row["evidence"]["headlines"]
            assert [h["id"] for h in heads] == [it.item.id for it in negatives[:5]], (heads, a)
            assert all(h["title"].startswith("banking headline") and h["p_negative"] > 0.5 for h in heads)
            versions: dict[str, int] = {}
            for it in window:
                versions[it.model_version] = versions.get(it.model_version, 0) + 1
            assert row["evidence"]["model_versions"] == versions
            top = sorted(versions.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]  # most items, then by name
            assert row["model_version"] == a.model_version == top != ""
            assert set(versions) == {"test-model", "test-model-b"} and row["model_version"] == "test-model-b"
    finally:
        store.close()
