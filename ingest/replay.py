"""Replay CSV / JSONL files onto ``finsent.raw`` at a fixed rate or at their original pace.

Used by the demo, by benchmarks and to backfill. Input:

* CSV with a header containing ``text``; optional columns used when present: ``title``, ``url``,
  ``published_at`` (also ``date``/``time``/``created_at``), ``source``, ``source_type``,
  ``author``, ``tickers`` (space/comma separated), ``id``. Others (``label``, ``topic``) are
  carried in :class:`ReplayRecord.extras` for evaluation code, not published (not in RawItem).
* JSONL: one object per line with the same keys.

Ids: a row's id is ``stable_id("replay", <file NAME>, <row number>, <text>)`` unless the row has
an ``id`` column. The file NAME rather than its path keeps ids equal across machines and
checkouts; the text is included because many datasets are all called ``train.csv`` -- two
different files with the same name must not collide, while replaying the same file twice gives
the same ids (the store's idempotent insert then keeps one row each). Replay does not consult
the dedup state by default for the same reason: a demo must be repeatable.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finsent.core.errors import InputError
from finsent.core.events import MAX_TEXT_CHARS, RawItem, stable_id
from finsent.ingest.normalize import Skip, make_item

log = logging.getLogger(__name__)

_TIME_COLUMNS = ("published_at", "published", "created_at", "date", "time", "timestamp")
_KNOWN = {"text", "title", "url", "source", "source_type", "author", "tickers", "id", *_TIME_COLUMNS}


@dataclass(frozen=True)
class ReplayRecord:
    """One input row: its 1-based number (data rows), the item, and the unused columns (label...)."""

    row: int
    item: RawItem
    extras: dict[str, Any] = field(default_factory=dict)


class ReplayInputError(InputError):
    """The file cannot be replayed (missing ``text`` column, unreadable encoding...)."""


def _rows(path: Path, encoding: str) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(row number, row dict or None when unparseable, problem) for CSV or JSONL."""
    suffix = path.suffix.lower()
    with path.open("r", encoding=encoding, newline="") as fh:
        if suffix == ".json" and fh.read(64).lstrip().startswith("["):  # a JSON array of objects
            fh.seek(0)
            try:
                rows = json.load(fh)
            except json.JSONDecodeError as exc:
                raise ReplayInputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
            for n, obj in enumerate(rows, start=1):
                yield (n, obj, "") if isinstance(obj, dict) else (n, None, "not a JSON object")
            return
        fh.seek(0)
        if suffix in (".jsonl", ".ndjson", ".json"):
            n = 0
            for line in fh:
                if not line.strip():
                    continue
                n += 1
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield n, None, f"not JSON ({exc.msg})"
                    continue
                if not isinstance(obj, dict):
                    yield n, None, "not a JSON object"
                    continue
                yield n, obj, ""
            return
        csv.field_size_limit(16 * 1024 * 1024)
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "text" not in [f.strip().lower() for f in reader.fieldnames]:
            raise ReplayInputError(f"{path}: CSV needs a header with a 'text' column (got {reader.fieldnames})")
        for n, row in enumerate(reader, start=1):
            yield n, {(k or "").strip().lower(): v for k, v in row.items() if k is not None}, ""


def _first(row: dict[str, Any], names: Sequence[str]) -> Any:
    for name in names:
        value = row.get(name)
        if value not in (None, ""):
            return value
    return None


def iter_file_records(
    path: str | Path,
    *,
    source: str | None = None,
    source_type: str = "news",
    encoding: str = "utf-8-sig",
    max_text_chars: int = MAX_TEXT_CHARS,
    on_skip=None,
) -> Iterator[ReplayRecord]:
    """Normalised records of one file, in file order. Unusable rows go to ``on_skip(row, reason)``."""
    p = Path(path)
    if not p.is_file():
        raise ReplayInputError(f"{p}: no such file")
    default_source = source or f"replay:{p.name}"
    try:
        for n, row, problem in _rows(p, encoding):
            if row is None:
                if on_skip:
                    on_skip(n, problem)
                continue
            text = row.get("text")
            tickers = row.get("tickers") or ()
            if isinstance(tickers, str):
                tickers = tickers.replace(",", " ").split()
            try:
                if text is not None and not isinstance(text, str):
                    raise Skip("bad_type", "text must be a string")
                rid = row.get("id")
                if rid in (None, ""):
                    rid = stable_id("replay", p.name, str(n), text or "")
                item = make_item(
                    source=str(row.get("source") or default_source),
                    source_type=str(row.get("source_type") or source_type),
                    text=text,
                    title=row.get("title"),
                    url=row.get("url"),
                    author=row.get("author"),
                    published=_first(row, _TIME_COLUMNS),
                    tickers=tickers if isinstance(tickers, (list, tuple)) else (),
                    item_id_override=str(rid),
                    max_text_chars=max_text_chars,
                )
            except Skip as exc:
                if on_skip:
                    on_skip(n, exc.reason)
                continue
            yield ReplayRecord(n, item, {k: v for k, v in row.items() if k not in _KNOWN})
    except UnicodeDecodeError as exc:
        raise ReplayInputError(f"{p}: not {encoding} ({exc.reason}); pass --encoding latin-1 (or the file's)") from None


