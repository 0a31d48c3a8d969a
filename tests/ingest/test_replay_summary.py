"""What :func:`finsent.ingest.replay.replay` hands over and reports, exactly: the batches it publishes (per
file, up to ``batch_size``, flushed before a paced wait and at the end of each file), the summary and its bad
rows, the WARNING per bad row, the metrics, the progress lines, ``--limit`` and ``stop``. A characterisation
test (issue 23): replay was split into steps, and any change to what it publishes or says must show here."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from finsent.ingest import replay as replay_mod
from finsent.ingest.dedup import DedupStore
from finsent.ingest.metrics import IngestMetrics
from finsent.ingest.pipeline import Pipeline
from finsent.ingest.replay import replay

BAD_TIME = (
    "published_at '2100-01-01T00:00:00Z' is 2100-01-01T00:00:00+00:00, more than 5 min ahead of this host's clock; "
    "fix the source's clock or its time zone"
)
BAD_ROWS = [
    {"file": "a.csv", "line": 3, "reason": "empty_text", "detail": "no text after cleaning"},
    {"file": "b.jsonl", "line": 2, "reason": "not_json", "detail": "Expecting value at column 1"},
    {"file": "b.jsonl", "line": 3, "reason": "not_object", "detail": "a number, not an object"},
    {"file": "b.jsonl", "line": 4, "reason": "bad_time", "detail": BAD_TIME},
]


class Recording(Pipeline):
    """A dry-run pipeline (items printed, no broker) that also keeps each submitted batch: (source, ids)."""

    def __init__(self) -> None:
        super().__init__(
            publisher=None, dedup=DedupStore(None), metrics=IngestMetrics(CollectorRegistry()), out=io.StringIO()
        )
        self.batches: list[tuple[str, list[str]]] = []

    def submit(self, metric_source: str, entries: list, **kwargs: Any) -> Any:
        self.batches.append((metric_source, [e.item.id for e in entries]))
        return super().submit(metric_source, entries, **kwargs)

    def printed(self) -> list[str]:
        return [json.loads(line)["id"] for line in self.out.getvalue().splitlines()]  # type: ignore[union-attr]

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for m in self.metrics.registry.collect()
            for s in m.samples
            if s.value and not s.name.endswith("_created")
        }


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    """A CSV with an empty text and an impossible date (kept, no time), and JSONL with three kinds of bad line."""
    a = tmp_path / "a.csv"
    a.write_text(
        "id,text,published_at\na1,first,2024-01-01T00:00:00Z\na2,,2024-01-01\na3,third,2024-02-30\na4,fourth,\n"
    )
    b = tmp_path / "b.jsonl"
    b.write_text(
        '{"id":"b1","text":"one"}\nnot json\n5\n'
        '{"id":"b2","text":"two","published_at":"2100-01-01T00:00:00Z"}\n{"id":"b3","text":"three"}\n'
    )
    return [a, b]


def test_batches_summary_bad_rows_log_and_metrics(files, caplog) -> None:
    pipe = Recording()
    with caplog.at_level(logging.WARNING, logger="finsent.ingest.replay"):
        stats = replay(files, pipe, batch_size=2, progress=False)
    assert (stats.produced, stats.skipped, stats.bad_rows) == (5, 4, BAD_ROWS)
    # one source per batch, full batches as they fill, the rest at the end of each file
    assert pipe.batches == [("replay:a.csv", ["a1", "a3"]), ("replay:a.csv", ["a4"]), ("replay:b.jsonl", ["b1", "b3"])]
    assert pipe.printed() == ["a1", "a3", "a4", "b1", "b3"]
    assert [r.getMessage() for r in caplog.records if r.name == "finsent.ingest.replay"] == [
        "a.csv:3: skipped: empty_text (no text after cleaning)",
        "b.jsonl:2: skipped: not_json (Expecting value at column 1)",
        "b.jsonl:3: skipped: not_object (a number, not an object)",
        f"b.jsonl:4: skipped: bad_time ({BAD_TIME})",
    ]
    a, b = (("source", "replay:a.csv"),), (("source", "replay:b.jsonl"),)
    assert pipe.samples() == {
        ("finsent_ingest_items_fetched_total", a): 3.0,
        ("finsent_ingest_items_fetched_total", b): 2.0,
        ("finsent_ingest_items_published_total", a): 3.0,
        ("finsent_ingest_items_published_total", b): 2.0,
        ("finsent_ingest_items_skipped_total", (("reason", "empty_text"), *a)): 1.0,
        ("finsent_ingest_items_skipped_total", (("reason", "not_json"), *b)): 1.0,
        ("finsent_ingest_items_skipped_total", (("reason", "not_object"), *b)): 1.0,
        ("finsent_ingest_items_skipped_total", (("reason", "bad_time"), *b)): 1.0,
        ("finsent_ingest_unparsed_dates_total", a): 1.0,
    }


def test_limit_stops_mid_file_and_skips_the_next_files(files) -> None:
    pipe = Recording()
    stats = replay([*files, files[0]], pipe, batch_size=500, limit=4, progress=False)
    assert pipe.batches == [("replay:a.csv", ["a1", "a3", "a4"]), ("replay:b.jsonl", ["b1"])]
    # the limit is checked when the next good row comes: b.jsonl's bad lines 2-4 are read (and counted) on the way
    assert (stats.produced, stats.skipped) == (4, 4)


def test_a_paced_replay_stops_at_the_limit_without_waiting_for_the_next_item(files) -> None:
    pipe = Recording()
    t0 = time.monotonic()
    stats = replay(files, pipe, rate=0.25, limit=1, progress=False)  # the next item would be due in 4 s
    assert time.monotonic() - t0 < 2.5
    assert (stats.produced, pipe.batches) == (1, [("replay:a.csv", ["a1"])])


def test_stop_before_the_start_reads_nothing(files) -> None:
    pipe = Recording()
    stop = threading.Event()
    stop.set()
    assert replay(files, pipe, stop=stop, progress=False) == replay_mod.ReplayStats(0, 0, [])
    assert pipe.batches == []


def test_a_paced_replay_publishes_each_item_before_waiting_for_the_next(tmp_path) -> None:
    path = tmp_path / "timed.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": f"t{i}", "text": f"t{i}", "published_at": f"2024-01-01T00:00:0{i * 2}Z"}) + "\n"
            for i in range(3)
        )
    )
    pipe = Recording()
    stats = replay([path], pipe, speedup=5, progress=False)  # 2 s of original time between items -> 0.4 s
    assert stats.produced == 3
    assert pipe.batches == [
        ("replay:timed.jsonl", ["t0"]),
        ("replay:timed.jsonl", ["t1"]),
        ("replay:timed.jsonl", ["t2"]),
    ]


def test_stop_during_a_wait_publishes_what_was_handed_over_and_returns(tmp_path) -> None:
    path = tmp_path / "slow.jsonl"
    path.write_text("".join(json.dumps({"id": f"s{i}", "text": f"s{i}"}) + "\n" for i in range(3)))
    pipe = Recording()
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    stats = replay([path, path], pipe, rate=0.1, stop=stop, progress=False)  # the 2nd item is due in 10 s
    assert time.monotonic() - t0 < 3
    assert (stats.produced, pipe.batches) == (1, [("replay:slow.jsonl", ["s0"])])


def test_progress_lines_without_a_terminal(files, capsys, monkeypatch) -> None:
    monkeypatch.setattr(replay_mod, "PROGRESS_EVERY_S", 0.0)
    stats = replay(files, Recording(), batch_size=2, progress=True)
    assert stats.produced == 5
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("replay: ")]
    assert lines == [
        "replay: 1 rows read, 0 published, 0 bad",
        "replay: 2 rows read, 0 published, 1 bad",
        "replay: 3 rows read, 2 published, 1 bad",
        "replay: 4 rows read, 2 published, 1 bad",
        "replay: 5 rows read, 3 published, 1 bad",
        "replay: 6 rows read, 3 published, 2 bad",
        "replay: 7 rows read, 3 published, 3 bad",
        "replay: 8 rows read, 3 published, 4 bad",
        "replay: 9 rows read, 5 published, 4 bad",
        "replay: 9 rows read, 5 published, 4 bad (done)",
    ]
