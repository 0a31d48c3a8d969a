"""``finsent score``: score files or stdin offline, one JSON line per input, in input order.

No Kafka and no store: rows go through the same :meth:`Classifier.predict` (title rule, entity linking) as the
worker's scoring. Inputs:

* CSV with a header holding ``text``; optional ``title`` and ``id`` columns (others are ignored);
* JSON lines: one object per line with ``text``, optional ``title`` and ``id``;
* plain text (stdin's default): each non-blank line is one text.

A bad row never stops the run: it becomes an error line ``{"id", "error": REASON, "detail", "file", "line"}`` in
its place (reasons as ``finsent ingest replay`` names them: ``not_json``, ``not_object``, ``bad_type``,
``empty_text``, ``csv_error``), and the run goes on. The command fails (exit 4) only when nothing at all could be
scored, or a file cannot be read.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from finsent.core.errors import InputError

FORMATS: tuple[str, ...] = ("auto", "csv", "jsonl", "text")
#: rows per classifier call (its own batches are cut smaller by token length)
CHUNK = 256
PROGRESS_EVERY_S = 2.0


@dataclass(slots=True)
class Row:
    """One input: scorable when ``error`` is empty."""

    file: str
    line: int
    id: str | None
    text: str | None = None
    title: str | None = None
    error: str = ""
    detail: str = ""

    def error_json(self) -> dict[str, Any]:
        return {"id": self.id, "error": self.error, "detail": self.detail, "file": self.file, "line": self.line}


def _format_of(path: Path | None, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path is None:
        return "text"
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    return "text"


def _from_object(name: str, line: int, obj: dict[str, Any], default_id: str) -> Row:
    rid = obj.get("id")
    rid = default_id if rid in (None, "") else str(rid)
    text, title = obj.get("text"), obj.get("title")
    if text is not None and not isinstance(text, str):
        return Row(name, line, rid, error="bad_type", detail=f"text is {type(text).__name__}, not a string")
    if title is not None and not isinstance(title, str):
        return Row(name, line, rid, error="bad_type", detail=f"title is {type(title).__name__}, not a string")
    if not text or not text.strip():
        return Row(name, line, rid, error="empty_text", detail="no text to score")
    return Row(name, line, rid, text=text, title=title or None)


def _csv_rows(name: str, fh: TextIO) -> Iterator[Row]:
    reader = csv.reader(fh)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise InputError(f"{name}:1: unreadable CSV header ({exc})", hint="the first line names the columns") from None
    fields = [(h or "").strip().lower() for h in header or ()]
    if "text" not in fields:
        raise InputError(
            f"{name}: CSV needs a header with a 'text' column (got {header})",
            hint="columns: text, optionally title and id",
        )
    n = 0
    while True:
        start = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            n += 1
            yield Row(name, start, f"{name}:{n}", error="csv_error", detail=str(exc))
            continue
        if not values or not any(v.strip() for v in values):
            continue
        n += 1
        yield _from_object(name, start, dict(zip(fields, values, strict=False)), f"{name}:{n}")


def _jsonl_rows(name: str, fh: TextIO) -> Iterator[Row]:
    n = 0
    for line_no, line in enumerate(fh, start=1):
        if not line.strip():
            continue
        n += 1
        default_id = f"{name}:{n}"
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as exc:
            detail = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)[:200]
            yield Row(name, line_no, default_id, error="not_json", detail=detail)
            continue
        if not isinstance(obj, dict):
            yield Row(name, line_no, default_id, error="not_object", detail=f"a JSON {type(obj).__name__}")
            continue
        yield _from_object(name, line_no, obj, default_id)


def _text_rows(name: str, fh: TextIO) -> Iterator[Row]:
    n = 0
    for line_no, line in enumerate(fh, start=1):
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        n += 1
        yield Row(name, line_no, f"{name}:{n}", text=text)


def _stdin() -> TextIO:
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a replaced sys.stdin (tests, embedding) is already text
        return sys.stdin
    return io.TextIOWrapper(buffer, encoding="utf-8-sig", errors="replace", newline="")


def read_rows(paths: Iterable[str], fmt: str = "auto", stdin: TextIO | None = None) -> Iterator[Row]:
    """Every input row of ``paths`` (``-``: stdin), in order. A file that cannot be opened raises InputError."""
    for raw in paths:
        path = None if raw == "-" else Path(raw)
        kind = _format_of(path, fmt)
        reader = {"csv": _csv_rows, "jsonl": _jsonl_rows, "text": _text_rows}[kind]
        if path is None:
            src = stdin if stdin is not None else _stdin()
            yield from reader("stdin", src)
            continue
        try:
            fh = path.open("r", encoding="utf-8-sig", errors="replace", newline="")
        except OSError as exc:
            raise InputError(
                f"{path}: cannot read it ({exc.strerror or exc})",
                hint="give an existing CSV, JSONL or text file, or - for stdin",
            ) from None
        with fh:
            yield from reader(path.name, fh)


def prediction_json(row_id: str | None, pred: Any) -> dict[str, Any]:
    """The output line of one scored row."""
    return {
        "id": row_id,
        "sentiment": pred.sentiment,
        "sentiment_probs": {k: round(float(v), 6) for k, v in pred.sentiment_probs.items()},
        "topic": pred.topic,
        "topic_prob": round(float(pred.topic_prob), 6),
        "truncated": bool(pred.truncated),
        "entities": [m.to_dict() for m in pred.entities],
    }


@dataclass(slots=True)
class ScoreStats:
    scored: int = 0
    bad: int = 0
    seconds: float = 0.0


def score_rows(
    classifier: Any, rows: Iterable[Row], out: TextIO, progress: TextIO | None = None, chunk: int = CHUNK
) -> ScoreStats:
    """Score ``rows`` in chunks and write one JSON line each to ``out``, in input order."""
    stats = ScoreStats()
    t0 = last = time.monotonic()
    pending: list[Row] = []

    def flush() -> None:
        good = [r for r in pending if not r.error]
        preds: dict[int, Any] = {}
        if good:
            try:
                got = classifier.predict([r.text for r in good], titles=[r.title for r in good])
                preds = {id(r): p for r, p in zip(good, got, strict=True)}
            except Exception:  # noqa: BLE001 - find the row(s) that broke the call, score the others
                for r in good:
                    try:
                        (preds[id(r)],) = classifier.predict([r.text], titles=[r.title])
                    except Exception as exc:  # noqa: BLE001
                        r.error, r.detail = "model_error", f"{type(exc).__name__}: {exc}"[:300]
        for r in pending:
            if r.error:
                stats.bad += 1
                line = r.error_json()
            else:
                stats.scored += 1
                line = prediction_json(r.id, preds[id(r)])
            out.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
        out.flush()
        pending.clear()

    for row in rows:
        pending.append(row)
        if len(pending) >= chunk:
            flush()
            now = time.monotonic()
            if progress is not None and now - last >= PROGRESS_EVERY_S:
                last = now
                done = stats.scored + stats.bad
                print(
                    f"finsent score: {done} rows ({stats.bad} bad), {done / (now - t0):.0f} rows/s",
                    file=progress,
                    flush=True,
                )
    flush()
    stats.seconds = time.monotonic() - t0
    return stats


__all__ = ["FORMATS", "Row", "ScoreStats", "prediction_json", "read_rows", "score_rows"]
