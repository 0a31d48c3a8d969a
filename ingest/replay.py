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

Bad rows are reported, never silently merged or repaired: each one is a :class:`BadRow` with the
file's physical line number where the row starts and a reason code (``not_json``,
``not_object``, ``empty_text``, ``bad_time``, ``bad_type``, ``bad_id``, ``unterminated_quote``,
``csv_error``...); :func:`replay` logs a WARNING ``file:line: skipped: reason (detail)`` for each
(the first :data:`MAX_BAD_ROWS`) and lists them in :attr:`ReplayStats.bad_rows`. A time that
names no real instant (2024-02-30), or none at all, keeps the row with no publication time (the ingesters' one
rule, :func:`finsent.ingest.normalize.read_published`: never rolled over; event time = ingest time), counted in
``finsent_ingest_unparsed_dates_total{source="replay:<file>"}`` with a rate-limited WARNING naming file and line;
one more than 5 min in the future is ``bad_time``. A CSV quote that is never
closed would make the csv module read the rest of the file as one field: that row is reported
as ``unterminated_quote`` at the line where the quote opened, and reading resumes on the line
after it (so one stray quote costs one row, not the rest of the file). So is a quote left open that a
stray quote on a later line closes (``"abc`` ... ``gh"i``: the lines between would silently become one
field); see :func:`_stray_quote` for the one case that cannot be told from a real multi-line field.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from finsent.core.errors import InputError
from finsent.core.events import MAX_TEXT_CHARS, RawItem, stable_id
from finsent.ingest.metrics import unparsed_date_hook
from finsent.ingest.normalize import Skip, make_item

log = logging.getLogger(__name__)

_TIME_COLUMNS = ("published_at", "published", "created_at", "date", "time", "timestamp")
_KNOWN = {"text", "title", "url", "source", "source_type", "author", "tickers", "id", *_TIME_COLUMNS}

#: the largest CSV field read (the csv module's field_size_limit while replaying)
CSV_FIELD_LIMIT = 16 * 1024 * 1024
#: bad rows listed in the summary and logged one by one at WARNING (the rest are counted, at DEBUG)
MAX_BAD_ROWS = 100
#: Longest JSON line read (characters). An item's text is cut at 20,000 characters and a message may
#: not exceed 1 MB, so a longer line cannot be a usable row: it is a bad row (``too_long``), skipped
#: in chunks without ever being held whole (a 50 MB line took the replay to 975 MB before).
MAX_LINE_CHARS = 4 * 1024 * 1024
#: Largest JSON-array file accepted. An array is parsed whole (so it is checked before any row is
#: used), which costs several times its size in memory; larger files must be JSON lines.
MAX_JSON_ARRAY_BYTES = 32 * 1024 * 1024
#: seconds between progress lines on stderr when there is no terminal for the bar (a pod, a pipe, a log file)
PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True)
class ReplayRecord:
    """One input row: its 1-based number (data rows), the item, and the unused columns (label...)."""

    row: int
    item: RawItem
    extras: dict[str, Any] = field(default_factory=dict)


class ReplayInputError(InputError):
    """The file cannot be replayed (missing ``text`` column, unreadable encoding...)."""


@dataclass(frozen=True)
class BadRow:
    """A row that was not replayed: file NAME, physical line where it starts (1-based), why."""

    file: str
    line: int
    reason: str  # a short code, also the metrics label
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"file": self.file, "line": self.line, "reason": self.reason}
        if self.detail:
            d["detail"] = self.detail
        return d

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: skipped: {self.reason}" + (f" ({self.detail})" if self.detail else "")


class _Row(NamedTuple):
    n: int  # data row number (part of the id)
    line: int  # physical line where the row starts
    data: dict[str, Any] | None  # None: unusable, see reason
    reason: str = ""
    detail: str = ""


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def _not_object(obj: Any) -> str:
    return "a JSON null" if obj is None else f"{_JSON_TYPES.get(type(obj), 'not an object')}, not an object"


