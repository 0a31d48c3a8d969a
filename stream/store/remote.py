"""``RemoteStore``: the Store protocol through the worker that holds an embedded store.

Why: chdb allows one process per data path. While ``finsent worker`` holds ``chdb:///path``, the other
commands reach the same data through the worker's ``POST /v1/store/call`` (see
:mod:`~finsent.stream.store.owner`): each method call is sent as tagged JSON
(:mod:`~finsent.stream.store.rpc_codec`), run by the worker on its own store object, and its result or
error comes back. :func:`~finsent.stream.store.open_store` returns one by itself when the store is in use,
so no command needs to know the worker's port.

Errors keep their class (a disk-full insert is :class:`StoreDiskFull` here too); a worker that does not
answer is one :class:`StoreInUse` line naming its pid and what to do.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from finsent.core import errors
from finsent.core.errors import FinsentError, StoreInUse
from finsent.stream.store import rpc_codec
from finsent.stream.store.owner import CALL_PATH, METHODS

#: rows per call of an insert method: keeps each request far below the worker's body limit
CHUNK_ROWS = 2000
_INSERTS = {"insert_scored", "insert_alerts", "insert_labels", "insert_score_history"}
#: the error classes a worker's answer may name (anything else is a StoreError)
_ERRORS: dict[str, type[FinsentError]] = {
    name: cls for name, cls in vars(errors).items() if isinstance(cls, type) and issubclass(cls, FinsentError)
}


def api_base(host: str | None, port: int) -> str:
    """The URL a local command reaches a worker's API at (a wildcard bind is reached on loopback)."""
    if host in (None, "", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in str(host) else f"http://{host}:{port}"


class RemoteStore:
    """A Store whose calls run in the worker (pid ``owner["pid"]``) that holds ``path``'s embedded store."""

    def __init__(
        self, path: str, database: str, owner: dict[str, Any], *, token: str | None = None, timeout_s: float = 300.0
    ) -> None:
        self.path = path
        self.pid = int(owner["pid"])
        self.owner = owner
        self._database = database
        self._token = token
        self.timeout_s = timeout_s
        if not owner.get("port"):
            raise StoreInUse(
                f"the embedded store at {path} is held by worker pid {self.pid}, which serves no API "
                "(FINSENT_METRICS_PORT=0)",
                hint="run that worker with FINSENT_METRICS_PORT set (default 9464), or stop it "
                f"(kill -TERM {self.pid}) while this command runs",
            )
        if owner.get("token") and not token:
            raise StoreInUse(
                f"the embedded store at {path} is held by worker pid {self.pid}, whose API needs a "
                "token, and FINSENT_API_TOKEN is not set here",
                hint="set FINSENT_API_TOKEN to the worker's token",
            )
        self.base = api_base(owner.get("host"), int(owner["port"]))
        info = self._call("__describe__")
        self.url_redacted: str = f"{info['url_redacted']} (through worker pid {self.pid})"
        self.database: str = info["database"]
        self.retention_days: int = int(info.get("retention_days") or 0)
        self._version_text: str = info["version_text"]

    @property
    def capabilities(self) -> Any:
        from finsent.stream.store.schema import Capabilities

        return Capabilities.parse(self._version_text)

    def _who(self) -> str:
        return f"the embedded store at {self.path} is held by worker pid {self.pid}"

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        body = rpc_codec.dumps({"method": method, "args": list(args), "kwargs": kwargs, "database": self._database})
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(self.base + CALL_PATH, data=body, headers=headers, method="POST")
        write = method in _INSERTS
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                answer = json.loads(raw)
            except ValueError:
                answer = {}
            message = answer.get("error") if isinstance(answer, dict) else None
            if exc.code in (401, 403):
                raise StoreInUse(
                    f"{self._who()}, whose API refused this command (HTTP {exc.code}: {message})",
                    hint="set FINSENT_API_TOKEN to the worker's token",
                ) from None
            if exc.code == 404:
                raise StoreInUse(
                    f"{self._who()}, whose API has no {CALL_PATH} (an older finsent)",
                    hint=f"restart that worker with this finsent, or stop it (kill -TERM {self.pid}) "
                    "while this command runs",
                ) from None
            cls = _ERRORS.get(str(answer.get("type") if isinstance(answer, dict) else ""), errors.StoreError)
            raise cls(
                f"{message or f'HTTP {exc.code}'} (in worker pid {self.pid})",
                hint=answer.get("hint") if isinstance(answer, dict) else None,
            ) from None
        except (OSError, ValueError) as exc:  # refused, reset, timed out
            reason = getattr(exc, "reason", None) or exc
            after = (
                (
                    " -- the write may or may not have happened; running the command again is safe "
                    "(the store's writes are idempotent)"
                )
                if write
                else ""
            )
            raise StoreInUse(
                f"{self._who()}, whose API at {self.base} did not answer ({reason}){after}",
                hint=f"check that worker's log; if it is stuck, stop it (kill -TERM {self.pid}) and "
                "run this command again",
            ) from None
        answer = rpc_codec.loads(raw)
        return answer["result"]

    def _insert(self, method: str, rows: Sequence[Any], **kwargs: Any) -> int:
        total = 0
        for i in range(0, len(rows), CHUNK_ROWS):
            total += int(self._call(method, list(rows[i : i + CHUNK_ROWS]), **kwargs) or 0)
        return total

    def insert_scored(self, items: Sequence[Any], **kwargs: Any) -> int:
        return self._insert("insert_scored", items, **kwargs)

    def insert_alerts(self, alerts: Sequence[Any]) -> int:
        return self._insert("insert_alerts", alerts)

    def insert_labels(self, labels: Sequence[Any]) -> int:
        return self._insert("insert_labels", labels)

    def insert_score_history(self, rows: Sequence[Any]) -> int:
        return self._insert("insert_score_history", rows)

    def ensure_schema(self) -> None:
        self._call("ensure_schema")

    def __getattr__(self, name: str) -> Any:
        if name in METHODS:

            def call(*args: Any, **kwargs: Any) -> Any:
                return self._call(name, *args, **kwargs)

            call.__name__ = name
            return call
        raise AttributeError(f"{type(self).__name__} has no {name!r}; store calls served: {', '.join(sorted(METHODS))}")

    def close(self) -> None:
        """Nothing to close: the worker keeps its store."""

    def __enter__(self) -> RemoteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["RemoteStore", "api_base"]


def through_owner(path: str, database: str, cause: Exception, *, api_token: str | None = None) -> Any:
    """What :func:`~finsent.stream.store.open_store` returns for an embedded store another process holds:
    a :class:`RemoteStore` to the worker that recorded itself as its owner; in a worker, or when no live
    worker recorded itself, the one-line :class:`StoreInUse` that says what to do."""
    import logging
    import os
    from pathlib import Path

    from finsent.stream.store.owner import is_worker, read_owner, second_worker_line

    try:
        resolved = str(Path(path).expanduser().resolve())
    except (OSError, RuntimeError, ValueError):
        resolved = path
    owner = read_owner(resolved)
    if is_worker():
        raise StoreInUse(second_worker_line(resolved, owner["pid"] if owner else None), hint="") from None
    if owner is None:
        raise cause
    token = api_token if api_token is not None else (os.environ.get("FINSENT_API_TOKEN") or None)
    store = RemoteStore(resolved, database, owner, token=token)
    logging.getLogger("finsent.stream.store").info("using the running worker (pid %d) that holds the store", store.pid)
    return store


__all__ += ["through_owner"]
