"""The entity table builder (finsent.models.entity_table) and the shipped table it wrote.

The shipped file is checked for what the linker relies on (unique ids, weak aliases among the aliases, the
curated kinds present, a few MB at most). Where the build sources are installed (the entities-build extra), the
table is rebuilt and must equal the shipped one: a builder change without a rebuild fails here.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from finsent.models.entity_table import (
    CENTRAL_BANKS,
    CRYPTO,
    OTHERS,
    TABLE_FILE,
    _people,
    build,
    display_name,
    norm_symbol,
    read_table,
    strip_legal,
)


@pytest.mark.parametrize(
    ("name", "short"),
    [
        ("Apple Inc.", "Apple"),
        ("MICROSOFT CORP", "MICROSOFT"),
        ("JPMorgan Chase & Co.", "JPMorgan Chase"),
        ("Voyager Technologies, Inc./DE", "Voyager Technologies"),
        ("Ferguson Enterprises Inc. /DE/", "Ferguson Enterprises"),
        ("Alphabet Inc. (Class A)", "Alphabet"),
        ("The Goldman Sachs Group, Inc.", "Goldman Sachs"),
        ("Shell plc", "Shell"),
        ("Inc.", "Inc"),
    ],
)
def test_strip_legal(name: str, short: str) -> None:
    assert strip_legal(name) == short


def test_strip_legal_only_keeps_filler() -> None:
    assert strip_legal("Partners Group AG", legal_only=True) == "Partners Group"
    assert strip_legal("Partners Group AG") == "Partners"


@pytest.mark.parametrize(
    ("symbol", "norm"),
    [
        ("BRK-B", "BRK.B"),
        ("BRK/B", "BRK.B"),
        ("brk.b", "BRK.B"),
        ("$AAPL", "AAPL"),
        ("7203.T", "7203.T"),
        ("PCG-PD", "PCG.PD"),
        ("AAPL", "AAPL"),
    ],
)
def test_norm_symbol(symbol: str, norm: str) -> None:
    assert norm_symbol(symbol) == norm


def test_display_name_and_people() -> None:
    assert display_name("BANK OF AMERICA CORP") == "Bank of America Corp"
    assert display_name("Apple Inc.") == "Apple Inc."
    assert _people("Tim Cook (CEO) Kevan Parekh ( CFO ), Sir Andrew Mackenzie (chairman) 2024 (year)") == [
        "Tim Cook",
        "Kevan Parekh",
        "Andrew Mackenzie",
    ]
    assert _people(None) == []


def test_shipped_table_invariants() -> None:
    assert TABLE_FILE.stat().st_size < 3_000_000
    header, rows = read_table(TABLE_FILE)
    assert header["entities"] == len(rows) > 8000
    assert set(header["sources"]) == {"curated", "pytickersymbols", "sec"}
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    by_id = {r["id"]: r for r in rows}
    for eid, *_ in CRYPTO:
        assert by_id[eid]["kind"] == "crypto"
    for eid, *_ in CENTRAL_BANKS:
        assert by_id[eid]["kind"] == "central_bank"
    for eid, _, kind, *_ in OTHERS:
        assert by_id[eid]["kind"] == kind and "weak" not in by_id[eid]
    for r in rows:
        assert r.get("aliases") or r.get("symbols"), r
        assert set(r.get("weak", ())) <= set(r.get("aliases", ())), r
    assert by_id["AAPL"]["cik"] == "0000320193" and "Tim Cook" in by_id["AAPL"]["people"]
    assert {"BRK.B", "BRK.A"} <= set(by_id["BRK.B"]["symbols"])
    assert "Next" in by_id["NXT.L"]["weak"]


def test_rebuild_equals_shipped(tmp_path: Path) -> None:
    pytest.importorskip("pytickersymbols")
    pytest.importorskip("edgar")
    header, rows = read_table(TABLE_FILE)
    for pkg in ("pytickersymbols", "edgartools"):
        if (
            importlib.metadata.version(pkg)
            not in header["sources"]["pytickersymbols" if pkg == "pytickersymbols" else "sec"]
        ):
            pytest.skip(f"installed {pkg} is not the version the shipped table was built from")
    out = tmp_path / "entities.jsonl.gz"
    built = build(out)
    assert built["entities"] == header["entities"]
    assert read_table(out)[1] == rows
