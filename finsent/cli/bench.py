"""``finsent bench ...``: the benchmark group; each benchmark registers itself from :mod:`finsent.bench`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from finsent import bench

    bench_parser = sub.add_parser(
        "bench",
        help="benchmarks that print numbers (model, pipeline, store, ingest, alerts)",
        description="Benchmarks that print numbers; bench/RESULTS.md records them with the hardware and the load. "
        "Each has its own --help.",
    )
    bench.register(bench_parser.add_subparsers(dest="bench_command", metavar="BENCH", required=True))
