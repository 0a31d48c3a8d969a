"""The ``finsent`` console entry point: one command, one subcommand per job.

Each package contributes its own subcommands through a ``register(subparsers)`` function
(and ``register_bench(bench_subparsers)`` for ``finsent bench ...``), so the knowledge of
how to run a component lives next to the component. Every handler has the signature
``handler(args, settings) -> int`` and returns the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence

from stream.settings import Settings, load_settings

#: Packages that add subcommands, in the order they appear in ``--help``.
COMMAND_MODULES = ("stream.commands", "stream.store.cli", "ingest.cli", "models.cli", "alerts.cli")

EPILOG = """\
configuration: every option has an environment variable FINSENT_<NAME> (e.g. FINSENT_BROKERS,
FINSENT_STORE) and may be set in a TOML/YAML file given by --config or FINSENT_CONFIG;
flags beat the environment, which beats the file.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finsent",
        description="Streaming financial sentiment monitor (Kafka -> Faust -> ONNX classifier -> ClickHouse).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="settings file (TOML or YAML)")
    parser.add_argument("--brokers", metavar="HOST:PORT[,..]", help="Kafka bootstrap servers (FINSENT_BROKERS)")
    parser.add_argument(
        "--store", metavar="URL", help="clickhouse://user:pass@host:9000/db or chdb:///path (FINSENT_STORE)"
    )
    parser.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING, ERROR (FINSENT_LOG_LEVEL)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    cfg = sub.add_parser(
        "config", help="print the effective settings (secrets masked) as JSON",
        description="Print the settings finsent would run with, after file, environment and flags, secrets masked.",
    )
    cfg.set_defaults(func=_show_config)
    bench = sub.add_parser("bench", help="benchmarks that print numbers (model, pipeline, alerts)")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a package not yet built must not break the others
            if exc.name and name.startswith(exc.name):
                continue
            raise
        if hasattr(module, "register"):
            module.register(sub)
        if hasattr(module, "register_bench"):
            module.register_bench(bench_sub)
    return parser


def _show_config(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(settings.redacted(), indent=2, default=str))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings: Settings = load_settings(
            args.config, brokers=args.brokers, store=args.store, log_level=args.log_level
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"finsent: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args, settings) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
