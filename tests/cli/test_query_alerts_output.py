"""``finsent query alerts`` fits an 80-column terminal, with each alert's headlines and model version (issue 25).

Before, an eight-column table folded every cell at 80 columns. Now each alert is a few lines: when, severity and
what; the numbers with the detector and model version; its top headlines. Untrusted text (headlines, entity
names) never breaks a line: control and bidi characters become spaces, wide characters count two cells, and a
line too long ends with ``…``. ``--json`` is the store's rows, as before. Real store (chdb), the real command in
its own process with COLUMNS=80.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from rich.cells import cell_len

from finsent.cli.query import alert_lines, fit
from finsent.core.events import Alert, utcnow
from finsent.stream.store import open_store
from tests.alerts.alert_fixtures import entity_alert, topic_alert

LONG_NAME = "The Extraordinarily Long-Named International Holding Company of Very Many Subsidiaries plc"
NASTY = "Bank\u202e shares \x1b[31mslump\nafter the 財務 report — 株価が急落しました、投資家は慎重な姿勢を強めています"


def _alerts(now: datetime) -> list[Alert]:
    """A critical topic spike with untrusted headlines and its model version; an entity surge with a name too long
    for any line and no model version."""
    topic = topic_alert(
        now,
        topic="Financials",
        window_start=now - timedelta(minutes=4),
        negative=131,
        total=200,
        negative_share=0.655,
        score=12.345,
        severity="critical",
        model_version="finsent-minilm-20261123-ent-9c905ac3",
        evidence={
            "headlines": [
                {"id": "a1", "title": NASTY, "url": "https://news.example/1", "source": "newswire", "p_negative": 0.97},
                {"id": "a2", "title": "Lenders retreat as rates bite", "url": None, "source": "x", "p_negative": 0.9},
                {"id": "a3", "title": "Third", "url": None, "source": "", "p_negative": 0.8},
                {"id": "a4", "title": "Fourth, not shown", "url": None, "source": "", "p_negative": 0.7},
            ],
            "model_versions": {"finsent-minilm-20261123-ent-9c905ac3": 200},
        },
    )
    entity = entity_alert(
        now,
        entity_id="XLNG",
        entity_name=LONG_NAME,
        evidence={"headlines": [{"title": "Holding company misses payment", "url": "https://x.example/2"}]},
    )
    return [topic, entity]


def test_every_line_fits_and_says_what_matters() -> None:
    now = utcnow()
    rows = [
        {**a.to_dict(), "at": a.window_end.isoformat(), "evidence": a.evidence, "kind": a.kind} for a in _alerts(now)
    ]
    for width in (80, 60, 40):
        for row in rows:
            lines = alert_lines(row, width)
            assert all(cell_len(line) <= width for line in lines), [(cell_len(x), x) for x in lines]
            assert not any(ch in line for line in lines for ch in "\n\x1b\u202e"), lines
    topic = alert_lines(rows[0], 80)
    assert "critical" in topic[0] and "Financials" in topic[0]
    assert "131/200 negative (66%, baseline 10%), score 12.35, ewma_z" in topic[1]
    assert topic[2] == "  model finsent-minilm-20261123-ent-9c905ac3"
    assert len(topic) == 3 + 3 and topic[3].startswith("  - Bank shares [31mslump after") and topic[3].endswith("…")
    entity = alert_lines(rows[1], 80)
    assert entity[0].endswith("…") and "The Extraordinarily Long-Named" in entity[0]
    assert entity[2] == "  - Holding company misses payment"  # no model line: the entity alert names none
    assert fit("short", 80) == "short" and fit("x" * 81, 80) == "x" * 79 + "…"
    assert fit("株" * 50, 80) == "株" * 39 + "…"  # 39 wide characters (78 cells) and the ellipsis


@pytest.mark.integration
def test_query_alerts_at_80_columns_and_json(chdb_db_url: str, tmp_path: Path) -> None:
    now = utcnow()
    store = open_store(chdb_db_url)
    try:
        store.ensure_schema()
        store.insert_alerts(_alerts(now))
    finally:
        store.close()  # chdb: one process per path, the command runs in its own
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")} | {
        "COLUMNS": "80",
        "FINSENT_STORE": chdb_db_url,
        "FINSENT_REGISTRY": "",
    }

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "finsent", "query", "alerts", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )

    proc = run("--since", "1h")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert all(cell_len(line) <= 80 for line in lines), [line for line in lines if cell_len(line) > 80]
    assert lines[0].startswith("Alerts, last 1h: 2, newest first")
    text = proc.stdout
    assert "model finsent-minilm-20261123-ent-9c905ac3" in text and "  - Lenders retreat as rates bite (x)" in text
    assert "The Extraordinarily Long-Named" in text and "…" in text and "Fourth, not shown" not in text
    # --json: the stored rows, every headline with its link
    proc = run("--since", "1h", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["kind"]: r for r in json.loads(proc.stdout)}
    assert rows["topic"]["model_version"] == "finsent-minilm-20261123-ent-9c905ac3"
    assert [h["id"] for h in rows["topic"]["evidence"]["headlines"]] == ["a1", "a2", "a3", "a4"]
    assert rows["topic"]["evidence"]["headlines"][0]["title"] == NASTY
    assert rows["entity"]["entity_name"] == LONG_NAME and rows["entity"]["topic"] is None
