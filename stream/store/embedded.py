"""``ChdbStore``: ClickHouse embedded in this process (chdb), data in one directory.

Things to know about chdb (4.x, engine 26.x):

* ONE DATA PATH PER PROCESS. chdb runs one embedded server per process; while any session is
  open on path A, opening path B fails. Several stores on the *same* path share it (each gets
  its own session). Tests therefore use one session-wide path with a fresh database per test.
* ONE PROCESS PER PATH. The data directory is locked by the process using it: a second process
  (e.g. ``finsent query`` while a worker runs on the same path) gets a clear
  :class:`~finsent.core.errors.StoreError`. Use a ``clickhouse://`` server when several processes
  must share the data.
* chdb reads a ``config.xml`` from the current directory when it starts, like clickhouse-local;
  do not run finsent from a directory holding a ClickHouse server config.

Parameters are bound by the engine: queries use ClickHouse's ``{name:Type}`` placeholders and the
values travel separately (``params=``), encoded by :func:`encode_param` in the text form
ClickHouse's parameter protocol defines (the same form the HTTP interface uses). Inserts send the
rows as one JSONCompactColumns document bound to a ``{rows:String}`` parameter and read by the
``format()`` table function, so no value is ever part of the SQL text. Every insert is verified
(:meth:`ChdbStore._insert`): a write that did not happen raises.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from finsent.core.errors import ConfigError, StoreDiskFull, StoreError, StoreInUse
from finsent.stream.store.sqlstore import SqlStore, check_written, is_disk_full

# (char, escape) pairs, backslash first; applied with chained str.replace, which runs in C and is
# ~100x faster than a per-character Python loop on multi-megabyte insert documents
_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"), ("\0", "\\0"), ("\b", "\\b"), ("\f", "\\f"))
_QUOTED_ESCAPES = (*_ESCAPES, ("'", "\\'"))
_open_lock = threading.Lock()


def _escape(text: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for char, escaped in pairs:
        if char in text:
            text = text.replace(char, escaped)
    return text


def _quoted(value: Any) -> str:
    """A value inside an Array/Tuple parameter: ClickHouse's quoted text format."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, datetime):
        return "'" + _datetime_text(value) + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_quoted(v) for v in value) + "]"
    return "'" + _escape(str(value), _QUOTED_ESCAPES) + "'"


def _datetime_text(value: datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def encode_param(value: Any) -> str:
    """A Python value as ClickHouse's query-parameter text (escaped format; arrays in quoted form).

    Aware datetimes are sent as UTC ``YYYY-MM-DD hh:mm:ss`` (seconds); bind them to
    ``DateTime('UTC')``. ``None`` is ``\\N`` (NULL for a Nullable type).
    """
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, datetime):
        return _datetime_text(value)
    if isinstance(value, (list, tuple)):
        return _quoted(list(value))
    return _escape(str(value), _ESCAPES)


def _base_type(typ: str) -> str:
    while True:
        for wrapper in ("Nullable(", "LowCardinality("):
            if typ.startswith(wrapper) and typ.endswith(")"):
                typ = typ[len(wrapper) : -1]
                break
        else:
            return typ


def _convert(value: Any, typ: str) -> Any:
    """A JSONCompact value to the Python type clickhouse-driver would return for ``typ``."""
    if value is None:
        return None
    typ = _base_type(typ)
    if typ.startswith("DateTime") and isinstance(value, str):
        text = value[:19]
        ts = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        if len(value) > 20:  # DateTime64 fraction
            ts = ts.replace(microsecond=int((value[20:] + "000000")[:6]))
        return ts
    if typ == "Date" and isinstance(value, str):
        return date.fromisoformat(value)
    if typ.startswith(("UInt", "Int")) and isinstance(value, str):
        return int(value)
    if typ.startswith("Float") and isinstance(value, str):
        return float(value)
    if typ.startswith("Array(") and isinstance(value, list):
        inner = typ[len("Array(") : -1]
        return [_convert(v, inner) for v in value]
    return value


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return int(value.timestamp())
    return value


