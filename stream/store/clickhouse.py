"""``ClickHouseStore``: a ClickHouse server over the native protocol (clickhouse-driver).

Works with servers from Debian's 18.16 to current releases (see :mod:`finsent.stream.store.schema`).

Parameters: the driver binds ``%(name)s`` placeholders client-side, escaping each value itself
(the 18.16 server has no server-side query parameters). Store queries are written once with
ClickHouse's ``{name:Type}`` syntax; :func:`to_driver_placeholders` turns them into the driver's
form. Values are never formatted into SQL by this module.

Failures: anything that means "the server is not reachable or not coping right now" (connection
refused, socket timeout, server restarting, overload codes) is raised as
:class:`~finsent.core.errors.StoreUnavailable`; the connection is dropped and the next call
reconnects by itself. Everything else is :class:`~finsent.core.errors.StoreError`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from finsent.core.errors import StoreDiskFull, StoreError, StoreUnavailable
from finsent.stream.store.schema import ddl
from finsent.stream.store.sqlstore import SqlStore, check_written, is_disk_full

# The driver logs a full traceback at WARNING for every failed connect; during an outage the worker
# retries with backoff and StoreUnavailable already says what happened, so keep its log quiet
# unless someone configured it explicitly.
_driver_log = logging.getLogger("clickhouse_driver")
if _driver_log.level == logging.NOTSET:
    _driver_log.setLevel(logging.ERROR)

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):[^{}]+\}")

#: Server error codes that mean "try again later", not "your request is wrong".
TRANSIENT_CODES = frozenset(
    {
        159,  # TIMEOUT_EXCEEDED
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY (replica lost ZooKeeper)
        252,  # TOO_MANY_PARTS (inserts faster than merges: back off)
        319,  # UNKNOWN_STATUS_OF_INSERT
        425,  # SYSTEM_ERROR
        999,  # KEEPER_EXCEPTION
    }
)


_UNREACHABLE = (
    TimeoutError,
    ch_errors.NetworkError,
    ch_errors.SocketTimeoutError,
    ch_errors.UnexpectedPacketFromServerError,
    EOFError,
    OSError,
)


def to_driver_placeholders(sql: str) -> str:
    """``{name:Type}`` -> ``%(name)s`` and a literal ``%`` -> ``%%`` (the driver uses ``%`` formatting)."""
    return _PLACEHOLDER.sub(r"%(\1)s", sql.replace("%", "%%"))


class ClickHouseStore(SqlStore):
    """A store on a ClickHouse server. Create with :func:`stream.store.open_store`."""

    def __init__(
        self,
        host: str,
        port: int = 9000,
        user: str = "default",
        password: str = "",
        database: str = "finsent",
        *,
        secure: bool = False,
        verify: bool = True,
        ca_certs: str | None = None,
        connect_timeout: float = 5.0,
        send_receive_timeout: float = 60.0,
        retention_days: int = 0,
        url_redacted: str = "",
        cluster: str | None = None,
    ) -> None:
        super().__init__(database, retention_days, cluster=cluster)
        self.url_redacted = url_redacted or f"clickhouse://{user}@{host}:{port}/{database}"
        kw: dict[str, Any] = {"secure": secure, "verify": verify}
        if ca_certs:
            kw["ca_certs"] = ca_certs
        # Connect to the always-present ``default`` database and qualify every table with ours,
        # so that ensure_schema can create the database on a fresh server.
        self._client = Client(
            host=host,
            port=port,
            user=user,
            password=password,
            database="default",
            connect_timeout=connect_timeout,
            send_receive_timeout=send_receive_timeout,
            sync_request_timeout=min(5.0, send_receive_timeout),
            client_name="finsent",
            **kw,
        )
        self._settings_ready = False

    # --- plumbing ---------------------------------------------------------------------------------
    def _run(self, sql: str, params: Any = None, **kw: Any) -> Any:
        try:
            self._ready()
            return self._client.execute(sql, params, **kw)
        except ch_errors.ServerException as exc:
            first = (exc.message or str(exc)).strip().splitlines()[0]
            if exc.code == 243 or is_disk_full(exc.message or str(exc)):  # NOT_ENOUGH_SPACE, ENOSPC
                raise StoreDiskFull(f"ClickHouse at {self.url_redacted}: disk full, nothing written: {first}") from exc
            if exc.code in TRANSIENT_CODES:
                self._client.disconnect()
                raise StoreUnavailable(
                    f"ClickHouse at {self.url_redacted} is overloaded or failing: {first}",
                    hint="try again shortly (a running worker retries by itself)",
                ) from exc
            raise StoreError(f"ClickHouse at {self.url_redacted} refused the query: {first}") from exc
        except _UNREACHABLE as exc:
            self._client.disconnect()
            if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "WRONG_VERSION_NUMBER" in str(exc):
                # retrying will not fix a TLS set-up mismatch: a StoreError, not "unavailable"
                raise StoreError(
                    f"TLS to ClickHouse at {self.url_redacted} failed ({exc}); check secure=1 is right for this "
                    "port and pass ca_certs=/path/ca.pem (or verify=0 for a self-signed test server)"
                ) from exc
            raise StoreUnavailable(
                f"ClickHouse at {self.url_redacted} is unreachable ({type(exc).__name__}: {exc})",
                hint="is the ClickHouse server running, and are host and port in --store / FINSENT_STORE right? "
                "(a running worker keeps its batches and retries by itself)",
            ) from exc
        except ch_errors.Error as exc:
            self._client.disconnect()
            raise StoreError(f"ClickHouse at {self.url_redacted}: {exc}") from exc

    def _ready(self) -> None:
        """On first contact read the server version and switch on what old servers need."""
        if self._settings_ready:
            return
        version = self._client.execute(ddl.SERVER_VERSION)[0][0]
        self._caps = ddl.Capabilities.parse(str(version))
        if self._caps.low_cardinality_is_experimental:
            self._client.settings["allow_experimental_low_cardinality_type"] = 1
        if self.cluster:
            # a Distributed insert returns once the shards have the rows, not when they are queued
            # locally: the worker commits offsets only after that (schema docstring, "Cluster mode")
            self._client.settings["insert_distributed_sync"] = 1
        self._settings_ready = True

    def _select(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        if params:
            return self._run(to_driver_placeholders(sql), params)
        return self._run(sql)

    def _command(self, sql: str) -> None:
        self._run(sql)

    def _insert(self, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[tuple[Any, ...]]) -> None:
        names = ", ".join(name for name, _ in columns)
        # columnar: one list per column, the layout the native protocol sends (faster than row tuples)
        data = [list(col) for col in zip(*rows, strict=True)]
        written = self._run(f"INSERT INTO {table} ({names}) VALUES", data, columnar=True)
        # the driver returns the number of rows it sent and the server acknowledged (an int)
        check_written(
            f"ClickHouse at {self.url_redacted}", table, len(rows), written if isinstance(written, int) else None
        )

    @property
    def capabilities(self) -> ddl.Capabilities:
        with self._lock:
            if self._caps is None:
                self._run(ddl.SERVER_VERSION)
            assert self._caps is not None
            return self._caps

    def close(self) -> None:
        with self._lock:
            self._client.disconnect()
