"""Replay input errors: every bad row reported with its file, line and reason; nothing merged or rolled over."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from finsent.core.events import stable_id
from finsent.ingest import replay as replay_mod
from finsent.ingest.dedup import DedupStore
from finsent.ingest.metrics import IngestMetrics
from finsent.ingest.pipeline import Pipeline
from finsent.ingest.replay import MAX_BAD_ROWS, ReplayInputError, iter_file_records, replay


def _dry_run(paths: list[Path]):
    out = io.StringIO()
    pipe = Pipeline(publisher=None, dedup=DedupStore(None), metrics=IngestMetrics(CollectorRegistry()), out=out)
    stats = replay(paths, pipe, progress=False)
    return stats, [json.loads(x) for x in out.getvalue().splitlines()]


def _bad(path: Path) -> list[tuple[int, str]]:
    seen: list[tuple[int, str]] = []
    list(iter_file_records(path, on_bad_row=lambda b: seen.append((b.line, b.reason))))
    return seen


def test_csv_unterminated_quote_is_one_bad_row_and_the_rest_is_read(tmp_path, caplog) -> None:
    path = tmp_path / "tweets.csv"
    path.write_text(
        "text,label\n"
        "first row,a\n"
        '"second, quoted\nover two lines",b\n'  # lines 3-4: a legitimate multi-line field
        "\n"
        '"fourth never closed,d\n'  # line 6: the quote swallows the rest of the file
        "fifth,e\n"
        "sixth,f\n"
    )
    with caplog.at_level(logging.WARNING, logger="finsent.ingest.replay"):
        stats, items = _dry_run([path])
    assert [i["text"] for i in items] == ["first row", "second, quoted over two lines", "fifth", "sixth"]
    assert stats.produced == 4 and stats.skipped == 1
    (bad,) = stats.bad_rows
    assert bad["file"] == "tweets.csv" and bad["line"] == 6 and bad["reason"] == "unterminated_quote"
    assert any(r.getMessage().startswith("tweets.csv:6: skipped: unterminated_quote") for r in caplog.records)
    # a quote opened on the last line, without a newline after it, is reported too
    last = tmp_path / "last.csv"
    last.write_text('text\nok\n"dangling')
    assert _bad(last) == [(3, "unterminated_quote")]


def test_csv_ids_and_row_numbers_unchanged_for_good_files(tmp_path) -> None:
    path = tmp_path / "good.csv"
    path.write_text('text,label\none,a\n\n"two\nlines",b\nthree "quoted" word,c\n')
    recs = list(iter_file_records(path))
    assert [r.row for r in recs] == [1, 2, 3]  # blank lines are not rows, as with csv.DictReader
    assert [r.item.id for r in recs] == [
        stable_id("replay", "good.csv", str(n), t)
        for n, t in ((1, "one"), (2, "two\nlines"), (3, 'three "quoted" word'))
    ]
    assert recs[2].extras == {"label": "c"}


def test_csv_header_with_an_unclosed_quote_is_an_input_error_naming_the_line(tmp_path) -> None:
    path = tmp_path / "hdr.csv"
    path.write_text('text,"label\none,a\n')
    with pytest.raises(ReplayInputError, match=r"hdr\.csv:1: .*never closed"):
        list(iter_file_records(path))


def test_csv_field_over_the_size_limit_is_a_bad_row_and_reading_resumes(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(replay_mod, "CSV_FIELD_LIMIT", 200)
    path = tmp_path / "big.csv"
    path.write_text("text,label\nok,a\n" + '"opened here,b\n' + "x" * 150 + ",c\n" + "y" * 150 + ",d\nlast,e\n")
    seen: list[tuple[int, str]] = []
    recs = list(iter_file_records(path, on_bad_row=lambda b: seen.append((b.line, b.reason))))
    assert seen == [(3, "csv_error")]
    assert [r.item.text for r in recs] == ["ok", "x" * 150, "y" * 150, "last"]


def test_jsonl_bad_lines_have_line_numbers_and_reasons(tmp_path, caplog) -> None:
    path = tmp_path / "tweets.jsonl"
    path.write_text(
        json.dumps({"text": "fine"}) + "\n"
        "\n"  # blank lines count as lines, not as rows
        "not json at all\n"
        "[1, 2]\n"
        + json.dumps({"text": ""})
        + "\n"
        + json.dumps({"text": "bad date", "published_at": "2100-02-28T10:00:00Z"})
        + "\n"
        + json.dumps({"text": "good date", "published_at": "2024-02-29T10:00:00Z"})
        + "\n"
        + json.dumps({"text": 5})
        + "\n"
    )
    with caplog.at_level(logging.WARNING, logger="finsent.ingest.replay"):
        stats, items = _dry_run([path])
    assert [(b["line"], b["reason"]) for b in stats.bad_rows] == [
        (3, "not_json"),
        (4, "not_object"),
        (5, "empty_text"),
        (6, "bad_time"),
        (8, "bad_type"),
    ]
    assert stats.skipped == 5 and stats.produced == 2
    assert [i["text"] for i in items] == ["fine", "good date"]
    assert items[1]["published_at"] == "2024-02-29T10:00:00.000Z"
    assert "2100-02-28" in stats.bad_rows[3]["detail"] and "ahead of this host's clock" in stats.bad_rows[3]["detail"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0].startswith("tweets.jsonl:3: skipped: not_json (")
    assert any(w.startswith("tweets.jsonl:6: skipped: bad_time (") for w in warnings)
    # the row number in the id is unchanged: non-blank lines, bad ones included
    assert items[1]["id"] == stable_id("replay", "tweets.jsonl", "6", "good date")


def test_csv_impossible_date_is_kept_without_a_time_counted_and_warned_not_rolled_over(tmp_path, caplog) -> None:
    path = tmp_path / "dates.csv"
    path.write_text("text,published_at\nrolled,2024-02-30\nreal,2024-03-01T00:00:00Z\nnone,\n")
    with caplog.at_level(logging.WARNING, logger="finsent.ingest.metrics"):
        stats, items = _dry_run([path])
    assert stats.bad_rows == []
    assert [(i["text"], i["published_at"]) for i in items] == [
        ("rolled", None),
        ("real", "2024-03-01T00:00:00.000Z"),
        ("none", None),
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dates.csv:2: " in warnings[0] and "day is out of range" in warnings[0]


def test_bad_rows_are_capped_in_the_summary_and_the_log(tmp_path, caplog) -> None:
    path = tmp_path / "junk.jsonl"
    path.write_text("junk\n" * (MAX_BAD_ROWS + 50) + json.dumps({"text": "one good"}) + "\n")
    with caplog.at_level(logging.WARNING, logger="finsent.ingest.replay"):
        stats, items = _dry_run([path])
    assert stats.skipped == MAX_BAD_ROWS + 50 and len(stats.bad_rows) == MAX_BAD_ROWS and len(items) == 1
    assert stats.bad_rows[-1]["line"] == MAX_BAD_ROWS
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == MAX_BAD_ROWS + 1  # + "further..."


def test_json_array_rows_have_lines_and_a_broken_array_names_its_line(tmp_path) -> None:
    path = tmp_path / "items.json"
    path.write_text('[\n  {"text": "a"},\n  5,\n  {"text": "b", "published_at": "2099-12-01"}\n]\n')
    assert _bad(path) == [(3, "not_object"), (4, "bad_time")]
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"text": "a"},\n  {"text": "b"}\n  {"text": "c"}\n]\n')
    with pytest.raises(ReplayInputError, match=r"broken\.json:4: not valid JSON"):
        list(iter_file_records(broken))


def test_cli_summary_lists_bad_rows_and_a_broken_file_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    from finsent.cli import main

    monkeypatch.setenv("FINSENT_INGEST_STATE_DIR", str(tmp_path))
    path = tmp_path / "t.csv"
    path.write_text('text\nok\n"never closed\nswallowed\n')
    assert main(["ingest", "replay", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    summary = json.loads(out[-1])
    assert summary["produced"] == 2 and summary["skipped"] == 1
    assert [(b["line"], b["reason"]) for b in summary["bad_rows"]] == [(3, "unterminated_quote")]
    hdr = tmp_path / "h.csv"
    hdr.write_text('"text\nok\n')
    assert main(["ingest", "replay", str(hdr), "--dry-run"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("finsent: error: ") and "h.csv:1" in err[0]
