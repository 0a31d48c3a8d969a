"""``finsent label ...``: human corrections into the store's ``labels`` table, and the queue that asks for them.

Three commands, scriptable:

* ``finsent label ITEM_ID --sentiment S [--topic T] [--by NAME] [--note TEXT]`` -- one correction of a
  stored item (its old label and text are read from the store).
* ``finsent label import CSV`` -- many: columns ``id,sentiment,topic`` (either label may be empty), or
  ``text,label`` / ``text,topic`` for text that is not in the store (id = ``stable_id(text)``).
* ``finsent label queue --n N --csv OUT`` -- the stored items most in need of an annotator (active
  learning), written as a CSV that ``label import`` reads back once its label columns are filled in.

Defined behaviour of an import (each rule is tested in ``tests/models/test_labels.py``):

* a row naming an id that is not stored, an unknown label (matched case-insensitively against the
  model's ``labels.json``), or an empty id/text is reported with its line number and not imported;
  the other rows are, and the command then exits 4 (InputError) so that scripts notice;
* rows with every label cell empty are skipped and counted (a queue CSV nobody filled in imports
  nothing); extra columns are ignored (the queue's context columns);
* the same (id, task) twice in one file: the last valid row wins, the earlier ones are reported;
* a correction equal to the stored one (same label and note) is not written again: importing a file
  twice changes nothing the second time (``unchanged`` counts them). See the ``labels`` table in
  :mod:`finsent.stream.store.schema` for why the store keeps the newest correction per (task, id).

Spreadsheet formulas (CSV injection, OWASP): the queue's cells hold text from any feed, and analysts
open the file in a spreadsheet, which runs a cell that starts with ``= + - @``, a tab or a carriage
return as a formula (``=HYPERLINK(...)``, ``=cmd|' /C calc'!A0``). The export therefore prefixes such a
cell with a single quote ``'`` (the spreadsheet shows the text, runs nothing), and the import removes
that quote again. So that the quote is removed exactly when the export added it, the rule is a
bijection on strings: a cell is escaped when it is zero or more quotes followed by a formula
character (``= + - @``, tab, CR), and unescaped when it is one or more quotes followed by one. A
text that really begins with ``'=`` is exported as ``''=`` and imported as ``'=`` again; ``'tis`` is
left alone both ways. (A
spreadsheet that saves the file drops its own quote: the import then reads the unquoted text, also
right.) Hand-written import files follow the same rule: a leading ``'`` before a formula character is
read as this escape.

Many bad rows are summarised: the first :data:`MAX_LOGGED` are logged one line each, then one line
with the count of the rest (the JSON summary lists up to :data:`MAX_REPORTED`).

The embedded store (chdb) is held by one process: while a worker runs on it these commands fail with
the store's one-line "in use" error. ``finsent query`` falls back to the worker's API, but that API is
read-only, so corrections cannot travel through it.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import logging
import random
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from finsent.cli.query import format_duration
from finsent.cli.tree import ItemOrSubcommand, Subcommands
from finsent.core.argtypes import parse_duration
from finsent.core.errors import InputError, StoreInUse
from finsent.core.events import stable_id
from finsent.core.settings import Settings
from finsent.core.store import LABEL_TASKS, Label

log = logging.getLogger(__name__)

#: queue CSV: the columns ``label import`` reads first, then context for the annotator (ignored on import)
QUEUE_CSV_COLUMNS = (
    "id",
    "sentiment",
    "topic",
    "text",
    "title",
    "source",
    "ingested_at",
    "predicted_sentiment",
    "p_negative",
    "p_neutral",
    "p_positive",
    "predicted_topic",
    "topic_prob",
    "uncertainty",
    "model_version",
)
MAX_REPORTED = 100  # rows listed in the JSON summary
MAX_LOGGED = 10  # bad or duplicate rows logged one line each; the rest are counted in one line
_FORMULA_RE = re.compile(r"'*[=+\-@\t\r]")  # what the export escapes (see the module docstring)
_ESCAPED_RE = re.compile(r"'+[=+\-@\t\r]")  # what the import unescapes: exactly the escaped cells
_WORKER_HINT = (
    "labels are written to the store, and the running worker's API is read-only: stop the worker for a "
    "moment, or run the pipeline on a clickhouse:// server that several processes can share"
)


def default_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def valid_labels(settings: Settings) -> dict[str, tuple[str, ...]]:
    """The label names of each task: the production model's (registry), else the configured/shipped model's."""
    from finsent.models import resolve_model_dir
    from finsent.models.modeldir import read_model_info

    model_dir = resolve_model_dir(settings.model_dir)
    if settings.registry:
        from finsent.models.registry import Registry

        try:
            prod = Registry(settings.registry).resolve("production")
        except Exception as exc:  # noqa: BLE001 - an unreadable registry must not stop a correction
            log.warning(
                "cannot read the registry %s (%s); labels are checked against %s", settings.registry, exc, model_dir
            )
            prod = None
        if prod is not None:
            model_dir = prod.path
    try:
        info = read_model_info(model_dir)
    except (OSError, ValueError) as exc:
        from finsent.models.labels import SENTIMENT_LABELS, TOPIC_LABELS

        log.warning(
            "cannot read %s/labels.json (%s); checking labels against finsent's default label sets", model_dir, exc
        )
        return {"sentiment": SENTIMENT_LABELS, "topic": TOPIC_LABELS}
    return {"sentiment": info.sentiment, "topic": info.topic}


def canonical_label(task: str, value: str, valid: dict[str, tuple[str, ...]]) -> str:
    """``value`` as the model spells it (case-insensitive match), or InputError listing the valid ones."""
    text = value.strip()
    for name in valid[task]:
        if name.casefold() == text.casefold():
            return name
    raise InputError(
        f"unknown {task} label {value!r}",
        hint=f"valid {task} labels: {', '.join(valid[task])}",
    )


@contextmanager
def opened_store(settings: Settings, what: str, hint: str = _WORKER_HINT) -> Iterator[Any]:
    """The store with its schema, closed afterwards; "in use" (chdb held by a worker) says ``hint``."""
    from finsent.stream.store import store_from_settings

    store = None
    try:
        store = store_from_settings(settings)
        store.ensure_schema()
    except StoreInUse as exc:
        if store is not None:
            store.close()
        raise StoreInUse(f"finsent {what}: {exc}", hint=hint) from None
    except Exception:
        if store is not None:
            store.close()
        raise
    try:
        yield store
    finally:
        store.close()


def csv_cell(value: Any) -> Any:
    """A cell a spreadsheet shows as text and never runs as a formula (``'`` prefix; see the module docstring)."""
    return "'" + value if isinstance(value, str) and _FORMULA_RE.match(value) else value


def csv_uncell(value: str) -> str:
    """The inverse of :func:`csv_cell`: ``csv_uncell(csv_cell(s)) == s`` for every string ``s``."""
    return value[1:] if _ESCAPED_RE.match(value) else value


def _changed(new: Label, stored: dict[tuple[str, str], Label]) -> bool:
    old = stored.get((new.task, new.id))
    return old is None or old.label != new.label or old.note != new.note


# --- finsent label ITEM_ID ------------------------------------------------------------------------


def run_item(args: argparse.Namespace, settings: Settings) -> int:
    item_id = args.item_id
    wanted = {task: getattr(args, task) for task in LABEL_TASKS if getattr(args, task) is not None}
    if not wanted:
        raise InputError(
            f"finsent label {item_id}: nothing to record", hint="give --sentiment LABEL and/or --topic LABEL"
        )
    valid = valid_labels(settings)
    labels = {task: canonical_label(task, value, valid) for task, value in wanted.items()}
    with opened_store(settings, f"label {item_id}") as store:
        item = store.items_by_id([item_id]).get(item_id)
        if item is None:
            raise InputError(
                f"no stored item has the id {item_id!r}",
                hint="ids are in `finsent query top --json` and in the CSV of `finsent label queue`; "
                "for text that is not stored use `finsent label import` with text,label columns",
            )
        stored = {(lbl.task, lbl.id): lbl for lbl in store.labels(ids=[item_id])}
        new = [
            Label(
                id=item_id,
                task=task,
                label=label,
                text=item["text"],
                old_label=str(item[task]),
                by=args.by or default_user(),
                note=args.note or "",
                origin="cli",
            )
            for task, label in labels.items()
        ]
        todo = [lbl for lbl in new if _changed(lbl, stored)]
        store.insert_labels(todo)
    parts = [
        f"{lbl.task} {lbl.label} (model said {lbl.old_label or '?'})"
        + ("" if lbl in todo else ", unchanged: already labelled so")
        for lbl in new
    ]
    print(f"{item_id}: {'; '.join(parts)}; by {new[0].by}")
    return 0


# --- finsent label import CSV ---------------------------------------------------------------------


@dataclass
class _Row:
    line: int
    id: str
    text: str
    labels: dict[str, str]
    by: str
    note: str


def _columns(header: list[str], path: str) -> tuple[str, dict[str, str]]:
    """(mode 'id'|'text', {task: column}) from the header; InputError when the file cannot be labels."""
    names = {h.strip().lower(): h for h in header}
    mode = "id" if "id" in names else "text" if "text" in names else ""
    if not mode:
        raise InputError(
            f"{path}: the header needs an id column (stored items) or a text column (new text)",
            hint="columns id,sentiment,topic or text,label or text,topic; the first row is the header",
        )
    tasks: dict[str, str] = {}
    for column in ("sentiment", "label"):
        if column in names and "sentiment" not in tasks:
            tasks["sentiment"] = names[column]
    if "topic" in names:
        tasks["topic"] = names["topic"]
    if not tasks:
        raise InputError(
            f"{path}: no label column in the header ({', '.join(header)})",
            hint="add a sentiment (or label) column and/or a topic column",
        )
    return mode, {
        **tasks,
        **({"id": names["id"]} if mode == "id" else {}),
        "text": names.get("text", ""),
        "by": names.get("by", ""),
        "note": names.get("note", ""),
    }


def _read_rows(path: str, default_by: str, report: dict[str, Any]) -> tuple[str, list[_Row]]:
    try:
        f = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}", hint="check the path") from None
    with f:
        reader = csv.DictReader(f)
        try:
            header = reader.fieldnames or []
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not a readable CSV ({exc})", hint="save it as UTF-8 CSV") from None
        if not header:
            raise InputError(f"{path} is empty", hint="the first row must be a header such as id,sentiment,topic")
        mode, cols = _columns(header, path)
        rows: list[_Row] = []
        try:
            for rec in reader:
                report["rows"] += 1
                cell = {key: csv_uncell(str(rec.get(col) or "")) if col else "" for key, col in cols.items()}
                labels = {task: cell[task].strip() for task in LABEL_TASKS if cell.get(task, "").strip()}
                rows.append(
                    _Row(
                        reader.line_num,
                        cell.get("id", "").strip(),
                        cell["text"],
                        labels,
                        cell["by"].strip() or default_by,
                        cell["note"].strip(),
                    )
                )
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InputError(
                f"{path}:{reader.line_num}: not a readable CSV row ({exc})",
                hint="fix that line (or save the file as UTF-8) and import again",
            ) from None
    return mode, rows