def _json_array(path: Path, text: str) -> list[tuple[int, Any]]:
    """(line, element) of a JSON array file; the whole file is checked before any row is used."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    out: list[tuple[int, Any]] = []
    line, counted = 1, 0

    def line_at(pos: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    def fail(pos: int, what: str) -> ReplayInputError:
        return ReplayInputError(f"{path}:{line_at(pos)}: not valid JSON ({what})")

    i = ws.match(text, text.index("[") + 1).end()
    if text.startswith("]", i):
        i = ws.match(text, i + 1).end()
    else:
        while True:
            try:
                obj, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError as exc:
                raise ReplayInputError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
            out.append((line_at(i), obj))
            i = ws.match(text, end).end()
            if text.startswith(",", i):
                i = ws.match(text, i + 1).end()
                continue
            if text.startswith("]", i):
                i = ws.match(text, i + 1).end()
                break
            raise fail(i, "expected ',' or ']' after an element")
    if i != len(text):
        raise fail(i, "extra data after the array")
    return out


class _Lines:
    """A text file's physical lines for the csv module, numbered; keeps those of the current record.

    ``hit_end`` says the csv module asked for more input while reading this record and got EOF:
    a record that is complete ends at its newline without that, so this one ended inside a
    quoted field. Lines can be pushed back to be read again (resuming after a bad record).
    """

    def __init__(self, fh: Any) -> None:
        self._fh = iter(fh)
        self._pushed: list[tuple[int, str]] = []  # a stack: the next line to hand out is last
        self._read = 0
        self.record: list[tuple[int, str]] = []
        self.hit_end = False

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self._pushed:
            no, text = self._pushed.pop()
        else:
            try:
                text = next(self._fh)
            except StopIteration:
                self.hit_end = True
                raise
            self._read += 1
            no = self._read
        self.record.append((no, text))
        return text

    def start_record(self) -> None:
        self.record = []
        self.hit_end = False

    def push_back(self, lines: list[tuple[int, str]]) -> None:
        self._pushed.extend(reversed(lines))

    def first_line(self) -> int:
        """Where the current record starts (blank lines the csv module skipped do not count)."""
        for no, text in self.record:
            if text.strip():
                return no
        return self.record[0][0] if self.record else self._read + 1


def _quote_scan(record: list[tuple[int, str]]) -> tuple[int | None, int | None]:
    """One pass of the csv module's non-strict quoting rules over a record's lines: ``(unclosed, stray)``,
    the line indexes that :func:`_unclosed_quote` and :func:`_stray_quote` report (None when absent)."""
    start, in_field, quoted, quote_seen = 0, 1, 2, 3
    state, opened, closed_at, stray = start, 0, 0, None
    for idx, (_, text) in enumerate(record):
        for ch in text:
            if state == start:
                if ch == '"':
                    state, opened = quoted, idx
                elif ch not in ",\r\n":
                    state = in_field
            elif state == in_field:
                if ch in ",\r\n":
                    state = start
            elif state == quoted:
                if ch == '"':
                    state, closed_at = quote_seen, idx
            elif ch == '"':  # a quote inside a quoted field: doubled
                state = quoted
            elif ch in ",\r\n":
                state = start
            else:  # text right after a closing quote
                if stray is None and closed_at > opened:
                    stray = opened
                state = in_field
    return (opened if state == quoted else None), stray


def _unclosed_quote(record: list[tuple[int, str]]) -> int | None:
    """Index in ``record`` of the line where a quote opened that is never closed (excel dialect), else None.

    Mirrors the csv module's non-strict parser: a quote opens a quoted field only at the start of
    a field, ``""`` inside one is a literal quote, and a quote inside an unquoted field is text.
    """
    return _quote_scan(record)[0]


def _stray_quote(record: list[tuple[int, str]]) -> int | None:
    """Index of the line where a quoted field opened that a *stray* quote closed on a later line, else None.

    A quote left open on one row is closed by the next quote in the file, and the csv module then reads
    every line in between as one field: rows silently merged. When the closing quote is followed by
    text (``gh"i``) rather than a delimiter or the end of the line, no well-formed CSV wrote it: that is
    the stray-quote signature. (A stray quote that happens to sit just before a delimiter or a line end
    cannot be told from a real multi-line field; that case is read as one.)
    """
    return _quote_scan(record)[1]


def _csv_rows(path: Path, fh: Any) -> Iterator[_Row]:
    csv.field_size_limit(CSV_FIELD_LIMIT)
    lines = _Lines(fh)
    reader = csv.reader(lines)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ReplayInputError(f"{path}:1: unreadable CSV header ({exc})") from None
    if lines.hit_end and (idx := _unclosed_quote(lines.record)) is not None:
        raise ReplayInputError(f"{path}:{lines.record[idx][0]}: the CSV header has a quote that is never closed")
    fieldnames = [(f or "").strip().lower() for f in header or ()]
    if "text" not in fieldnames:
        raise ReplayInputError(f"{path}: CSV needs a header with a 'text' column (got {header})")
    n = 0
    while True:
        lines.start_record()
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a field over the size limit: an unclosed quote, usually
            n += 1
            idx = _unclosed_quote(lines.record)
            line = lines.record[idx][0] if idx is not None else lines.first_line()
            if idx is not None:
                lines.push_back(lines.record[idx + 1 :])
            yield _Row(n, line, None, "csv_error", str(exc))
            continue
        if not values:  # a blank line (the csv module's empty row), as DictReader skips it
            continue
        n += 1
        if lines.hit_end and (idx := _unclosed_quote(lines.record)) is not None:
            rest = lines.record[idx + 1 :]
            lines.push_back(rest)
            yield _Row(
                n,
                lines.record[idx][0],
                None,
                "unterminated_quote",
                f"a quote opened on this line is never closed; the {len(rest)} line(s) after it are read again as rows",
            )
            continue
        if len(lines.record) > 1 and (idx := _stray_quote(lines.record)) is not None:
            rest = lines.record[idx + 1 :]
            lines.push_back(rest)
            yield _Row(
                n,
                lines.record[idx][0],
                None,
                "unterminated_quote",
                f"a quote opened on this line is closed only by a stray quote {len(rest)} line(s) later; "
                "those lines are read again as rows",
            )
            continue
        row = dict(zip(fieldnames, values, strict=False))  # extra values dropped, missing ones None
        for name in fieldnames[len(values) :]:
            row.setdefault(name, None)
        yield _Row(n, lines.first_line(), row)


def _bounded_lines(fh: Any, limit: int) -> Iterator[str | None]:
    """The file's lines, each read with at most ``limit`` characters held; ``None`` for a longer line,
    whose rest is skipped in chunks of ``limit``."""
    while True:
        line = fh.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or line.endswith("\n"):
            yield line
            continue
        while True:  # the rest of the long line, a chunk at a time
            rest = fh.readline(limit)
            if not rest or rest.endswith("\n"):
                break
        yield None


def _rows(path: Path, encoding: str) -> Iterator[_Row]:
    """Every row of a CSV, JSONL or JSON-array file, with its line; unusable ones with a reason."""
    suffix = path.suffix.lower()
    with path.open("r", encoding=encoding, newline="") as fh:
        if suffix == ".json" and fh.read(64).lstrip().startswith("["):  # a JSON array of objects
            size = path.stat().st_size
            if size > MAX_JSON_ARRAY_BYTES:
                raise ReplayInputError(
                    f"{path} is a JSON array of {size / 2**20:.0f} MiB; arrays over {MAX_JSON_ARRAY_BYTES >> 20} MiB "
                    "are not read whole",
                    hint=f"convert it to JSON lines: jq -c '.[]' {path} > {path.stem}.jsonl",
                )
            fh.seek(0)
            for n, (line, obj) in enumerate(_json_array(path, fh.read()), start=1):
                if isinstance(obj, dict):
                    yield _Row(n, line, obj)
                else:
                    yield _Row(n, line, None, "not_object", _not_object(obj))
            return
        fh.seek(0)
        if suffix in (".jsonl", ".ndjson", ".json"):
            n = 0
            for line_no, line in enumerate(_bounded_lines(fh, MAX_LINE_CHARS), start=1):
                if line is None:
                    n += 1
                    yield _Row(
                        n,
                        line_no,
                        None,
                        "too_long",
                        f"line longer than {MAX_LINE_CHARS:,} characters (no item is that long)",
                    )
                    continue
                if not line.strip():
                    continue
                n += 1
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield _Row(n, line_no, None, "not_json", f"{exc.msg} at column {exc.colno}")
                    continue
                if not isinstance(obj, dict):
                    yield _Row(n, line_no, None, "not_object", _not_object(obj))
                    continue
                yield _Row(n, line_no, obj)
            return
        yield from _csv_rows(path, fh)


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
    on_skip: Callable[[int, str], None] | None = None,
    on_bad_row: Callable[[BadRow], None] | None = None,
    on_unparsed_date: Callable[[str], None] | None = None,
) -> Iterator[ReplayRecord]:
    """Normalised records of one file, in file order.

    Unusable rows go to ``on_bad_row(BadRow)`` (line, reason code, detail) and to
    ``on_skip(row number, reason code)``; a row kept with an unreadable date, to
    ``on_unparsed_date("file:line: why")``.
    """
    p = Path(path)
    if not p.is_file():
        raise ReplayInputError(f"{p}: no such file")
    default_source = source or f"replay:{p.name}"

    def bad(n: int, line: int, reason: str, detail: str) -> None:
        if on_bad_row:
            on_bad_row(BadRow(p.name, line, reason, detail))
        if on_skip:
            on_skip(n, reason)

    try:
        for n, line, row, problem, detail in _rows(p, encoding):
            if row is None:
                bad(n, line, problem, detail)
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
                    on_unparsed_date=(
                        None
                        if on_unparsed_date is None
                        else lambda why, line=line: on_unparsed_date(f"{p.name}:{line}: {why}")
                    ),
                )
            except Skip as exc:
                bad(n, line, exc.reason, exc.detail)
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
    """``produced``: items the broker acknowledged (or printed, dry-run); ``skipped``: bad rows,
    of which the first :data:`MAX_BAD_ROWS` are in ``bad_rows`` (dicts: file, line, reason, detail)."""

    produced: int = 0
    skipped: int = 0
    bad_rows: list[dict[str, Any]] = field(default_factory=list)


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


class _ReplayRun:
    """The state one :func:`replay` call shares between its steps: the open batch, the counts, the progress.

    A class rather than closures so each step (pace, batch, flush, show) is a method a reader can take in
    alone; the order of the calls, and so what is published when, is :func:`replay`'s and :meth:`file`'s.
    """

    def __init__(
        self,
        pipeline: Any,
        stats: ReplayStats,
        pacer: _Pacer,
        *,
        limit: int | None,
        batch_size: int,
        progress: bool,
        stop: threading.Event | None,
    ) -> None:
        from tqdm import tqdm

        from finsent.ingest.pipeline import Entry

        self.entry = Entry  # imported here, not at module level, like tqdm: replay's import stays light
        self.pipeline = pipeline
        self.stats = stats
        self.pacer = pacer
        self.limit = limit
        self.batch_size = batch_size
        self.progress = progress
        self.stop = stop
        self.produced_before = pipeline.produced
        self.queued = 0  # items handed to the pipeline (for --limit)
        self.bar = tqdm(total=limit, unit="item", file=sys.stderr, disable=not progress or None, desc="replay")
        self.batch: list[Any] = []  # Entry
        self.batch_source = ""
        # without a terminal tqdm draws nothing: then one line every PROGRESS_EVERY_S (rows read, published, bad)
        self.lines = progress and self.bar.disable
        self.last_line = time.monotonic()

    def done(self) -> bool:
        """``--limit`` reached or ``stop`` set: nothing more is read (what was handed over is still published)."""
        return (self.limit is not None and self.queued >= self.limit) or (self.stop is not None and self.stop.is_set())

    def show(self, final: bool = False) -> None:
        """Progress: the bar's postfix on a terminal, else a line on stderr at most every PROGRESS_EVERY_S."""
        now = time.monotonic()
        if not self.progress or (not final and now - self.last_line < PROGRESS_EVERY_S):
            return
        self.last_line = now
        stats = self.stats
        read, published = self.queued + stats.skipped, self.pipeline.produced - self.produced_before
        if self.lines:
            print(
                f"replay: {read} rows read, {published} published, {stats.skipped} bad" + (" (done)" if final else ""),
                file=sys.stderr,
                flush=True,
            )
        else:
            self.bar.set_postfix(read=read, bad=stats.skipped, refresh=False)

    def on_bad_row(self, bad: BadRow) -> None:
        """A row the reader refused: counted, listed, logged (:func:`_report`), and shown in the progress."""
        _report(bad, self.stats, self.pipeline)
        self.show()

    def flush(self) -> None:
        """Publish the open batch (the pipeline returns once the broker acked it) and advance the bar."""
        if self.batch:
            before = self.pipeline.produced
            self.pipeline.submit(self.batch_source, self.batch)
            self.bar.update(self.pipeline.produced - before)
            self.batch = []

    def wait_until_due(self, item: RawItem) -> bool:
        """Sleep until ``item`` is due, publishing the open batch first (a paced item must not wait for the
        next one). True when ``stop`` was set during the wait."""
        wait = self.pacer.due(item) - time.monotonic()
        if wait > 0:
            self.flush()
            if self.stop is not None:
                if self.stop.wait(wait):
                    return True
            else:
                time.sleep(wait)
        return False

    def add(self, item: RawItem, batch_source: str) -> None:
        """Queue one item; a batch holds one source only (its metrics label) and is published when full."""
        if self.batch and self.batch_source != batch_source:
            self.flush()
        self.batch_source = batch_source
        self.pipeline.count_fetched(batch_source, 1)
        self.batch.append(self.entry(item, (f"id:{item.id}",)))
        self.queued += 1
        if len(self.batch) >= self.batch_size:
            self.flush()
        self.show()

    def file(self, path: str | Path, name: str, *, source: str | None, source_type: str, encoding: str) -> None:
        """Replay one file, paced, until it ends, ``--limit`` is reached or ``stop`` is set; then publish
        what is still batched."""
        for rec in iter_file_records(
            path,
            source=source,
            source_type=source_type,
            encoding=encoding,
            max_text_chars=self.pipeline.max_text_chars,
            on_bad_row=self.on_bad_row,
            on_unparsed_date=unparsed_date_hook(self.pipeline.metrics, f"replay:{name}"),
        ):
            if self.done() or self.wait_until_due(rec.item):
                break
            self.add(rec.item, f"replay:{name}")
        self.flush()


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
    stats: ReplayStats | None = None,
) -> ReplayStats:
    """Push the files through ``pipeline`` (publish or dry-run), paced; returns produced/skipped/bad rows.

    ``stop`` (optional) ends the replay early between items: what was handed over is published.
    ``stats`` (optional) is filled in place, so a caller still has the counts when a publish
    fails (:class:`~finsent.ingest.publisher.PublishError`): ``produced`` counts acked items only.

    Items are batched (up to ``batch_size``) while they are due, so a fast replay publishes big
    acked batches and a paced one publishes each item when its time comes.

    ``progress``: a bar on a terminal; elsewhere (a pod's log, a pipe) a line on stderr every
    :data:`PROGRESS_EVERY_S` seconds and one at the end: ``replay: R rows read, P published, B bad``.
    """
    stats = stats if stats is not None else ReplayStats()
    pacer = _Pacer(rate, speedup)
    run = _ReplayRun(pipeline, stats, pacer, limit=limit, batch_size=batch_size, progress=progress, stop=stop)
    try:
        for path in paths:
            name = Path(path).name
            if run.done():
                break
            run.file(path, name, source=source, source_type=source_type, encoding=encoding)
        run.show(final=True)
    finally:
        run.bar.close()
        stats.produced = pipeline.produced - run.produced_before
    return stats


