"""The store bench's pieces that must be right regardless of timing: section rewriting and its data."""

from __future__ import annotations

from pathlib import Path

from finsent.bench.common import write_section
from finsent.bench.store import synthetic_items


def test_write_section_replaces_only_the_store_section(tmp_path: Path) -> None:
    p = tmp_path / "RESULTS.md"
    p.write_text(
        "# Benchmark results\n\n## Model\n\nmodel numbers\n\n## Store\n\nold store\n\n## Alerts\n\nalert numbers\n"
    )
    write_section(p, "## Store\n\nnew store numbers\n", "## Store")
    text = p.read_text()
    assert "old store" not in text and "new store numbers" in text
    assert text.index("## Model") < text.index("## Store") < text.index("## Alerts")
    assert "model numbers" in text and "alert numbers" in text
    write_section(tmp_path / "fresh.md", "## Store\n\nx\n", "## Store")
    assert (tmp_path / "fresh.md").read_text().startswith("# Benchmark results\n\n## Store\n\nx")


def test_synthetic_items_are_distinct_and_recent() -> None:
    items = synthetic_items(500, seed=3)
    assert len({s.id for s in items}) == 500
    assert {s.sentiment for s in items} == {"negative", "neutral", "positive"}
    assert all(s.item.ingested_at <= s.scored_at for s in items)