def _error(report: dict[str, Any], path: str, line: int, reason: str, detail: str) -> None:
    if report["error_count"] < MAX_LOGGED:
        log.warning("%s:%d: not imported: %s: %s", path, line, reason, detail)
    report["error_count"] += 1
    if len(report["errors"]) < MAX_REPORTED:
        report["errors"].append({"line": line, "reason": reason, "detail": detail})


def import_labels(store: Any, path: str, valid: dict[str, tuple[str, ...]], by: str) -> dict[str, Any]:
    """Read, check and store one CSV of labels; returns the summary (see the module docstring)."""
    report: dict[str, Any] = {
        "file": path,
        "rows": 0,
        "imported": 0,
        "unchanged": 0,
        "empty": 0,
        "duplicates": [],
        "duplicate_count": 0,
        "errors": [],
        "error_count": 0,
    }
    mode, rows = _read_rows(path, by, report)
    checked: list[tuple[_Row, dict[str, str]]] = []
    for row in rows:
        if not row.labels:
            report["empty"] += 1
            continue
        if mode == "id" and not row.id:
            _error(report, path, row.line, "empty_id", "the id cell is empty")
            continue
        if mode == "text":
            if not row.text.strip():
                _error(report, path, row.line, "empty_text", "the text cell is empty")
                continue
            row.id = stable_id(row.text.strip())
        try:
            checked.append((row, {t: canonical_label(t, v, valid) for t, v in row.labels.items()}))
        except InputError as exc:
            _error(report, path, row.line, "unknown_label", exc.one_line())
    items = store.items_by_id([row.id for row, _ in checked]) if checked else {}
    latest: dict[tuple[str, str], tuple[_Row, str]] = {}
    for row, labels in checked:
        item = items.get(row.id)
        if mode == "id" and item is None:
            _error(report, path, row.line, "unknown_id", f"no stored item has the id {row.id!r}")
            continue
        for task, label in labels.items():
            earlier = latest.get((task, row.id))
            if earlier is not None:
                report["duplicate_count"] += 1
                if report["duplicate_count"] <= MAX_LOGGED:
                    log.warning(
                        "%s:%d: %s of %s given again on line %d: the later one wins",
                        path,
                        earlier[0].line,
                        task,
                        row.id,
                        row.line,
                    )
                if len(report["duplicates"]) < MAX_REPORTED:
                    report["duplicates"].append(
                        {"line": earlier[0].line, "replaced_by": row.line, "id": row.id, "task": task}
                    )
            latest[(task, row.id)] = (row, label)
    origin = f"import:{Path(path).name}"[:200]
    new = []
    for (task, item_id), (row, label) in latest.items():
        item = items.get(item_id)
        new.append(
            Label(
                id=item_id,
                task=task,
                label=label,
                text=item["text"] if item else row.text.strip(),
                old_label=str(item[task]) if item else "",
                by=row.by,
                note=row.note,
                origin=origin,
            )
        )
    stored = {(lbl.task, lbl.id): lbl for lbl in store.labels(ids=list({lbl.id for lbl in new}))} if new else {}
    todo = [lbl for lbl in new if _changed(lbl, stored)]
    report["imported"] = store.insert_labels(todo)
    report["unchanged"] = len(new) - len(todo)
    report["errors"].sort(key=lambda e: e["line"])
    if report["error_count"] > MAX_LOGGED:
        log.warning(
            "%s: %d more row(s) not imported, not logged one by one (%d in all; the JSON summary lists the first %d)",
            path,
            report["error_count"] - MAX_LOGGED,
            report["error_count"],
            min(report["error_count"], MAX_REPORTED),
        )
    if report["duplicate_count"] > MAX_LOGGED:
        log.warning(
            "%s: %d more repeated (id, task) row(s), not logged one by one (%d in all)",
            path,
            report["duplicate_count"] - MAX_LOGGED,
            report["duplicate_count"],
        )
    return report


