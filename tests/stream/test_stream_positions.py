"""The worker's position check: a partition whose log ends below the worker's position is read again.

Pure logic on a fake consumer (the broker-restart scenario with real processes is in
tests/stream/test_faults.py): the check must fire only on evidence seen twice with the position unchanged,
clear Faust's bookkeeping of the partition, seek it to 0, and leave healthy partitions alone.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from prometheus_client import CollectorRegistry

from finsent.core.settings import load_settings
from finsent.stream.worker import ClassifierHolder, Scorer


class FakeConsumer:
    def __init__(self, highwaters: dict[tuple[str, int], int]) -> None:
        self.highwaters = highwaters
        self.seeks: list[tuple[Any, int]] = []
        self._committed_offset: dict[Any, int | None] = defaultdict(lambda: None)
        self._read_offset: dict[Any, int | None] = defaultdict(lambda: None)
        self._acked: dict[Any, list[int]] = defaultdict(list)
        self._acked_index: dict[Any, set[int]] = defaultdict(set)
        self._gap: dict[Any, Any] = defaultdict(list)

    def highwater(self, tp: Any) -> int:
        return self.highwaters[(tp.topic, tp.partition)]

    async def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))


def _scorer(consumer: FakeConsumer) -> Scorer:
    scorer = Scorer(load_settings(), ClassifierHolder(object()), lambda: None, registry=CollectorRegistry())
    scorer.consumer = consumer
    return scorer


def test_a_log_behind_the_position_is_read_again_after_two_checks() -> None:
    from faust.types import TP

    consumer = FakeConsumer({("raw", 0): 12, ("raw", 1): 400})
    scorer = _scorer(consumer)
    scorer._redeclared_at = 1e18  # no broker here: skip re-declaring topics
    scorer.last_offsets = {("raw", 0): 299, ("raw", 1): 399}  # partition 0's log now ends at 12 < 300
    scorer.stored_offsets = {("raw", 0): 299, ("raw", 1): 399}
    tp0 = TP("raw", 0)
    consumer._committed_offset[tp0] = 300
    consumer._read_offset[tp0] = 299
    consumer._acked[tp0] = [298, 299]
    try:
        assert asyncio.run(scorer.check_positions()) == []  # first sighting: not yet
        assert consumer.seeks == []
        assert asyncio.run(scorer.check_positions()) == [("raw", 0)]
        assert consumer.seeks == [(tp0, 0)]
        assert consumer._committed_offset[tp0] is None and consumer._read_offset[tp0] is None
        assert tp0 not in consumer._acked
        assert ("raw", 0) not in scorer.last_offsets and ("raw", 0) not in scorer.stored_offsets
        assert scorer.last_offsets == {("raw", 1): 399}  # the healthy partition is untouched
        assert scorer.metrics.partition_resets._value.get() == 1
    finally:
        scorer.close()


def test_a_moving_position_or_a_caught_up_log_never_resets() -> None:
    consumer = FakeConsumer({("raw", 0): 5})
    scorer = _scorer(consumer)
    scorer._redeclared_at = 1e18
    try:
        scorer.last_offsets = {("raw", 0): 10}
        assert asyncio.run(scorer.check_positions()) == []
        scorer.last_offsets = {("raw", 0): 11}  # the worker moved on: the stale highwater is not evidence
        assert asyncio.run(scorer.check_positions()) == []
        consumer.highwaters[("raw", 0)] = 12  # the highwater caught up
        assert asyncio.run(scorer.check_positions()) == []
        assert asyncio.run(scorer.check_positions()) == []
        assert consumer.seeks == []
    finally:
        scorer.close()


def test_lag_counts_from_the_last_stored_offset() -> None:
    """During a store outage the worker stops taking; the lag must keep growing with the log."""
    consumer = FakeConsumer({("raw", 0): 1000})
    scorer = _scorer(consumer)
    try:
        scorer.last_offsets = {("raw", 0): 899}  # taken, but not stored
        scorer.stored_offsets = {("raw", 0): 499}
        scorer.refresh_lag()
        assert scorer.metrics.consumer_lag.labels("raw", "0")._value.get() == 500
        consumer.highwaters[("raw", 0)] = 2200  # the backlog grows while the store is down
        scorer.refresh_lag()
        assert scorer.metrics.consumer_lag.labels("raw", "0")._value.get() == 1700
    finally:
        scorer.close()


def test_faust_data_directories_live_under_the_cache_dir_and_dead_ones_are_removed(tmp_path) -> None:  # noqa: ANN001
    import os
    import subprocess
    import sys

    from finsent.stream.worker import faust_datadir

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / "faust" / f"{gone.stdout.strip()}-abc"
    dead.mkdir(parents=True)
    (dead / "leftover").write_text("x")
    alive = tmp_path / "faust" / f"{os.getppid()}-def"  # a live process (our parent)
    alive.mkdir()
    mine = faust_datadir(tmp_path)
    assert mine.parent == tmp_path / "faust" and mine.name.startswith(f"{os.getpid()}-")
    assert not dead.exists() and alive.exists()