def _locked_by_another_process(path: str) -> bool:
    """Whether another process holds the data directory (ClickHouse flocks ``<path>/status``).

    Only asked after opening failed: inside this process a second flock on the file would also
    fail, but then chdb shares the open engine instead of failing.
    """
    import fcntl

    try:
        with open(Path(path) / "status", "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
    except OSError:
        return False
    return False


def _lock_holder(path: str) -> int | None:
    """The id of another process that holds the data directory's lock, from ``/proc/locks`` (Linux).

    Asked before opening, so that a path in use is one clear line without chdb printing its own
    ``Cannot lock file`` error first. ``None`` when nobody else holds it or it cannot be told
    (no ``/proc``): then the open itself decides, with chdb's output caught.
    """
    import os

    try:
        st = os.stat(Path(path) / "status")
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == inode and fields[4].isdigit():
            pid = int(fields[4])
            if pid != os.getpid():
                return pid
    return None


def _prepare_dir(path: str) -> None:
    """Create the data directory, or raise :class:`ConfigError` saying why it cannot be one (exit 3,
    like every other bad store URL): a file, a path under a file, a place that cannot be written."""
    import os

    how = "point --store / FINSENT_STORE at a directory you can write: chdb:///path/to/dir (created if missing)"
    target = Path(path)
    try:
        if target.exists() and not target.is_dir():
            raise ConfigError(f"chdb data path {path} is a file, not a directory", hint=how)
        target.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        above = next((str(p) for p in target.parents if p.exists() and not p.is_dir()), None)
        raise ConfigError(
            f"chdb data path {path} is under {above or 'a file'}, which is a file, not a directory", hint=how
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot create the chdb data directory {path}: {exc.strerror or exc}", hint=how) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"chdb data directory {path} is not writable by this user", hint=how)


class _QuietStderr:
    """Redirect file descriptor 2 to a temporary file around a chdb call, then put back what was not chdb's.

    chdb's engine writes its own errors (``Code: 76. DB::Exception: Cannot lock file ...``) straight
    to stderr before Python sees an exception; finsent reports the error itself in one line, so that
    text is kept here (``text``) for the message and not shown. Lines of other origin are written back.
    """

    def __enter__(self) -> _QuietStderr:
        import os
        import sys
        import tempfile

        self.text = ""
        try:
            sys.stderr.flush()
            self._file = tempfile.TemporaryFile()
            self._saved = os.dup(2)
            os.dup2(self._file.fileno(), 2)
        except (OSError, ValueError):  # no fd 2 (a daemon): nothing to hide
            self._saved = None
        return self

    def __exit__(self, *exc: object) -> None:
        import os
        import re
        import sys

        if self._saved is None:
            return
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode("utf-8", "replace")
        self._file.close()
        other = [
            line
            for line in self.text.splitlines()
            if line.strip() and not re.match(r"\s*(Code: \d+\.|.*DB::Exception)", line)
        ]
        if other:
            print("\n".join(other), file=sys.stderr, flush=True)


class ChdbStore(SqlStore):
    """A store on the embedded engine. Create with :func:`stream.store.open_store` (``chdb:///path``)."""

    def __init__(
        self, path: str | Path, database: str = "finsent", *, retention_days: int = 0, url_redacted: str = ""
    ) -> None:
        super().__init__(database, retention_days)
        try:
            self.path = str(Path(path).expanduser().resolve())
        except (OSError, RuntimeError, ValueError) as exc:  # ~nosuchuser, a symlink loop, a NUL byte
            raise ConfigError(
                f"chdb data path {str(path)!r} cannot be used: {exc}",
                hint="use chdb:///absolute/path or chdb://relative/path",
            ) from None
        self.url_redacted = url_redacted or f"chdb://{self.path}?database={database}"
        self._session = None
        _prepare_dir(self.path)
        from chdb import session as chdb_session

        def in_use(holder: int | None) -> StoreInUse:
            who = f"process {holder}" if holder else "another process"
            return StoreInUse(
                f"chdb data path {self.path} is in use by {who} (one process per path)",
                hint="stop that process (e.g. the worker) or use a clickhouse:// server",
            )

        with _open_lock:
            holder = _lock_holder(self.path)
            if holder is not None:
                raise in_use(holder)
            quiet = _QuietStderr()
            try:
                with quiet:
                    self._session = chdb_session.Session(self.path)
            except RuntimeError as exc:
                text = f"{exc}\n{quiet.text}"
                if "different path" in text:
                    raise StoreError(
                        f"chdb can open one data path per process and another one is open: {str(exc).splitlines()[0]} "
                        "-- close the other store first, or use a clickhouse:// server"
                    ) from exc
                if "lock" in text.lower() or "already running" in text or _locked_by_another_process(self.path):
                    raise in_use(None) from exc
                if "Permission denied" in text or "Read-only file system" in text:
                    raise ConfigError(
                        f"chdb cannot write its data directory {self.path}", hint="use a directory this user can write"
                    ) from exc
                raise StoreError(f"chdb could not open {self.path}: {str(exc).splitlines()[0]}") from exc

    def _query(self, sql: str, fmt: str, params: dict[str, Any] | None) -> Any:
        if self._session is None:
            raise StoreError(f"store {self.url_redacted} is closed")
        encoded = {k: encode_param(v) for k, v in (params or {}).items()}
        try:
            return self._session.query(sql, fmt, params=encoded)
        except Exception as exc:  # chdb raises ChdbError / RuntimeError with the server message
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if is_disk_full(str(exc)):
                raise StoreDiskFull(f"chdb ({self.path}): disk full, nothing written: {first}") from exc
            raise StoreError(f"chdb ({self.path}) refused the query: {first}") from exc

    def _select(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        res = self._query(sql, "JSONCompact", params)
        raw = res.bytes() if hasattr(res, "bytes") else bytes(res)
        if not raw.strip():
            return []
        doc = json.loads(raw)
        types = [m["type"] for m in doc.get("meta", [])]
        return [tuple(_convert(v, t) for v, t in zip(row, types, strict=True)) for row in doc.get("data", [])]

    def _command(self, sql: str) -> None:
        self._query(sql, "CSV", None)

    def _insert(self, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[tuple[Any, ...]]) -> None:
        """One verified INSERT: it raises unless the engine wrote every row.

        The rows travel as one JSONCompactColumns document bound to a ``{rows:String}`` parameter
        and read by the ``format()`` table function, never as SQL text. chdb's faster streaming
        ``send_insert`` is *not* used: on a full disk it reports ``rows_written`` and raises nothing
        while the part is never written (measured on a 24 MB tmpfs: 800 rows "written", 120 stored),
        which lost 83% of a run's items with offsets committed (issue 22). This path raises
        ``NOT_ENOUGH_SPACE`` (-> :class:`StoreDiskFull`), and its ``rows_written`` is checked too.
        """
        names = [name for name, _ in columns]
        structure = ", ".join(f"{name} {typ}" for name, typ in columns)
        # One JSON document per batch, column by column (JSONCompactColumns): a single json.dumps
        # call instead of one per row, which is where the time went.
        data = []
        for (_, typ), col in zip(columns, zip(*rows, strict=True), strict=True):
            data.append([_json_value(v) for v in col] if "DateTime" in typ else list(col))
        doc = json.dumps(data, ensure_ascii=False, allow_nan=False)
        # the structure is schema text (constants); the data is a bound parameter
        sql = (
            f"INSERT INTO {table} ({', '.join(names)}) "
            f"SELECT {', '.join(names)} FROM format(JSONCompactColumns, "
            f"'{structure.replace(chr(39), chr(92) + chr(39))}', {{rows:String}})"
        )
        res = self._query(sql, "CSV", {"rows": doc})
        written = res.rows_written() if hasattr(res, "rows_written") else None
        check_written(f"chdb ({self.path})", table, len(rows), written)

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None