def run_import(args: argparse.Namespace, settings: Settings) -> int:
    valid = valid_labels(settings)
    with opened_store(settings, "label import") as store:
        report = import_labels(store, args.csv, valid, args.by or default_user())
    print(json.dumps(report, ensure_ascii=False), flush=True)
    if report["error_count"]:
        raise InputError(
            f"{args.csv}: {report['error_count']} row(s) not imported (listed above and in the JSON summary); "
            f"{report['imported']} label(s) imported",
            hint="fix those lines and import the file again: rows already imported are not written twice",
        )
    return 0


# --- finsent label queue ----------------------------------------------------------------------------


def _uncertainty(row: dict[str, Any], task: str) -> float:
    top = max(row["p_negative"], row["p_neutral"], row["p_positive"]) if task == "sentiment" else row["topic_prob"]
    return round(1.0 - float(top), 6)


def queue_rows(store: Any, n: int, strategy: str, task: str, since: timedelta | None, seed: int) -> list[dict]:
    rows = store.label_queue(n, since=since, task=task, strategy=strategy, seed=seed)
    return [
        {
            "id": r["id"],
            "sentiment": "",
            "topic": "",
            "text": r["text"],
            "title": r["title"] or "",
            "source": r["source"],
            "ingested_at": r["ingested_at"].isoformat().replace("+00:00", "Z"),
            "predicted_sentiment": r["sentiment"],
            "p_negative": r["p_negative"],
            "p_neutral": r["p_neutral"],
            "p_positive": r["p_positive"],
            "predicted_topic": r["topic"],
            "topic_prob": r["topic_prob"],
            "uncertainty": _uncertainty(r, task),
            "model_version": r["model_version"],
        }
        for r in rows
    ]


