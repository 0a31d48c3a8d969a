"""Watchlist files (issue 26): CSV or JSON lines, ids/tickers/names, per-entity thresholds, reload on change."""

from __future__ import annotations

import logging
import os
from dataclasses import fields
from pathlib import Path

import pytest

from finsent.alerts.entity_detector import Thresholds
from finsent.alerts.watchlist import THRESHOLD_COLUMNS, Watchlist, load_entries
from finsent.core.errors import ConfigError, FinsentError


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _bump(path: Path, text: str) -> None:
    """Rewrite and move the mtime forward (a same-second rewrite of the same size would be invisible)."""
    st = path.stat()
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def test_the_columns_are_the_detectors_thresholds() -> None:
    assert set(THRESHOLD_COLUMNS) == {f.name for f in fields(Thresholds)}


@pytest.mark.parametrize(
    ("entity_id", "name", "listed"),
    [
        ("AAPL", "Apple", True),  # by id
        ("X:BTC", "Bitcoin", True),  # a bare ticker matches the id's symbol
        (None, "genesis global", True),  # "Genesis Global Ltd." normalised like the linker's unlinked names
        (None, "Crypto.com", True),  # by name, case-insensitive
        ("MSFT", "Microsoft", False),
        (None, "genesis", False),  # a different name, not a prefix match
    ],
)
def test_ids_tickers_and_names_match(tmp_path: Path, entity_id: str | None, name: str, listed: bool) -> None:
    text = "# the desk's names\nentity\nAAPL\nBTC\nGenesis Global Ltd.\ncrypto.com\n"
    wl = Watchlist(_write(tmp_path / "w.csv", text))
    assert ((entity_id, name) in wl) is listed


def test_csv_and_json_lines_carry_per_entity_thresholds(tmp_path: Path) -> None:
    csv_file = _write(tmp_path / "w.csv", "ticker,score,min_sources,min_negative_share\nAAPL,6,3,\nTSLA,,,0.5\n")
    entries = load_entries(csv_file)
    assert [(e.entity, e.overrides) for e in entries] == [
        ("AAPL", {"score": 6.0, "min_sources": 3}),
        ("TSLA", {"min_negative_share": 0.5}),
    ]
    jl = _write(tmp_path / "w", '\n{"name": "Genesis", "min_novel_negative": 3}\n# comment\n{"id": "X:BTC"}\n')
    assert [(e.entity, e.overrides, e.line) for e in load_entries(jl)] == [
        ("Genesis", {"min_novel_negative": 3.0}, 2),
        ("X:BTC", {}, 4),
    ]


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("w.csv", "entity,scroe\nAAPL,3\n", "unknown column"),
        ("w.csv", "entity,score\nAAPL,high\n", "w.csv:2: score='high' is not a float"),
        ("w.csv", "entity,score\nAAPL,-1\n", "out of range"),
        ("w.csv", "entity,min_negative_share\nAAPL,2\n", "out of range"),
        ("w.csv", "entity\n,\n", "more cells"),
        ("w.csv", "score\n3\n", "no entity"),
        ("w.jsonl", '{"entity": "AAPL"}\n{"entity": \n', "w.jsonl:2: not JSON"),
        ("w.jsonl", '["AAPL"]\n', "must be an object"),
        ("w.jsonl", '{"entity": "AAPL", "min_sources": true}\n', "out of range"),
    ],
)
def test_a_broken_file_names_the_line_to_fix(tmp_path: Path, name: str, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        Watchlist(_write(tmp_path / name, text))
    assert isinstance(err.value, FinsentError)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read watchlist"):
        Watchlist(tmp_path / "nope.csv")


def test_reloaded_when_the_file_changes_without_a_restart(tmp_path: Path) -> None:
    p = _write(tmp_path / "w.csv", "entity\nAAPL\n")
    wl = Watchlist(p, check_interval_s=0.0)
    assert ("AAPL", "Apple") in wl and ("TSLA", "Tesla") not in wl
    _bump(p, "entity,score\nTSLA,7\n")
    assert ("TSLA", "Tesla") in wl and ("AAPL", "Apple") not in wl and wl.reloads == 1
    assert wl.lookup("TSLA", "Tesla").overrides == {"score": 7.0}  # type: ignore[union-attr]


def test_a_broken_edit_keeps_the_last_good_list(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = _write(tmp_path / "w.csv", "entity\nAAPL\n")
    wl = Watchlist(p, check_interval_s=0.0)
    _bump(p, "entity,score\nAAPL,lots\n")
    with caplog.at_level(logging.ERROR):
        assert ("AAPL", "Apple") in wl
    assert wl.reload_errors == 1 and "w.csv:2" in caplog.text
    p.unlink()
    assert ("AAPL", "Apple") in wl and wl.reload_errors == 2
    _write(p, "entity\nMSFT\n")
    assert ("MSFT", "Microsoft") in wl


def test_the_file_is_checked_at_most_every_interval(tmp_path: Path) -> None:
    p = _write(tmp_path / "w.csv", "entity\nAAPL\n")
    wl = Watchlist(p, check_interval_s=3600.0)
    _bump(p, "entity\nTSLA\n")
    assert ("TSLA", "Tesla") not in wl  # not yet looked at: no stat per mention on the hot path
    assert wl.maybe_reload(force=True) and ("TSLA", "Tesla") in wl
