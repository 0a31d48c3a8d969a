"""Labels, in one module: the heads' label sets, and human labels (what a person may write, how a CSV of
corrections is read, the annotation queue, and what retraining takes).

The heads' label sets (no torch, no onnxruntime here) are what the runtime, the trainer, the evaluator and the
tests must all agree on: index ``i`` of a head's logits *is* ``SENTIMENT_LABELS[i]`` / ``TOPIC_LABELS[i]`` for the
models finsent trains. A model directory still carries its own ``labels.json`` and the runtime trusts that file,
not this module, so a model trained on other classes loads fine.

Human labels (``finsent label``, :mod:`finsent.cli.labels`, is the command; the store keeps them in its ``labels``
table, :mod:`finsent.stream.store.schema`, the newest correction per (task, id); :class:`finsent.core.store.Label`
is one correction). The rules of an import (each is tested in ``tests/models/test_labels.py``):

* a row naming an id that is not stored, an unknown label (matched case-insensitively against the
  model's ``labels.json``, :func:`valid_labels`), or an empty id/text is reported with its line number and not
  imported; the other rows are, and the command then exits 4 (InputError) so that scripts notice;
* rows with every label cell empty are skipped and counted (a queue CSV nobody filled in imports
  nothing); extra columns are ignored (the queue's context columns);
* the same (id, task) twice in one file: the last valid row wins, the earlier ones are reported;
* a correction equal to the stored one (same label and note) is not written again: importing a file
  twice changes nothing the second time (``unchanged`` counts them).

Many bad rows are summarised: the first :data:`MAX_LOGGED` are logged one line each, then one line
with the count of the rest (the JSON summary lists up to :data:`MAX_REPORTED`).

Spreadsheet formulas (CSV injection, OWASP): the queue's cells hold text from any feed, and analysts
open the file in a spreadsheet, which runs a cell that starts with ``= + - @``, a tab or a carriage
return as a formula (``=HYPERLINK(...)``, ``=cmd|' /C calc'!A0``). The export therefore prefixes such a
cell with a single quote ``'`` (the spreadsheet shows the text, runs nothing), and the import removes
that quote again (:func:`csv_cell`, :func:`csv_uncell`). So that the quote is removed exactly when the export
added it, the rule is a bijection on strings: a cell is escaped when it is zero or more quotes followed by a
formula character (``= + - @``, tab, CR), and unescaped when it is one or more quotes followed by one. A
text that really begins with ``'=`` is exported as ``''=`` and imported as ``'=`` again; ``'tis`` is
left alone both ways. (A spreadsheet that saves the file drops its own quote: the import then reads the unquoted
text, also right.) Hand-written import files follow the same rule: a leading ``'`` before a formula character is
read as this escape.

Why here, in ``models``: labels are the model's vocabulary and its training data. Everything below takes the
store as an object with the :class:`~finsent.core.store.Store` methods it needs, so it imports only ``core``
(and other ``models`` modules); opening the store is the command's business.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finsent.core.errors import InputError
from finsent.core.events import stable_id
from finsent.core.store import LABEL_TASKS, Label

if TYPE_CHECKING:
    from finsent.core.settings import Settings
    from finsent.models.frozen import HumanLabel

log = logging.getLogger(__name__)

# --- the heads' label sets ----------------------------------------------------------------------------------

SENTIMENT_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")

#: The 20 classes of the Twitter Financial News Topic set (alphabetical, as the dataset lists them).
TOPIC_LABELS: tuple[str, ...] = (
    "Analyst Update",
    "Company | Product News",
    "Currencies",
    "Dividend",
    "Earnings",
    "Energy | Oil",
    "Fed | Central Banks",
    "Financials",
    "General News | Opinion",
    "Gold | Metals | Materials",
    "IPO",
    "Legal | Regulation",
    "M&A | Investments",
    "Macro",
    "Markets",
    "Personnel Change",
    "Politics",
    "Stock Commentary",
    "Stock Movement",
    "Treasuries | Corporate Debt",
)

#: the two heads, which are also the tasks a human label is for (one tuple: the store, the heads and drift agree)
TASKS: tuple[str, ...] = LABEL_TASKS

# --- human labels: what a person may write --------------------------------------------------------------------


def valid_labels(settings: Settings) -> dict[str, tuple[str, ...]]:
    """The label names of each task: the production model's (registry), else the configured/shipped model's."""
    from finsent.models import resolve_model_dir
    from finsent.models.modeldir import read_model_info

    model_dir = resolve_model_dir(settings.model.model_dir)
    if settings.model_registry.registry:
        from finsent.models.registry import Registry

        try:
            prod = Registry(settings.model_registry.registry).resolve("production")
        except Exception as exc:  # noqa: BLE001 - an unreadable registry must not stop a correction
            log.warning(
                "cannot read the registry %s (%s); labels are checked against %s",
                settings.model_registry.registry,
                exc,
                model_dir,
            )
            prod = None
        if prod is not None:
            model_dir = prod.path
    try:
        info = read_model_info(model_dir)
    except (OSError, ValueError) as exc:
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


def changed(new: Label, stored: dict[tuple[str, str], Label]) -> bool:
    """Whether ``new`` must be written: no stored label for its (task, id), or another label or note."""
    old = stored.get((new.task, new.id))
    return old is None or old.label != new.label or old.note != new.note


# --- human labels: CSV files (the queue's export, the import) ---------------------------------------------------

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


def csv_cell(value: Any) -> Any:
    """A cell a spreadsheet shows as text and never runs as a formula (``'`` prefix; see the module docstring)."""
    return "'" + value if isinstance(value, str) and _FORMULA_RE.match(value) else value


def csv_uncell(value: str) -> str:
    """The inverse of :func:`csv_cell`: ``csv_uncell(csv_cell(s)) == s`` for every string ``s``."""
    return value[1:] if _ESCAPED_RE.match(value) else value


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
    todo = [lbl for lbl in new if changed(lbl, stored)]
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


# --- human labels: the annotation queue and training -----------------------------------------------------------


def _uncertainty(row: dict[str, Any], task: str) -> float:
    top = max(row["p_negative"], row["p_neutral"], row["p_positive"]) if task == "sentiment" else row["topic_prob"]
    return round(1.0 - float(top), 6)


def queue_rows(store: Any, n: int, strategy: str, task: str, since: timedelta | None, seed: int) -> list[dict]:
    """The queue's CSV rows (:data:`QUEUE_CSV_COLUMNS`, label cells empty): the stored items without a ``task``
    label that most need an annotator (``uncertain``: least confident first; ``random``: a sample for ``seed``)."""
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


def training_labels(labels: Iterable[Label]) -> list[HumanLabel]:
    """Stored corrections as retraining takes them (:class:`~finsent.models.frozen.HumanLabel`); a label without
    text (nothing to train on) is left out."""
    from finsent.models.frozen import HumanLabel

    return [HumanLabel(key=lbl.id, text=lbl.text, task=lbl.task, label=lbl.label) for lbl in labels if lbl.text]
