"""A watchlist: the entities a desk cares about, with optional per-entity thresholds, reloaded without a restart.

**File** (no YAML: one entity per line, so a diff shows what changed). Either CSV with a header, or JSON lines::

    entity,score,min_novel_negative,min_sources      {"entity": "AAPL"}
    AAPL,,,                                           {"entity": "X:BTC", "score": 6}
    X:BTC,6,,                                         {"name": "Genesis", "min_novel_negative": 3}
    Genesis,,3,

The entity column may be called ``entity``, ``id``, ``ticker`` or ``name``; its value may be an entity id
(``AAPL``, ``X:BTC``), a bare ticker (``BTC`` matches ``X:BTC``) or a name (matched after the linker's
normalisation, so ``"Genesis Global Ltd."`` matches the unlinked ``genesis global``). Every other column is a
:class:`~finsent.alerts.entity_detector.Thresholds` field; an empty cell keeps the default. Blank lines and
lines starting with ``#`` are skipped. The format is chosen by extension (``.csv``; ``.jsonl``/``.ndjson``/
``.json``) and, without one, by the first character (``{``: JSON lines).

**Modes** (``EntityDetector(watch_mode=...)``): ``all`` ignores the list; ``only`` alerts on listed entities
only; ``wider`` alerts on every entity but holds unlisted ones to stricter thresholds.

**Reload.** :meth:`Watchlist.lookup` checks the file's mtime and size at most every ``check_interval_s`` and
reloads when they change. A file that is broken (or gone) on reload keeps the last good list, logs one ERROR
naming the line, and counts it in :attr:`Watchlist.reload_errors`: an edit in progress must not stop alerting.
A broken file at start is a :class:`~finsent.core.errors.ConfigError` that says which line to fix.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finsent.core.errors import ConfigError
from finsent.models.linking import normalise_name

log = logging.getLogger(__name__)

ENTITY_COLUMNS = ("entity", "id", "ticker", "name")
#: the per-entity threshold columns, with the type each must parse as
THRESHOLD_COLUMNS: dict[str, type] = {
    "score": float,
    "min_novel_negative": float,
    "min_sources": int,
    "min_ratio": float,
    "min_negative_share": float,
}


@dataclass(frozen=True, slots=True)
class WatchEntry:
    """One watched entity: how it was written in the file, and the thresholds it overrides."""

    entity: str
    overrides: dict[str, float | int]
    line: int


def _keys(value: str) -> list[str]:
    """Every key a written entity can be found under: as written, its bare symbol, its normalised name."""
    v = value.strip().casefold()
    out = [v]
    if ":" in v:
        out.append(v.split(":", 1)[1])
    n = normalise_name(value)
    if n and n not in out:
        out.append(n)
    return out


def _parse_rows(path: Path, raw: str) -> list[tuple[int, dict[str, Any]]]:
    ext = path.suffix.casefold()
    first = next((ln.strip() for ln in raw.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
    as_json = ext in (".jsonl", ".ndjson", ".json") or (ext != ".csv" and first.startswith("{"))
    rows: list[tuple[int, dict[str, Any]]] = []
    if as_json:
        for no, line in enumerate(raw.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise ConfigError(f"{path}:{no}: not JSON ({exc})", hint="one JSON object per line") from None
            if not isinstance(obj, dict):
                raise ConfigError(f"{path}:{no}: a JSON line must be an object", hint='e.g. {"entity": "AAPL"}')
            rows.append((no, obj))
        return rows
    lines = [(no, ln) for no, ln in enumerate(raw.splitlines(), 1) if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        return rows
    reader = csv.DictReader(io.StringIO("\n".join(ln for _, ln in lines)))
    header = [h.strip().casefold() for h in reader.fieldnames or ()]
    reader.fieldnames = header
    for (no, _), row in zip(lines[1:], reader, strict=False):
        if None in row:
            raise ConfigError(f"{path}:{no}: more cells than the header has columns", hint="quote names with commas")
        rows.append((no, row))
    return rows


def _entry(path: Path, no: int, obj: dict[str, Any]) -> WatchEntry:
    obj = {str(k).strip().casefold(): v for k, v in obj.items()}
    unknown = sorted(set(obj) - set(ENTITY_COLUMNS) - set(THRESHOLD_COLUMNS))
    if unknown:
        raise ConfigError(
            f"{path}:{no}: unknown column(s) {', '.join(unknown)}",
            hint=f"use one of {', '.join(ENTITY_COLUMNS)} and {', '.join(THRESHOLD_COLUMNS)}",
        )
    entity = next((obj[c] for c in ENTITY_COLUMNS if isinstance(obj.get(c), str) and obj[c].strip()), None)
    if entity is None:
        raise ConfigError(f"{path}:{no}: no entity", hint=f"give one of the columns {', '.join(ENTITY_COLUMNS)}")
    overrides: dict[str, float | int] = {}
    for col, kind in THRESHOLD_COLUMNS.items():
        value = obj.get(col)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        try:
            parsed = kind(float(value)) if kind is int and float(value).is_integer() else kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}:{no}: {col}={value!r} is not a {kind.__name__}") from None
        if isinstance(value, bool) or parsed < 0 or (col == "min_negative_share" and parsed > 1):
            raise ConfigError(
                f"{path}:{no}: {col}={value!r} is out of range",
                hint="thresholds are >= 0; min_negative_share is a share in [0, 1]",
            )
        overrides[col] = parsed
    return WatchEntry(entity.strip(), overrides, no)


def load_entries(path: str | os.PathLike[str]) -> list[WatchEntry]:
    """Parse a watchlist file (the module docstring gives the format); ConfigError names the bad line."""
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read watchlist {p}: {exc}", hint="check the path given as the watchlist") from None
    return [_entry(p, no, obj) for no, obj in _parse_rows(p, raw)]


class Watchlist:
    """A watchlist file, matched against entity ids and names, reloaded when the file changes."""

    def __init__(self, path: str | os.PathLike[str], check_interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.check_interval_s = check_interval_s
        #: reloads that failed (the last good list stayed in force)
        self.reload_errors = 0
        self.reloads = 0
        self._stamp = self._stat()
        self._index = self._build(load_entries(self.path))
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    @staticmethod
    def _build(entries: list[WatchEntry]) -> dict[str, WatchEntry]:
        index: dict[str, WatchEntry] = {}
        for e in entries:
            for k in _keys(e.entity):
                index.setdefault(k, e)  # the first line that names a key wins
        return index

    def __len__(self) -> int:
        return len({id(e) for e in self._index.values()})

    def entries(self) -> list[WatchEntry]:
        return sorted({id(e): e for e in self._index.values()}.values(), key=lambda e: e.line)

    def maybe_reload(self, force: bool = False) -> bool:
        """Reload if the file's mtime or size changed; True when a new list is in force."""
        now = time.monotonic()
        if not force and now - self._checked < self.check_interval_s:
            return False
        self._checked = now
        stamp = self._stat()
        if stamp == self._stamp and not force:
            return False
        self._stamp = stamp
        if stamp is None:
            self.reload_errors += 1
            log.error("watchlist %s is gone; keeping the %d entities loaded before", self.path, len(self))
            return False
        try:
            self._index = self._build(load_entries(self.path))
        except ConfigError as exc:
            self.reload_errors += 1
            log.error("watchlist not reloaded, keeping the last good one: %s", exc.one_line())
            return False
        self.reloads += 1
        log.info("watchlist %s reloaded: %d entities", self.path, len(self))
        return True

    def lookup(self, entity_id: str | None, name: str) -> WatchEntry | None:
        """The entry that names this entity (by id, bare symbol or name), or None when it is not watched."""
        self.maybe_reload()
        candidates: list[str] = []
        if entity_id:
            candidates += _keys(entity_id)[:2]
        if name:
            candidates += [name.strip().casefold(), normalise_name(name)]
        for k in candidates:
            e = self._index.get(k)
            if e is not None:
                return e
        return None

    def __contains__(self, key: tuple[str | None, str]) -> bool:
        return self.lookup(*key) is not None


__all__ = ["ENTITY_COLUMNS", "THRESHOLD_COLUMNS", "WatchEntry", "Watchlist", "load_entries"]
