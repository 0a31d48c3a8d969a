"""One spelling for every command's JSON output: ``--json`` prints it, ``--json OUT`` writes it to OUT.

Before, some commands printed with a bare ``--json`` and others wrote with ``--json OUT``, so a
user had to remember which was which. Every command now takes the same optional argument:
absent = the command's own human output; ``--json`` or ``--json -`` = JSON on stdout (and nothing
else there); ``--json OUT`` = the human output as usual, plus the JSON written to OUT.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from finsent.core.errors import InputError

STDOUT = "-"


def add_json_option(parser: argparse.ArgumentParser | Any, what: str = "the result", dest: str = "json") -> None:
    """Add ``--json [OUT]`` (dest ``dest``: None, ``"-"`` for stdout, or a path)."""
    parser.add_argument(
        "--json",
        nargs="?",
        const=STDOUT,
        default=None,
        metavar="OUT",
        dest=dest,
        help=f"{what} as JSON: on stdout with a bare --json (or --json -), else written to OUT",
    )


def to_stdout(target: str | Path | None) -> bool:
    """True when the JSON replaces the human output (a bare ``--json``)."""
    return target is not None and str(target) == STDOUT


def emit_json(target: str | Path | None, obj: Any) -> None:
    """Print ``obj`` as JSON (target ``"-"``) or write it to the path ``target``; nothing for None."""
    if target is None:
        return
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n"
    if str(target) == STDOUT:
        sys.stdout.write(text)
        return
    path = Path(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(
            f"cannot write {path}: {exc.strerror or exc}", hint="check the path and its permissions"
        ) from None
