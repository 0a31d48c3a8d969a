"""``finsent bench results``: the "current results" table, generated from bench/results.json.

Every figure the documentation quotes lives once, in ``bench/results.json``, with its value, unit,
the command that measured it, the CPU, the load and the date. This module renders that file as one
markdown table, and README.md, docs/sizing.md and bench/RESULTS.md include the table between the
markers ``<!-- results:begin -->`` and ``<!-- results:end -->``, so no number in the docs can drift
from its source. The lab notebook that explains each run is bench/ARCHIVE.md.

To record a new measurement: edit the figure in bench/results.json, then
``finsent bench results --write README.md docs/sizing.md bench/RESULTS.md``; ``--check`` does the
same comparison the tests do (tests/bench/test_docs_results.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finsent.core.errors import InputError
from finsent.core.settings import Settings

BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"
#: The keys every figure carries (``decimals`` and ``values`` are optional).
REQUIRED_KEYS: tuple[str, ...] = ("id", "what", "value", "unit", "command", "cpu", "load", "date", "source")

#: A measured figure written by hand: "107.6 sentences/s", "1,144-1,181 items/s", "p99 646 ms". Such a
#: figure belongs in bench/results.json; outside the generated block it would drift from its source.
_NUM = r"\d[\d,]*(?:\.\d+)?"
FIGURE_PATTERN = re.compile(
    rf"(?<![\w.]){_NUM}(?:\s*(?:-|–|to)\s*{_NUM})?\s*(?:k\s*)?(?:sentences|items|requests|rows)\s*/\s*s\b"
    rf"|\bp(?:50|90|95|99)\b[^\n|]{{0,24}}?{_NUM}(?:\s*(?:-|–|to)\s*{_NUM})?\s*ms\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Figure:
    """One measured figure, as bench/results.json records it."""

    id: str
    what: str
    value: float | list[float]
    unit: str
    command: str
    cpu: str
    load: str
    date: str
    source: str
    decimals: int | None = None
    #: ``runs`` (a list is one value per run: shown as a range) or ``parts`` (shown a / b / c)
    values: str = "runs"


def default_path() -> Path:
    """bench/results.json of the current directory, else of the checkout this package was installed from."""
    here = Path("bench/results.json")
    if here.is_file():
        return here
    return Path(__file__).resolve().parents[2] / "bench" / "results.json"


def load_figures(path: Path) -> list[Figure]:
    """The figures of ``path``; :class:`InputError` naming the figure and the key when the file is malformed
    (a table built from half a file would look complete and be wrong)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"{path} does not exist", hint="run from a finsent checkout, or pass --file PATH/TO/bench/results.json"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} cannot be read as JSON: {exc}", hint="fix the file (it is kept in git)") from None
    raw = data.get("figures") if isinstance(data, dict) else None
    if not isinstance(raw, list) or not raw:
        raise InputError(f'{path} has no "figures" list', hint='see the "about" key of bench/results.json')
    out: list[Figure] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"{path}: figure {i + 1}"
        if not isinstance(item, dict):
            raise InputError(f"{where} is not an object", hint="each figure is a JSON object")
        missing = [k for k in REQUIRED_KEYS if k not in item]
        unknown = sorted(set(item) - set(REQUIRED_KEYS) - {"decimals", "values"})
        if missing or unknown:
            raise InputError(
                f"{where} ({item.get('id', '?')}): missing {missing}, unknown {unknown}",
                hint=f"a figure has the keys {', '.join(REQUIRED_KEYS)} (+ decimals, values)",
            )
        value = item["value"]
        numbers = value if isinstance(value, list) else [value]
        if not numbers or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers):
            raise InputError(
                f"{where} ({item['id']}): value must be a number or a non-empty list of numbers",
                hint="one number, or one per run",
            )
        for key in ("id", "what", "unit", "command", "cpu", "load", "date", "source"):
            text = item[key]
            if not isinstance(text, str) or (key != "unit" and not text.strip()) or "|" in text or "\n" in text:
                raise InputError(
                    f"{where} ({item.get('id')}): {key} must be one line of text without '|'",
                    hint="the table is markdown: a '|' or a newline would break its row",
                )
        if item["id"] in seen:
            raise InputError(f"{where}: id {item['id']!r} is used twice", hint="give each figure its own id")
        seen.add(item["id"])
        decimals = item.get("decimals")
        if decimals is not None and (not isinstance(decimals, int) or isinstance(decimals, bool) or decimals < 0):
            raise InputError(f"{where} ({item['id']}): decimals must be an integer >= 0", hint='e.g. "decimals": 1')
        values = item.get("values", "runs")
        if values not in ("runs", "parts"):
            raise InputError(f'{where} ({item["id"]}): values must be "runs" or "parts"', hint="default: runs")
        out.append(
            Figure(
                item["id"],
                item["what"],
                value,
                item["unit"],
                item["command"],
                item["cpu"],
                item["load"],
                item["date"],
                item["source"],
                decimals,
                values,
            )
        )
    return out


def _number(v: float, decimals: int | None) -> str:
    return f"{v:,.{decimals}f}" if decimals is not None else f"{v:,}"


