"""``finsent bench entities --through-stack``: the collapse table and the comparison with the offline run.

The stack run itself (a minute of the shipped model on a Tansu broker and clickhouse-server) is a benchmark, not a
test; here: that an alert counts for a collapse when its entity or its first headlines name it, that headlines are
counted per collapse, and that the comparison sorts alerts into both / offline only / stack only by hour and name.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from finsent.bench.entities import NewsRow
from finsent.bench.entities_stack import COLLAPSES, collapses, compare

UTC = timezone.utc  # noqa: UP017


def _row(title: str) -> NewsRow:
    return NewsRow("r", datetime(2023, 1, 19, tzinfo=UTC), "CoinDesk", title, "")


def _alert(at: str, name: str, headlines: list[str], eid: str | None = None) -> dict:
    return {"at": at, "entity_name": name, "entity_id": eid, "headlines": headlines}


def test_an_alert_counts_for_a_collapse_by_its_entity_or_its_headlines_and_modes_are_compared() -> None:
    rows = [_row("Crypto lender Genesis files for bankruptcy"), _row("SBF denied bail"), _row("Bitcoin rallies")]
    offline = [
        _alert("2023-01-20T09:00:00.000Z", "Genesis Global", ["Genesis files"]),
        _alert("2022-12-13T16:00:00.000Z", "Sam Bankman-Fried", ["SBF arrested in the Bahamas"]),
    ]
    stack = [
        _alert("2023-01-20T09:00:00.000Z", "Genesis Global", ["Genesis files"], "PRIV:GENESIS"),
        _alert("2023-01-03T17:00:00.000Z", "Ether", ["Ether slides as lender halts withdrawals"]),
    ]
    table = {c["collapse"]: c for c in collapses(rows, offline, stack)}
    assert list(table) == list(COLLAPSES)
    assert table["Genesis (Jan 2023)"]["headlines"] == 1 and table["FTX (Nov 2022)"]["headlines"] == 1
    assert table["Genesis (Jan 2023)"]["offline"] == ["2023-01-20T09:00 Genesis Global"]
    assert table["Genesis (Jan 2023)"]["stack"] == ["2023-01-20T09:00 Genesis Global"]
    assert table["FTX (Nov 2022)"]["offline"] == ["2022-12-13T16:00 Sam Bankman-Fried"]  # by its headline
    assert table["FTX (Nov 2022)"]["stack"] == [] and table["Celsius (Jul 2022)"]["headlines"] == 0
    report = compare({"alerts": offline, "stack": {"alerts": stack}}, rows)
    assert report["both"] == ["2023-01-20T09 Genesis Global"]
    assert report["offline_only"] == ["2022-12-13T16 Sam Bankman-Fried"]
    assert report["stack_only"] == ["2023-01-03T17 Ether"]


def test_the_plumbing_classifier_names_two_different_entities_per_item_the_same_way_every_time() -> None:
    from finsent.bench.entities_stack import EntityConstantClassifier

    clf = EntityConstantClassifier()
    texts = [f"tweet number {i}" for i in range(500)]
    preds = clf.predict(texts)
    assert all(len({e.entity_id for e in p.entities}) == 2 for p in preds)  # two mentions an item, as the news
    assert len({e.entity_id for p in preds for e in p.entities}) > 250  # spread over the 300 names
    assert [p.entities for p in clf.predict(texts)] == [p.entities for p in preds]


@pytest.mark.integration
def test_the_plumbing_bench_runs_every_mode_on_fresh_databases_and_reports_on_off_ratios() -> None:
    """A small run of ``bench entities --plumbing`` (Tansu and chdb): every mode once per round, the issue's ratio
    (items/s on / off) and the CPU ratio computed from the rounds; "on" waits for every mention at its owner."""
    from finsent.bench.entities_stack import PLUMBING_MODES, run_entity_plumbing

    out = run_entity_plumbing(300, 1, progress=lambda _: None)
    assert [r["mode"] for r in out["rounds"]] == list(PLUMBING_MODES)  # round 0: off, mentions, on
    by_mode = {r["mode"]: r for r in out["rounds"]}
    on, off = by_mode["on"], by_mode["off"]
    assert all(r["items"] == 300 and r["cpu_ms_per_item"] > 0 for r in out["rounds"])
    assert on["done_s"] >= on["stored_s"] and off["done_s"] == off["stored_s"]
    assert on["restore_s"] < 1.0  # a fresh database: nothing of an earlier round to restore
    assert out["items_per_s_ratio"] == round(out["on"]["items_per_s"] / out["off"]["items_per_s"], 3)
    assert out["on"]["items_per_s"] == round(300 / on["done_s"], 1)
    assert out["cpu_cost"] == round(out["on"]["cpu_ratio"] - 1, 3)
