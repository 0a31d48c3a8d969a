"""Benchmarks that print numbers: ``finsent bench model|pipeline|store|ingest|alerts``.

They live here, in the composition root, because each wires several stages together (a broker,
the worker, a store, synthetic traffic) the way the demo does; no stage imports them. The
helpers they share (hardware description, percentiles, RESULTS.md sections) are in
:mod:`finsent.bench.common`; the synthetic alert traffic in :mod:`finsent.bench.synth`; a
throw-away local ClickHouse server in :mod:`finsent.bench.clickhouse_server` (the store
benchmark and the tests both start one).
"""

from __future__ import annotations

from typing import Any


def register(bench_sub: Any) -> None:
    """Add every ``finsent bench ...`` subcommand (each module imports its heavy parts lazily); ``bench_sub`` is
    the ``finsent bench`` group of :mod:`finsent.cli.bench` (its ``add_parser``; the handler of ``finsent bench X``
    is ``run_X`` in this package's module ``X``, the CLI's one naming rule)."""
    from finsent.bench import alerts, demo, entities, ingest, model, pipeline, results, soak, store

    for module in (model, pipeline, store, ingest, alerts, demo, soak, entities, results):
        module.register(bench_sub)