def run_queue(args: argparse.Namespace, settings: Settings) -> int:
    if args.n < 1:
        raise InputError("finsent label queue: --n must be at least 1", hint="e.g. --n 200")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    with opened_store(settings, "label queue") as store:
        rows = queue_rows(store, args.n, args.strategy, args.task, args.since, seed)
    out = sys.stdout if args.csv == "-" else None
    try:
        f = out or open(args.csv, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise InputError(f"cannot write {args.csv}: {exc.strerror or exc}", hint="check the directory") from None
    try:
        writer = csv.DictWriter(f, fieldnames=QUEUE_CSV_COLUMNS)
        writer.writeheader()
        writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)
    finally:
        if out is None:
            f.close()
    summary = {
        "written": len(rows),
        "csv": args.csv,
        "strategy": args.strategy,
        "task": args.task,
        "since_s": int(args.since.total_seconds()) if args.since else None,
        **({"seed": seed} if args.strategy == "random" else {}),
    }
    print(json.dumps(summary), file=sys.stderr if out is not None else sys.stdout, flush=True)
    return 0


# --- registration -------------------------------------------------------------------------------------

ITEM_FORM = "ITEM_ID"


IMPORT_DESCRIPTION = (
    "Import labels from a CSV with a header. Stored items: columns id,sentiment,topic (either label may "
    "be empty). Text that is not in the store: text,label (sentiment) and/or text,topic; its id is a "
    "stable hash of the text. Optional columns by and note; other columns are ignored (so the CSV of "
    "`finsent label queue` imports as it is). Rows with an unknown id, an unknown label or an empty "
    "id/text are reported as FILE:LINE and not imported; the others are, and the exit status is then 4. "
    "The same id and task twice: the last row wins (reported). Rows with no label are skipped. Labels "
    "equal to the stored ones are not written again, so importing a file twice is harmless. Ends with "
    'one JSON line {"rows", "imported", "unchanged", "empty", "duplicates", "errors", ...} on stdout.\n\n'
    "examples:\n"
    "  finsent label import todo.csv\n"
    "  finsent label import analysts.csv --by research-desk"
)
QUEUE_DESCRIPTION = (
    "Write the stored items that most need an annotator as a CSV ready for `finsent label import`: "
    "empty sentiment and topic columns to fill in, then context (text, the model's predictions, "
    "probabilities, uncertainty) that the import ignores. Items already labelled for --task are left out. "
    "A cell a spreadsheet would run as a formula (starting with = + - @, tab or CR) is written with a "
    "leading ' (shown as text, never run); `label import` removes it again. "
    "uncertain: least confident first, uncertainty = 1 - the top probability of the task's head (for "
    "topic only the top probability is stored, so a margin is not offered). random: a reproducible "
    "sample for --seed (a baseline to measure active learning against). Prints a JSON summary.\n\n"
    "examples:\n"
    "  finsent label queue --n 200 --csv todo.csv\n"
    "  finsent label queue --n 50 --task topic --since 24h --csv topics.csv\n"
    "  finsent label queue --n 100 --strategy random --seed 7 --csv sample.csv"
)


