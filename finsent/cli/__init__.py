"""The ``finsent`` console entry point, and the one error boundary.

This package is the composition root and holds the whole command line: one module per command
group (``finsent/cli/<group>.py``: ``status``, ``worker`` (broker and worker), ``demo``, ``query``,
``registry`` (models, retrain), ``ingest``, ``model`` (train, distill, eval, score), ``alerts``,
``rescore``, ``labels``, ``drift``, ``bench``), each with one ``register(sub)`` imported here explicitly
(no discovery by name). The rule they follow, and the table of every command, are in
:mod:`finsent.cli.tree`: the handler of ``finsent <group> <leaf>`` is ``run_<leaf>(args, settings) -> int``.
:func:`main` loads the one settings object and runs it. No stage imports this package.

Every :class:`~finsent.core.errors.FinsentError` that reaches :func:`main` becomes one line on
stderr, ``finsent: error: <what> (hint: <what to do>)``, and its family's exit code (listed in
``finsent --help``); so does an ``OSError`` about a path (a name too long, no permission: the user's
input, exit 4), and Ctrl-C is exit 130 with one line. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from finsent import __version__
from finsent.cli.tree import Command, Subcommands
from finsent.core.argtypes import NEGATIVE_VALUE
from finsent.core.errors import EXIT_CODES, FinsentError, InputError, Interrupted, error_line
from finsent.core.settings import Settings, load_settings

EPILOG = """\
configuration: every setting has an environment variable FINSENT_<NAME> (e.g. FINSENT_BROKERS,
FINSENT_STORE) and may be set in a TOML, YAML or JSON file (by its extension) given by --config
or FINSENT_CONFIG; flags beat the environment, which beats the file. Unknown names are warned
about with the closest real one. `finsent config` prints what is in force.
The global flags (--config, --brokers, --store, --log-level) may also follow the subcommand.
DURATION values are positive and count back from now: 30s, 15m, 2h, 7d, 1w.
Ctrl-C stops any command with exit 130 and one line saying what was done and how to resume.

examples:
  finsent demo                                   the whole pipeline locally, with a spike and its alert
  finsent broker --port 9092                     an embedded Kafka-compatible broker (development)
  finsent worker --metrics-port 9464             the scoring worker, as a service
  finsent ingest replay tweets.csv               publish a CSV/JSONL file to the raw topic
  finsent query top --since 1h                   per-topic counts and the newest negative items
  finsent --store clickhouse://u:p@ch:9000/finsent query count

exit codes:
""" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in sorted(EXIT_CODES.items()))

#: The flags every subcommand accepts too (``finsent query count --store X``).
GLOBAL_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("--config", "FILE", "settings file, TOML, YAML or JSON by its extension (FINSENT_CONFIG)"),
    ("--brokers", "HOST:PORT[,..]", "Kafka bootstrap servers (FINSENT_BROKERS)"),
    ("--store", "URL", "clickhouse://user:pass@host:9000/db or chdb:///path (FINSENT_STORE)"),
    ("--log-level", "LEVEL", "DEBUG, INFO, WARNING or ERROR (FINSENT_LOG_LEVEL)"),
)


def _add_globals(parser: argparse.ArgumentParser, *, top: bool) -> None:
    group = parser.add_argument_group("global options") if not top else parser
    for flag, metavar, help_text in GLOBAL_FLAGS:
        # below the top level the default is SUPPRESS, so a flag given before the subcommand is not reset
        kwargs = {} if top else {"default": argparse.SUPPRESS}
        group.add_argument(flag, metavar=metavar, help=help_text, **kwargs)


class Parser(argparse.ArgumentParser):
    """argparse's parser, reading ``--since -1h`` as ``--since=-1h``.

    So a negative DURATION reaches its type, which says durations are positive, instead of argparse's
    "expected one argument": a ``--long`` option followed by a word that looks like a negative number or
    duration (:data:`~finsent.core.argtypes.NEGATIVE_VALUE`) is joined to it, as the user could have typed.
    No finsent option takes a value that could be mistaken for one, and no finsent flag looks like ``-1h``.
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        words = list(sys.argv[1:] if args is None else args)
        joined: list[str] = []
        for word in words:
            if joined and _takes(joined[-1]) and NEGATIVE_VALUE.match(word):
                joined[-1] = f"{joined[-1]}={word}"
            else:
                joined.append(word)
        return super().parse_known_args(joined, namespace)


