"""Who holds an embedded store, and the worker's ``POST /v1/store/call`` that lets other commands use it.

Why: chdb allows one process per data path, so while ``finsent worker`` runs on ``chdb://``, every other
command that opens the store (``label``, ``drift``, ``rescore``, ``alerts watch``, ``query`` ...) would
fail with "in use". Instead:

* the worker that owns an embedded store records itself in :data:`OWNER_FILE` inside the data
  directory (pid, API host and port, whether a token is needed; see :func:`record`), removed when it stops;
  a file whose pid is dead is ignored (:func:`read_owner`);
* its API serves :data:`CALL_PATH`, which runs one whitelisted Store method (:data:`METHODS`) on the
  worker's own store object (so writes keep their guarantees: idempotent, verified inserts under the
  store's lock), with arguments and result in :mod:`~finsent.stream.store.rpc_codec`'s tagged JSON;
* :func:`~finsent.stream.store.open_store`, told "in use", reads the owner file and returns a
  :class:`~finsent.stream.store.remote.RemoteStore` to it, so every command works unchanged. A second
  *worker* (:func:`mark_worker`) never does: it gets one line saying it needs a ``clickhouse://`` store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finsent.core.errors import FinsentError, StoreError, StoreInUse

log = logging.getLogger(__name__)

#: the owner record, inside the chdb data directory (ClickHouse ignores files it does not know there)
OWNER_FILE = "finsent-owner.json"
CALL_PATH = "/v1/store/call"
#: the largest store call body the worker reads (a label import or a rescore page is far below)
MAX_CALL_BYTES = 64 * 1024 * 1024

#: Store methods a command may run through the owner: the Store protocol and the SqlStore queries the
#: commands call (reads, and the idempotent verified writes). ``close`` is the caller's own; DDL other
#: than the idempotent ``ensure_schema`` is not here, and ``query`` takes read statements only.
METHODS: frozenset[str] = frozenset(
    {
        # Store protocol
        "ensure_schema",
        "insert_scored",
        "insert_alerts",
        "count",
        "topic_counts",
        "top_negative",
        "alerts",
        "query",
        "insert_labels",
        "labels",
        "items_by_id",
        "label_queue",
        "model_version_counts",
        "prediction_stats",
        # SqlStore: entities, listings, rescore, registry mirror
        "topic_minute_counts",
        "entity_exists",
        "entity_series",
        "top_entities",
        "entity_stories",
        "list_items",
        "mention_history",
        "rescore_page",
        "rescore_total",
        "insert_score_history",
        "compare_versions",
        "score_versions",
        "sync_model_versions",
        "model_versions",
        "topic_alert_evidence",  # issue 25: a stored topic alert's headlines and model version
    }
)
_READ_SQL = re.compile(
    r"^\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*(select|with|show|describe|desc|explain|exists)\b", re.IGNORECASE | re.DOTALL
)

_is_worker = False
_NOT_OPEN = "the worker has not opened its store yet; retry in a few seconds"


def mark_worker(store_url: str | None = None) -> None:
    """This process is ``finsent worker``: a store held by another process is an error, never a RemoteStore.

    With ``store_url``, an embedded store that a live worker recorded itself for is refused now, in one line,
    before this worker binds its metrics port (the same default port would fail first, and say less).
    """
    global _is_worker
    _is_worker = True
    if not store_url or not store_url.startswith("chdb://"):
        return
    from finsent.stream.store import parse_chdb_url

    try:
        path = str(Path(parse_chdb_url(store_url)["path"]).expanduser().resolve())
    except (FinsentError, OSError, RuntimeError, ValueError):
        return  # a bad URL is reported by the open itself
    rec = read_owner(path)
    if rec is not None and rec["pid"] != os.getpid():
        raise StoreInUse(second_worker_line(path, rec["pid"]), hint="")


def second_worker_line(path: str, pid: int | None) -> str:
    who = f"worker pid {pid}" if pid else "another process"
    return (
        f"the embedded store at {path} is held by {who}; a second worker needs a clickhouse:// store "
        "-- see `finsent worker --help`"
    )


def is_worker() -> bool:
    return _is_worker


def owner_path(data_path: str | Path) -> Path:
    return Path(data_path) / OWNER_FILE


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a permission error means it does, under another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_owner(data_path: str | Path) -> dict[str, Any] | None:
    """The live owner record of ``data_path`` (``pid``, ``host``, ``port``, ``token``...), or None when
    there is none, it is unreadable, or its process is gone (a worker killed with SIGKILL leaves it)."""
    try:
        rec = json.loads(owner_path(data_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("pid"), int) or not pid_alive(rec["pid"]):
        return None
    return rec


class OwnerRecord:
    """The file :func:`record` wrote; :meth:`remove` deletes it (only if it is still this process's)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def remove(self) -> None:
        rec = None
        with contextlib.suppress(OSError, ValueError):
            rec = json.loads(self.path.read_text(encoding="utf-8"))
        if isinstance(rec, dict) and rec.get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                self.path.unlink()


def record(store: Any, server: Any, token: str | None) -> OwnerRecord | None:
    """Write the owner file when ``store`` is an embedded (chdb) one; None otherwise or when it cannot be
    written (logged: commands then say the store is in use). ``server`` is the API server (None: API off)."""
    data_path = getattr(store, "path", None)
    if type(store).__name__ != "ChdbStore" or not data_path:
        return None
    host, port = None, None
    if server is not None:
        host, port = str(server.server_address[0]), int(server.server_address[1])
    rec = {
        "pid": os.getpid(),
        "host": host,
        "port": port,
        "token": bool(token),
        "database": getattr(store, "database", None),
        "path": str(data_path),
    }
    target = owner_path(data_path)
    tmp = target.with_name(f".{OWNER_FILE}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(rec), encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        log.warning("cannot record this worker in %s (%s): other commands will find the store in use", target, exc)
        return None
    return OwnerRecord(target)


def _check_call(method: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    if method not in METHODS:
        raise StoreError(f"store method {method!r} is not served; served: {', '.join(sorted(METHODS))}")
    if method == "query":
        sql = args[0] if args else kwargs.get("sql")
        # one statement: a ';' followed by more text could carry a second, writing one (values are bound parameters,
        # so a query never needs a literal ';')
        if not isinstance(sql, str) or not _READ_SQL.match(sql) or sql.strip().rstrip(";").count(";"):
            raise StoreError("store call query takes one read statement (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN)")


def call_route(store_getter: Callable[[], Any]) -> Callable[[bytes], tuple[int, bytes]]:
    """The handler of ``POST /v1/store/call`` (body -> status, JSON body), run on the worker's store.

    A call for another database of the same data path (tests keep one path, a database each) runs on a
    store this process opens on that database (chdb: several stores on one path share it), kept open.
    """
    from finsent.stream.store import rpc_codec

    others: dict[str, Any] = {}
    lock = threading.Lock()

    def target(database: str | None) -> Any:
        store = store_getter()
        if store is None or database in (None, getattr(store, "database", None)):
            return store
        with lock:
            if database not in others:
                from finsent.stream.store.embedded import ChdbStore

                other = ChdbStore(store.path, database, retention_days=getattr(store, "retention_days", 0))
                other.ensure_schema()
                others[database] = other
            return others[database]

    def run(body: bytes) -> tuple[int, bytes]:
        try:
            req = rpc_codec.loads(body)
            if not isinstance(req, dict) or not isinstance(req.get("method"), str):
                raise rpc_codec.CodecError('a store call is {"method": NAME, "args": [...], "kwargs": {...}}')
            method, args, kwargs = req["method"], req.get("args") or [], req.get("kwargs") or {}
            if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
                raise rpc_codec.CodecError("args must be an array and kwargs an object")
            if method == "__describe__":
                store = target(req.get("database"))
                if store is None:
                    return 503, _error(_NOT_OPEN, "StoreUnavailable")
                return 200, rpc_codec.dumps(
                    {
                        "result": {
                            "database": store.database,
                            "url_redacted": store.url_redacted,
                            "pid": os.getpid(),
                            "version_text": store.capabilities.version_text,
                            "retention_days": store.retention_days,
                        }
                    }
                )
            _check_call(method, list(args), kwargs)
        except (FinsentError, TypeError) as exc:
            return 400, _error(str(exc), type(exc).__name__)
        store = target(req.get("database"))
        if store is None:
            return 503, _error(_NOT_OPEN, "StoreUnavailable")
        try:
            result = getattr(store, method)(*args, **kwargs)
            return 200, rpc_codec.dumps({"result": result})
        except FinsentError as exc:  # the store's own answer (in use, disk full, bad SQL): the caller re-raises it
            return 500, _error(str(exc), type(exc).__name__, getattr(exc, "hint", None))
        except (TypeError, ValueError, KeyError) as exc:  # the caller's arguments
            return 400, _error(f"store call {method}: {type(exc).__name__}: {exc}", "InputError")

    return run


def call_routes(store_getter: Callable[[], Any]) -> dict[str, Callable[[bytes], tuple[int, bytes]]]:
    """The POST routes a worker serves (``serve_metrics(post_routes=...)``): :data:`CALL_PATH`."""
    return {CALL_PATH: call_route(store_getter)}


def _error(message: str, kind: str, hint: str | None = None) -> bytes:
    return json.dumps({"error": message, "type": kind, "hint": hint}, ensure_ascii=False).encode()


__all__ = [
    "CALL_PATH",
    "METHODS",
    "OWNER_FILE",
    "OwnerRecord",
    "call_route",
    "call_routes",
    "is_worker",
    "mark_worker",
    "pid_alive",
    "read_owner",
    "record",
]