def _report(bad: BadRow, stats: ReplayStats, pipeline: Any) -> None:
    stats.skipped += 1
    pipeline.count_skipped(f"replay:{bad.file}", bad.reason)
    if len(stats.bad_rows) < MAX_BAD_ROWS:
        stats.bad_rows.append(bad.to_dict())
    if stats.skipped <= MAX_BAD_ROWS:
        log.warning("%s", bad)
        if stats.skipped == MAX_BAD_ROWS:
            log.warning("%d bad rows so far: further ones are logged at DEBUG and counted in 'skipped'", MAX_BAD_ROWS)
    else:
        log.debug("%s", bad)


def replay_to_kafka(settings, paths: Sequence[str | Path], **kwargs: Any) -> ReplayStats:
    """Replay files onto ``settings.kafka.topic_raw`` and return when every item is acked (the demo's call).

    No dedup state is used (replays must repeat); keyword arguments are those of :func:`replay`
    (``rate``, ``speedup``, ``limit``, ``stop``, ``source``, ``source_type``, ``encoding``, ``progress``).
    """
    from finsent.ingest.dedup import DedupStore
    from finsent.ingest.pipeline import Pipeline
    from finsent.ingest.publisher import Publisher

    kwargs.setdefault("progress", False)
    with Publisher(settings) as publisher:
        pipeline = Pipeline(
            publisher=publisher, dedup=DedupStore(None), max_text_chars=settings.model.max_text_chars, use_dedup=False
        )
        return replay(paths, pipeline, **kwargs)


__all__ = [
    "MAX_BAD_ROWS",
    "PROGRESS_EVERY_S",
    "BadRow",
    "ReplayInputError",
    "ReplayRecord",
    "ReplayStats",
    "iter_file_items",
    "iter_file_records",
    "replay",
    "replay_to_kafka",
]
