"""``finsent bench soak`` end to end, short: a real worker process, real broker and store, the end check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_short_soak_stores_every_acknowledged_item_once_and_plots(tmp_path: Path) -> None:
    from finsent.models.testing import make_tiny_model

    model = make_tiny_model(tmp_path / "model")
    out, png = tmp_path / "soak.json", tmp_path / "soak.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "finsent",
            "bench",
            "soak",
            "--minutes",
            "0.3",
            "--sample-s",
            "3",
            "--capacity-items",
            "300",
            "--model-dir",
            str(model),
            "--json",
            str(out),
            "--png",
            str(png),
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["passed"] and r["produced_acked"] > 0
    assert r["stored"] == r["stored_unique"] == r["produced_acked"]
    assert r["dead_lettered"] == 0 and r["tracebacks_logged"] == 0
    assert len(r["samples"]) >= 3 and all(s["rss_mb"] > 0 for s in r["samples"])
    assert r["latency_ms"]["samples"] > 0 and r["latency_ms"]["p99"] >= r["latency_ms"]["p50"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "capacity" in proc.stderr and "draining" in proc.stderr  # progress is shown