def _takes(word: str) -> bool:
    return word.startswith("--") and "=" not in word and len(word) > 2


def build() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    """The ``finsent`` parser and the table of every command in it, by full name (``finsent query count``).

    The table is the public way to walk the commands (tests do): each entry has the command's parser and,
    for a leaf, its handler.
    """
    from finsent.cli import (
        alerts,
        bench,
        demo,
        drift,
        ingest,
        labels,
        model,
        query,
        registry,
        rescore,
        status,
        worker,
    )

    parser = Parser(
        prog="finsent",
        description="Streaming financial sentiment monitor (Kafka -> Faust -> ONNX classifier -> ClickHouse).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"finsent {__version__}")
    _add_globals(parser, top=True)
    table = {"finsent": Command((), parser)}
    sub = Subcommands(parser, (), table, dest="command", metavar="COMMAND")
    sub.leaf(
        "config",
        run_config,
        help="print the effective settings (secrets masked) as JSON",
        description="Print the settings finsent would run with, after file, environment and flags, secrets masked.",
        epilog="examples:\n"
        "  finsent config                                      what a command started here runs with\n"
        "  finsent --config /etc/finsent/finsent.yaml config   check a settings file before deploying it\n"
        "  FINSENT_BATCH_WITHIN_S=0.05 finsent config          see an environment variable take effect",
    )
    for module in (status, worker, demo, query, registry, ingest, model, alerts, rescore, labels, drift, bench):
        module.register(sub)
    for command in table.values():
        if command.path:
            _add_globals(command.parser, top=False)
        command.parser.set_defaults(finsent_prog=command.parser.prog)  # the leaf's wins, for messages
    return parser, table


def build_parser() -> argparse.ArgumentParser:
    """The ``finsent`` parser (:func:`build` also gives the table of its commands)."""
    return build()[0]


def command_table() -> dict[str, Command]:
    """Every ``finsent`` command by its full name, groups and leaves, in the order ``--help`` lists them."""
    return build()[1]


def run_config(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(settings.redacted(), indent=2, default=str))
    return 0


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``finsent`` command; returns its exit code (see ``finsent --help``).

    The one error boundary: a :class:`FinsentError` is one line and its family's code, and Ctrl-C is
    one rule for every command (exit 130 and one line): a handler that stops on SIGINT by itself
    raises :class:`Interrupted` saying what it did and how to resume; any other command is cut by
    ``KeyboardInterrupt`` and gets the general line here.
    """
    args: argparse.Namespace | None = None
    try:
        args = build_parser().parse_args(argv)
        settings = load_settings(args.config, brokers=args.brokers, store=args.store, log_level=args.log_level)
        _configure_logging(settings)
        return int(args.func(args, settings) or 0)
    except FinsentError as exc:
        print(error_line(exc), file=sys.stderr, flush=True)
        return exc.exit_code
    except OSError as exc:
        if exc.filename is None or isinstance(exc, ConnectionError):
            raise  # not about a path the user gave: a bug, keep the traceback
        # a path from the command line or the settings that the system refuses (too long, no permission, a
        # directory where a file goes...): the user's input, so one line like any InputError, not a traceback
        logging.getLogger("finsent").debug("file error", exc_info=True)
        name = str(exc.filename)
        failed = InputError(
            f"{name[:200] + '...' if len(name) > 200 else name}: {exc.strerror or exc}",
            hint="check the path given (--log-level DEBUG shows where it was used)",
        )
        print(error_line(failed), file=sys.stderr, flush=True)
        return failed.exit_code
    except KeyboardInterrupt:
        what = f"`{getattr(args, 'finsent_prog', 'finsent')}`" if args is not None else "finsent"
        stopped = Interrupted(
            f"{what} stopped by Ctrl-C before it finished",
            hint="run the same command again; what it wrote before the stop is kept",
        )
        print(error_line(stopped), file=sys.stderr, flush=True)
        return stopped.exit_code
