"""``finsent bench ...``: the benchmark group; each benchmark registers itself from :mod:`finsent.bench`."""

from __future__ import annotations

from finsent.cli.tree import Subcommands


def register(sub: Subcommands) -> None:
    from finsent import bench

    benchmarks = sub.group(
        "bench",
        dest="bench_command",
        metavar="BENCH",
        help="benchmarks that print numbers (model, pipeline, store, ingest, alerts)",
        description="Benchmarks that print numbers; bench/RESULTS.md records them with the hardware and the load. "
        "Each has its own --help.",
    )
    bench.register(benchmarks)  # each benchmark module adds its leaf with `add_parser`
