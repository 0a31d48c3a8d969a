"""Where scored items and alerts are kept: ClickHouse, as a server or embedded (chdb).

``open_store(url)`` picks the implementation from the URL:

* ``clickhouse://[user[:password]@]host[:port][/database][?options]`` -- a server over the native
  protocol (port 9000 by default, 9440 with ``secure=1``; ``clickhouses://`` implies
  ``secure=1``). Options: ``secure=1``, ``verify=0`` (do not check the TLS certificate),
  ``ca_certs=/path/ca.pem``, ``connect_timeout=SECONDS``, ``send_receive_timeout=SECONDS``.
  User and password are percent-decoded (``p%40ss`` is ``p@ss``). Database default: ``finsent``.
* ``chdb:///absolute/path[?database=name]`` -- embedded engine with its data in that directory.
  ``chdb://relative/path`` is relative to the current directory and ``chdb://~/x`` expands
  ``~``; both are resolved to an absolute path at open time. Database default: ``finsent``.

``store.url_redacted`` is the URL without the password, for logs and error messages; :func:`redact_url` is
:mod:`finsent.core.redact`'s, the one redaction of every URL finsent prints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from finsent.core.errors import ConfigError, StoreError, StoreInUse, StoreUnavailable
from finsent.core.redact import redact_url  # the one redaction (re-exported: callers import it from here)
from finsent.core.store import Store, TopicCounts

if TYPE_CHECKING:
    from finsent.core.settings import Settings

DEFAULT_DATABASE = "finsent"
#: what to do about a bad store URL (the generic "run `finsent config`" would only show the same URL)
URL_HINT = "set --store / FINSENT_STORE to clickhouse://user:pass@host:9000/db or chdb:///path/to/dir"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _flag(opts: dict[str, str], name: str, default: bool) -> bool:
    if name not in opts:
        return default
    value = opts[name].lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"store URL option {name}={opts[name]!r}: use 1 or 0", hint=URL_HINT)


def _options(query: str, allowed: set[str]) -> dict[str, str]:
    opts = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown store URL option(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}", hint=URL_HINT
        )
    return opts


def parse_clickhouse_url(url: str) -> dict[str, Any]:
    """Keyword arguments of :class:`~stream.store.clickhouse.ClickHouseStore` from a URL."""
    parts = urlsplit(url)
    opts = _options(parts.query, {"secure", "verify", "ca_certs", "connect_timeout", "send_receive_timeout"})
    secure = parts.scheme == "clickhouses" or _flag(opts, "secure", False)
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"store URL {redact_url(url)}: {exc}", hint=URL_HINT) from None
    if not parts.hostname:
        raise ConfigError(
            f"store URL {redact_url(url)} has no host: clickhouse://user:pass@host:9000/db", hint=URL_HINT
        )
    database = parts.path.strip("/") or DEFAULT_DATABASE
    kw: dict[str, Any] = {
        "host": parts.hostname,
        "port": port or (9440 if secure else 9000),
        "user": unquote(parts.username) if parts.username else "default",
        "password": unquote(parts.password) if parts.password else "",
        "database": database,
        "secure": secure,
        "verify": _flag(opts, "verify", True),
        "ca_certs": opts.get("ca_certs") or None,
    }
    for name in ("connect_timeout", "send_receive_timeout"):
        if name in opts:
            try:
                kw[name] = float(opts[name])
            except ValueError:
                kw[name] = float("nan")
            if not 0 < kw[name] <= 3600:
                raise ConfigError(
                    f"store URL option {name}={opts[name]!r}: use seconds, more than 0 and at most 3600", hint=URL_HINT
                )
    kw["url_redacted"] = f"clickhouse://{kw['user']}@{kw['host']}:{kw['port']}/{database}"
    if secure:
        kw["url_redacted"] += "?secure=1"
    return kw


def parse_chdb_url(url: str) -> dict[str, Any]:
    """Keyword arguments of :class:`~stream.store.embedded.ChdbStore` from a URL."""
    rest = url[len("chdb://") :]
    path, _, query = rest.partition("?")
    opts = _options(query, {"database"})
    if not path:
        raise ConfigError(
            "store URL chdb:// needs a path: chdb:///absolute/path or chdb://relative/path", hint=URL_HINT
        )
    return {"path": unquote(path), "database": opts.get("database") or DEFAULT_DATABASE}


def open_store(url: str, *, retention_days: int = 0, cluster: str | None = None, api_token: str | None = None) -> Store:
    """Connect to the store named by ``url`` (see module docs). Does not create the schema:
    call ``ensure_schema()`` (idempotent) before the first insert.

    ``cluster`` (a server's ``remote_servers`` name) switches the schema to cluster mode (ON CLUSTER,
    Replicated local tables, Distributed tables; see :mod:`finsent.stream.store.schema`).
    A server that is down is not an error here: the driver connects on first use, which raises
    :class:`StoreUnavailable`.

    An embedded store held by a running worker is reached through that worker
    (:class:`~finsent.stream.store.remote.RemoteStore`, with ``api_token`` or FINSENT_API_TOKEN).
    """
    if url.startswith(("clickhouse://", "clickhouses://")):
        from finsent.stream.store.clickhouse import ClickHouseStore

        try:
            kw = parse_clickhouse_url(url)
        except ConfigError:
            raise
        except ValueError as exc:  # urlsplit: "Invalid IPv6 URL", a port out of range...
            raise ConfigError(f"store URL {redact_url(url)}: {exc}", hint=URL_HINT) from None
        return ClickHouseStore(**kw, retention_days=retention_days, cluster=cluster)
    if cluster:
        raise ConfigError(
            f"FINSENT_CLICKHOUSE_CLUSTER={cluster} needs a clickhouse:// server store, not {redact_url(url)}",
            hint="unset FINSENT_CLICKHOUSE_CLUSTER for the embedded store",
        )
    if url.startswith("chdb://"):
        from finsent.stream.store.embedded import ChdbStore

        kw = parse_chdb_url(url)
        try:
            return ChdbStore(kw["path"], kw["database"], retention_days=retention_days)
        except StoreInUse as exc:  # held by a worker: its calls go through it (stream/store/owner.py)
            from finsent.stream.store.remote import through_owner

            return through_owner(kw["path"], kw["database"], exc, api_token=api_token)
    raise ConfigError(f"store URL {redact_url(url)!r} must start with clickhouse:// or chdb://", hint=URL_HINT)


def store_from_settings(settings: Settings) -> Store:
    """``open_store(settings.storage.store)`` with the settings' retention and cluster applied."""
    token = settings.worker.api_token.get_secret_value() if settings.worker.api_token else None
    return open_store(
        settings.storage.store,
        retention_days=settings.storage.retention_days,
        cluster=settings.storage.clickhouse_cluster,
        api_token=token,
    )


__all__ = [
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TopicCounts",
    "open_store",
    "parse_chdb_url",
    "parse_clickhouse_url",
    "redact_url",
    "store_from_settings",
]