LABEL_DESCRIPTION = (
    "Store human corrections of the model's sentiment and topic in the store's labels table (the newest "
    "correction per item and task counts; retraining reads them). Labels are checked against the model's "
    "labels.json, case-insensitively. While a worker holds the embedded (chdb) store these commands fail "
    "with the store's 'in use' error: the worker's API is read-only.\n\n"
    "examples:\n"
    "  finsent label 3f9a0c1d2e4b5a6f7c8d9e0f --sentiment negative --topic Macro --note 'rate hike'\n"
    "  finsent label queue --n 200 --since 7d --csv todo.csv\n"
    "  finsent label import todo.csv"
)
ITEM_DESCRIPTION = (
    "Record the human label of one stored item (its old label and text are read from the store). "
    "An unknown id or label is an error that says what is valid. Giving the label already stored "
    "changes nothing.\n\n"
    "examples:\n"
    "  finsent label 3f9a0c1d2e4b5a6f7c8d9e0f --sentiment negative\n"
    "  finsent label 3f9a0c1d2e4b5a6f7c8d9e0f --sentiment neutral --topic 'Fed | Central Banks' --by alice"
)


def register(sub: Subcommands) -> None:
    label = sub.item_group(
        "label",
        item=ITEM_FORM,
        dest="item_id",
        help="human labels: correct an item, import a CSV of corrections, export the annotation queue",
        description=LABEL_DESCRIPTION,
    )
    _add_item(label)
    _add_import(label)
    _add_queue(label)