def iter_file_items(path: str | Path, **kwargs: Any) -> Iterator[RawItem]:
    """The demo's entry point: normalised RawItems of a CSV/JSONL file (stable ids)."""
    for rec in iter_file_records(path, **kwargs):
        yield rec.item


@dataclass
class ReplayStats:
    produced: int = 0
    skipped: int = 0


class _Pacer:
    """When each item is due: fixed rate, original timestamps / speedup, or as fast as possible."""

    def __init__(self, rate: float | None, speedup: float | None) -> None:
        self.rate = rate
        self.speedup = speedup
        self.start = time.monotonic()
        self.count = 0
        self.first_ts: float | None = None
        self.last_due = self.start

    def due(self, item: RawItem) -> float:
        if self.rate:
            due = self.start + self.count / self.rate
        elif self.speedup and item.published_at is not None:
            ts = item.published_at.timestamp()
            if self.first_ts is None:
                self.first_ts = ts
            due = max(self.last_due, self.start + (ts - self.first_ts) / self.speedup)
        else:
            due = self.last_due
        self.count += 1
        self.last_due = due
        return due


def replay(
    paths: Sequence[str | Path],
    pipeline,
    *,
    rate: float | None = None,
    speedup: float | None = None,
    limit: int | None = None,
    batch_size: int = 500,
    source: str | None = None,
    source_type: str = "news",
    encoding: str = "utf-8-sig",
    progress: bool = True,
    stop: threading.Event | None = None,
) -> ReplayStats:
    """Push the files through ``pipeline`` (publish or dry-run), paced; returns produced/skipped.

    ``stop`` (optional) ends the replay early between items: what was handed over is published.

    Items are batched (up to ``batch_size``) while they are due, so a fast replay publishes big
    acked batches and a paced one publishes each item when its time comes.
    """
    from tqdm import tqdm

    from finsent.ingest.pipeline import Entry

    stats = ReplayStats()
    pacer = _Pacer(rate, speedup)
    produced_before = pipeline.produced
    queued = 0  # items handed to the pipeline (for --limit)
    bar = tqdm(total=limit, unit="item", file=sys.stderr, disable=not progress or None, desc="replay")
    batch: list[Entry] = []
    batch_source = ""

    def flush() -> None:
        nonlocal batch
        if batch:
            before = pipeline.produced
            pipeline.submit(batch_source, batch)
            bar.update(pipeline.produced - before)
            batch = []

    try:
        for path in paths:
            name = Path(path).name
            if (limit is not None and queued >= limit) or (stop is not None and stop.is_set()):
                break

            def skip(row: int, reason: str, _name: str = name) -> None:
                stats.skipped += 1
                pipeline.count_skipped(f"replay:{_name}", reason)
                log.debug("%s row %d skipped: %s", _name, row, reason)

            for rec in iter_file_records(
                path, source=source, source_type=source_type, encoding=encoding,
                max_text_chars=pipeline.max_text_chars, on_skip=skip,
            ):
                if (limit is not None and queued >= limit) or (stop is not None and stop.is_set()):
                    break
                wait = pacer.due(rec.item) - time.monotonic()
                if wait > 0:
                    flush()
                    if stop is not None:
                        if stop.wait(wait):
                            break
                    else:
                        time.sleep(wait)
                if batch and batch_source != f"replay:{name}":
                    flush()
                batch_source = f"replay:{name}"
                pipeline.count_fetched(batch_source, 1)
                batch.append(Entry(rec.item, (f"id:{rec.item.id}",)))
                queued += 1
                if len(batch) >= batch_size:
                    flush()
            flush()
    finally:
        bar.close()
        stats.produced = pipeline.produced - produced_before
    return stats


def replay_to_kafka(settings, paths: Sequence[str | Path], **kwargs: Any) -> ReplayStats:
    """Replay files onto ``settings.topic_raw`` and return when every item is acked (the demo's call).

    No dedup state is used (replays must repeat); keyword arguments are those of :func:`replay`
    (``rate``, ``speedup``, ``limit``, ``stop``, ``source``, ``source_type``, ``encoding``, ``progress``).
    """
    from finsent.ingest.dedup import DedupStore
    from finsent.ingest.pipeline import Pipeline
    from finsent.ingest.publisher import Publisher

    kwargs.setdefault("progress", False)
    with Publisher(settings) as publisher:
        pipeline = Pipeline(publisher=publisher, dedup=DedupStore(None), max_text_chars=settings.max_text_chars,
                            use_dedup=False)
        return replay(paths, pipeline, **kwargs)


__all__ = [
    "ReplayInputError",
    "ReplayRecord",
    "ReplayStats",
    "iter_file_items",
    "iter_file_records",
    "replay",
    "replay_to_kafka",
]
