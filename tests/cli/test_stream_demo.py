"""``finsent demo`` end to end with the tiny model: everything it starts, publishes and stops is real.

The tiny model's labels are random, so this test checks the plumbing (nothing lost, nothing
duplicated, malformed messages dead-lettered with reasons, summary written, everything stopped);
whether the spike is detected depends on a trained model and is what the demo's exit code reports.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from finsent.core.settings import load_settings

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end_and_writes_summary(tmp_path: Path) -> None:
    from finsent.demo import run_demo
    from finsent.models.testing import make_tiny_model

    model = make_tiny_model(tmp_path / "model")
    out = tmp_path / "summary.json"
    threads_before = {t.name for t in threading.enumerate()}
    summary: dict[str, Any] = run_demo(
        load_settings(metrics_port=0), seconds=20, rate=15, summary_json=str(out), model_dir=str(model)
    )
    on_disk = json.loads(out.read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in (
        "produced",
        "stored",
        "duplicates_in_store",
        "dead_lettered",
        "spike_topic",
        "alerts",
        "entity_alerts",
        "throughput_msgs_per_s",
        "latency_ms",
    ):
        assert key in summary
    assert summary["produced"] > summary["produced_history"] > 0
    assert summary["produced_spike"] > 0
    assert summary["stored"] == summary["produced"]  # nothing lost
    assert summary["duplicates_in_store"] == 0 and summary["lost"] == 0
    assert summary["dead_lettered"] == 4
    assert set(summary["dead_lettered_by_reason"]) == {"not_json", "missing_field", "empty_text", "bad_source_type"}
    assert summary["latency_ms"]["samples"] == summary["produced_live"]
    assert summary["latency_ms"]["p50"] > 0 and summary["latency_ms"]["p99"] >= summary["latency_ms"]["p50"]
    assert summary["throughput_msgs_per_s"] > 0
    # the worker thread and the producer are gone
    assert not any(
        t.is_alive() and t.name in ("finsent-worker", "finsent-demo-producer")
        for t in threading.enumerate()
        if t.name not in threads_before
    )


def test_demo_detects_the_injected_spike_with_the_shipped_model(tmp_path: Path) -> None:
    """The acceptance test of `finsent demo`: the shipped model, a real detector on stored counts."""
    from finsent.demo import run_demo

    summary = run_demo(load_settings(metrics_port=0), seconds=60, rate=40, summary_json=str(tmp_path / "s.json"))
    # the demo's alert names the company the negative news is about (the entity detector, in the worker)
    assert summary["spike_detected"], (summary["entity_alerts"], summary["alerts"])
    first = next(a for a in summary["entity_alerts"] if a["entity_id"] == summary["spike_entity"] == "JPM")
    assert first["entity_name"] and len(first["sources"]) >= 2
    assert first["t_s"] >= summary["spike_window_s"][0]  # fired by the spike, not before it
    assert summary["duplicates_in_store"] == 0 and summary["lost"] == 0
    assert summary["stored"] == summary["produced"]


def test_demo_keep_leaves_the_stack_queryable_until_ctrl_c(tmp_path: Path) -> None:
    """``--keep``: after the summary the demo's store answers other commands (through the demo's process, which
    holds the embedded store), its broker takes more items, and Ctrl-C stops it with exit 0 and the store kept."""
    import os
    import re
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from finsent.models.testing import make_tiny_model

    model = make_tiny_model(tmp_path / "model")
    script = (
        "from finsent.core.settings import load_settings\n"
        "from finsent.demo import run_demo\n"
        f"s = run_demo(load_settings(metrics_port=0), seconds=20, rate=15, model_dir={str(model)!r}, keep=True)\n"
        "print('RETURNED', s['produced'], flush=True)\n"
    )
    env = {**os.environ, "COLUMNS": "400"}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    out: list[str] = []
    try:
        deadline = time.monotonic() + 240
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line)
            if "press Ctrl-C" in line:
                break
        text = "".join(out)
        assert "press Ctrl-C" in text, text[-3000:]
        produced = int(re.search(r"done in [\d.]+s: produced (\d+)", text).group(1))  # type: ignore[union-attr]
        store = re.search(r"--store (chdb://\S+)", text).group(1)  # type: ignore[union-attr]
        assert re.search(r"--brokers 127\.0\.0\.1:\d+", text), text[-2000:]

        def count() -> dict:
            q = subprocess.run(
                [sys.executable, "-m", "finsent", "query", "count", "--store", store, "--json"],
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
            )
            assert q.returncode == 0, (q.stderr[-2000:], "".join(out)[-2000:])
            return json.loads(q.stdout)

        seen = count()
        assert seen["rows"] == produced, (seen, text[-2000:])  # read through the running demo, which holds the store
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, rest[-3000:]
        assert "its store stays" in rest and f"RETURNED {produced}" in rest
        assert count()["rows"] == produced  # the store outlived the demo: opened directly now
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        m = re.search(r"--store chdb://(\S+)/chdb", "".join(out))
        if m:
            shutil.rmtree(m.group(1), ignore_errors=True)