def _add_item(label: ItemOrSubcommand) -> None:
    a = label.leaf(
        ITEM_FORM,
        run_item,
        help="record one correction of a stored item: finsent label ITEM_ID --sentiment S [--topic T]",
        description=ITEM_DESCRIPTION,
    )
    a.add_argument("--sentiment", metavar="S", help="negative, neutral or positive (the model's sentiment labels)")
    a.add_argument("--topic", metavar="T", help="one of the model's topic labels, e.g. 'Macro' (quote spaces)")
    a.add_argument("--by", metavar="NAME", help="who labelled it (default: the login name)")
    a.add_argument("--note", metavar="TEXT", help="free text kept with the label")


def _add_import(label: ItemOrSubcommand) -> None:
    i = label.leaf(
        "import",
        run_import,
        help="import a CSV of labels (id,sentiment,topic or text,label / text,topic)",
        description=IMPORT_DESCRIPTION,
    )
    i.add_argument("csv", metavar="CSV", help="the CSV file (UTF-8)")
    i.add_argument("--by", metavar="NAME", help="who labelled rows without a by column (default: the login name)")


def _add_queue(label: ItemOrSubcommand) -> None:
    q = label.leaf(
        "queue",
        run_queue,
        help="export the stored items most in need of a label, least confident first (active learning)",
        description=QUEUE_DESCRIPTION,
    )
    q.add_argument("--n", type=int, required=True, metavar="N", help="how many items")
    q.add_argument(
        "--strategy",
        choices=("uncertain", "random"),
        default="uncertain",
        help="uncertain (default): least confident first; random: a seeded sample",
    )
    q.add_argument(
        "--task",
        choices=LABEL_TASKS,
        default="sentiment",
        help="whose confidence ranks the items, and which labels exclude an item (default sentiment)",
    )
    q.add_argument(
        "--since",
        type=parse_duration,
        default=timedelta(days=7),
        metavar="DURATION",
        help=f"only items ingested in the last DURATION (default {format_duration(timedelta(days=7))})",
    )
    q.add_argument("--seed", type=int, help="random strategy: the seed (default: a new one, printed)")
    q.add_argument("--csv", required=True, metavar="OUT", help="where to write the CSV (- for stdout)")