def format_value(fig: Figure) -> str:
    """``942.1 sentences/s``; a list of runs as ``491–526 ms (3 runs)``; parts as ``0.850 / 0.854 / 0.908``."""
    unit = "" if fig.unit in ("", "%", "x") else " "
    if not isinstance(fig.value, list):
        return f"{_number(fig.value, fig.decimals)}{unit}{fig.unit}"
    if fig.values == "parts":
        return " / ".join(_number(v, fig.decimals) for v in fig.value) + f"{unit}{fig.unit}"
    lo, hi = min(fig.value), max(fig.value)
    span = _number(lo, fig.decimals) if lo == hi else f"{_number(lo, fig.decimals)}–{_number(hi, fig.decimals)}"
    runs = f" ({len(fig.value)} runs)" if len(fig.value) > 1 else ""
    return f"{span}{unit}{fig.unit}{runs}"


def render_table(figures: list[Figure]) -> str:
    """The markdown table (no markers), one row per figure, in the file's order."""
    rows = [
        "| what | value | command | CPU | load (1 min, start → end) | date |",
        "| --- | ---: | --- | --- | --- | --- |",
    ]
    for f in figures:
        command = f.command if f.command.startswith("(") else f"`{f.command}`"  # "(probe ...)" is prose
        rows.append(f"| {f.what} | {format_value(f)} | {command} | {f.cpu} | {f.load} | {f.date} |")
    return "\n".join(rows) + "\n"


def render_block(figures: list[Figure], source: str = "bench/results.json") -> str:
    """The table between the markers, with the line that says where it comes from and how to regenerate it."""
    return (
        f"{BEGIN}\n<!-- generated by `finsent bench results` from {source}: edit that file, not this table -->\n"
        f"{render_table(figures)}{END}"
    )


def extract_block(text: str) -> str | None:
    """The generated block of ``text`` (markers included), or None when it has none."""
    start = text.find(BEGIN)
    end = text.find(END, start + 1) if start >= 0 else -1
    return text[start : end + len(END)] if start >= 0 and end >= 0 else None


def outside_block(text: str) -> str:
    """``text`` without its generated block: what a person wrote."""
    block = extract_block(text)
    return text.replace(block, "") if block else text


def stray_figures(text: str) -> list[str]:
    """Hand-written measured figures in ``text`` outside the generated block (see :data:`FIGURE_PATTERN`)."""
    return [m.group(0) for m in FIGURE_PATTERN.finditer(outside_block(text))]


def replace_block(text: str, block: str, name: str = "the file") -> str:
    """``text`` with its generated block replaced by ``block``; :class:`InputError` when it has no markers."""
    old = extract_block(text)
    if old is None:
        raise InputError(
            f"{name} has no {BEGIN} ... {END} block",
            hint="add the two marker lines where the table belongs, then run --write again",
        )
    return text.replace(old, block)


def run_results(args: argparse.Namespace, settings: Settings) -> int:
    """Print the table; ``--write`` puts it into files, ``--check`` exits 1 when a file's table differs."""
    path = Path(args.file) if args.file else default_path()
    figures = load_figures(path)
    if not args.write and not args.check:
        sys.stdout.write(render_table(figures))
        return 0
    block = render_block(figures)
    stale: list[str] = []
    for name in args.write or args.check:
        target = Path(name)
        try:
            text = target.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot read {target}: {exc.strerror or exc}", hint="pass a markdown file") from None
        new = replace_block(text, block, str(target))
        if args.write:
            if new != text:
                target.write_text(new, encoding="utf-8")
                print(f"wrote the results table of {target}")
        elif new != text:
            stale.append(str(target))
        strays = stray_figures(new)
        if strays:
            print(
                f"{target}: figures written by hand outside the generated table: {'; '.join(strays)}", file=sys.stderr
            )
            stale.append(str(target))
    if stale:
        print(
            f"out of date: {', '.join(dict.fromkeys(stale))} (run `finsent bench results --write FILE`, and move "
            "hand-written figures into bench/results.json)",
            file=sys.stderr,
        )
        return 1
    return 0


def register(bench_sub: Any) -> None:
    p = bench_sub.add_parser(
        "results",
        help="the current-results table, generated from bench/results.json (print, --write, --check)",
        description="Render bench/results.json (every figure with its value, unit, command, CPU, load and date) as "
        "the markdown table that README.md, docs/sizing.md and bench/RESULTS.md include between "
        f"{BEGIN} and {END}. bench/ARCHIVE.md describes each run in full.",
        epilog="examples:\n"
        "  finsent bench results                          print the table\n"
        "  finsent bench results --write README.md docs/sizing.md bench/RESULTS.md\n"
        "  finsent bench results --check README.md        exit 1 if its table is stale or a figure is "
        "hand-written",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--file", metavar="PATH", help="the figures (default: bench/results.json of this checkout)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", nargs="+", metavar="FILE", help="replace the generated block of each FILE")
    mode.add_argument(
        "--check",
        nargs="+",
        metavar="FILE",
        help="exit 1 when a FILE's block differs from the table, or a figure stands outside it",
    )
    p.set_defaults(func=run_results)
