"""``finsent label ...``: human corrections into the store's ``labels`` table, and the queue that asks for them.

Three commands, scriptable:

* ``finsent label ITEM_ID --sentiment S [--topic T] [--by NAME] [--note TEXT]`` -- one correction of a
  stored item (its old label and text are read from the store).
* ``finsent label import CSV`` -- many: columns ``id,sentiment,topic`` (either label may be empty), or
  ``text,label`` / ``text,topic`` for text that is not in the store (id = ``stable_id(text)``).
* ``finsent label queue --n N --csv OUT`` -- the stored items most in need of an annotator (active
  learning), written as a CSV that ``label import`` reads back once its label columns are filled in.

What a person may write, the rules of an import (unknown ids and labels, duplicates, re-imports that change
nothing), the CSV's protection against spreadsheet formulas and the queue are the labels feature's, in
:mod:`finsent.models.labels`; this module parses the commands, opens the store and prints.

The embedded store (chdb) is held by one process: while a worker runs on it these commands fail with
the store's one-line "in use" error. ``finsent query`` falls back to the worker's API, but that API is
read-only, so corrections cannot travel through it.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from finsent.cli.query import format_duration
from finsent.cli.tree import ItemOrSubcommand, Subcommands
from finsent.core.argtypes import parse_duration
from finsent.core.errors import InputError, StoreInUse
from finsent.core.settings import Settings
from finsent.core.store import LABEL_TASKS, Label
from finsent.models.labels import (
    QUEUE_CSV_COLUMNS,
    canonical_label,
    changed,
    csv_cell,
    import_labels,
    queue_rows,
    valid_labels,
)

_WORKER_HINT = (
    "labels are written to the store, and the running worker's API is read-only: stop the worker for a "
    "moment, or run the pipeline on a clickhouse:// server that several processes can share"
)


def default_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


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
        todo = [lbl for lbl in new if changed(lbl, stored)]
        store.insert_labels(todo)
    parts = [
        f"{lbl.task} {lbl.label} (model said {lbl.old_label or '?'})"
        + ("" if lbl in todo else ", unchanged: already labelled so")
        for lbl in new
    ]
    print(f"{item_id}: {'; '.join(parts)}; by {new[0].by}")
    return 0


# --- finsent label import CSV ---------------------------------------------------------------------


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
