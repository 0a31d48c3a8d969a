"""``finsent status``: is this deployment working, and if not, what to do next (issue 25).

One line per part, for the configured settings (file, environment, flags), ✓ or ✗, and under each ✗ the next
step. The parts, in the order a problem propagates:

* ``broker``: Kafka answers at FINSENT_BROKERS (one metadata request, 3 s at most);
* ``worker``: a worker answers ``/readyz``. Where: the owner file next to the embedded store (``chdb://``: the
  worker that holds it records its API port there), else FINSENT_METRICS_HOST:FINSENT_METRICS_PORT (a
  ``clickhouse://`` deployment's worker on this host);
* ``store``: the store opens and answers (engine, through which worker, items, last item stored, event-time lag:
  now minus the newest item's event time). It is not created: a ``chdb://`` path that does not exist is a ✗;
* ``model``: the version the worker serves (its ``finsent_model_info``), checked against the registry's
  production; without a worker, the version a worker would start with;
* ``lag``: messages of the raw topic not yet consumed by the consumer group: the worker's
  ``finsent_consumer_lag_messages`` (fresh end offsets, issue 22) when it runs, else the broker's committed
  offsets against the log ends. More than :data:`LAG_LIMIT` is a ✗ (the lag rule's threshold);
* ``alerts``: spike and entity alerts active now (the worker's gauges), else those fired in the last hour (the
  store). Any is a ✗: something needs a reader.

Exit 0 when every part is ✓, 1 otherwise; ``--json`` gives the same parts. Nothing here raises past the command:
each part catches its own failure and says it in its line (no traceback, whatever is down).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from finsent.core.errors import FinsentError
from finsent.core.events import utcnow
from finsent.core.jsonout import add_json_option, emit_json, to_stdout
from finsent.core.settings import Settings

#: consumer lag above this many messages is a ✗ (FinsentConsumerLagGrowing's threshold)
LAG_LIMIT = 1000
#: the longest any one part waits for a server
TIMEOUT_S = 3.0
OK, BAD = "✓", "✗"


@dataclass
class Part:
    """One line of the report: ``name`` ok or not, what was found, and (when not ok) what to do next."""

    name: str
    ok: bool
    detail: str
    next: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


def _one_line(exc: BaseException) -> str:
    """The error's message on one line (a FinsentError's hint goes to the part's ``next``)."""
    if isinstance(exc, FinsentError):
        return " ".join(str(exc).split()) or type(exc).__name__
    text = str(exc)
    name = type(exc).__name__
    return " ".join((text if text.startswith(name) else f"{name}: {text}").split())[:300]


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h"
    return f"{s // 86400} d"


# --- broker -------------------------------------------------------------------------------------------------
def _reachable(brokers: list[str]) -> None:
    """Return once one of ``brokers`` (``host:port``) accepts a TCP connection; OSError naming the last refusal."""
    last: OSError = OSError("no broker listed")
    for broker in brokers:
        host, _, port = broker.rpartition(":")
        try:
            socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=TIMEOUT_S).close()
            return
        except (OSError, ValueError) as exc:
            last = OSError(f"{broker}: {exc}")
    raise last


def check_broker(settings: Settings) -> tuple[Part, Any]:
    """Kafka's metadata at FINSENT_BROKERS; the admin client comes back for the lag part (None when down)."""
    from kafka.admin import KafkaAdminClient

    from finsent.stream.kafka import admin_config, finsent_topics

    try:
        _reachable(settings.kafka.broker_list)  # a refused port answers at once; the client would retry for seconds
        admin = KafkaAdminClient(**admin_config(settings.kafka, int(TIMEOUT_S * 1000)))
        topics = set(admin.list_topics())
    except Exception as exc:  # noqa: BLE001 -- any client failure means: not reachable from here
        return (
            Part(
                "broker",
                False,
                f"no Kafka answers at {settings.kafka.brokers} ({_one_line(exc)})",
                "start one (`finsent broker` on a laptop) or point FINSENT_BROKERS at yours",
                {"brokers": settings.kafka.brokers},
            ),
            None,
        )
    ours = [t for t in finsent_topics(settings.kafka) if t in topics]
    raw = settings.kafka.topic_raw in topics
    detail = f"{settings.kafka.brokers} answers; {len(ours)} finsent topics" + (
        "" if raw else f", no {settings.kafka.topic_raw} yet"
    )
    return Part("broker", True, detail, None, {"brokers": settings.kafka.brokers, "topics": ours}), admin


# --- worker -------------------------------------------------------------------------------------------------
def _chdb_path(settings: Settings) -> Path | None:
    if not settings.storage.store.startswith("chdb://"):
        return None
    from finsent.stream.store import parse_chdb_url

    try:
        return Path(parse_chdb_url(settings.storage.store)["path"]).expanduser()
    except (FinsentError, ValueError, OSError):
        return None


def _get(base: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(base + path, timeout=TIMEOUT_S) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def check_worker(settings: Settings) -> tuple[Part, str | None]:
    """The worker's ``/readyz``; its ``/metrics`` text comes back for the model, lag and alerts parts."""
    from finsent.stream.store.remote import api_base

    path = _chdb_path(settings)
    if path is not None:
        from finsent.stream.store import owner

        rec = owner.read_owner(path)
        if rec is None:
            return Part(
                "worker",
                False,
                f"no worker holds the store at {path}",
                "start one: `finsent worker` (with these settings)",
            ), None
        if not rec.get("port"):
            return Part(
                "worker",
                False,
                f"worker pid {rec['pid']} holds the store but serves no HTTP (FINSENT_METRICS_PORT=0)",
                "restart it with FINSENT_METRICS_PORT set (default 9464)",
                {"pid": rec["pid"]},
            ), None
        base, pid = api_base(rec.get("host"), int(rec["port"])), rec["pid"]
    else:
        if not settings.worker.metrics_port:
            return Part(
                "worker",
                False,
                "FINSENT_METRICS_PORT is 0 here: no port to ask a worker on",
                "set FINSENT_METRICS_PORT to the worker's port (default 9464)",
            ), None
        base, pid = api_base(settings.worker.metrics_host, settings.worker.metrics_port), None
    who = f"worker pid {pid} at {base}" if pid else f"a worker at {base}"
    try:
        code, why = _get(base, "/readyz")
    except (OSError, ValueError) as exc:
        return Part(
            "worker",
            False,
            f"{who} does not answer ({_one_line(exc)})",
            "start one: `finsent worker`"
            if pid is None
            else f"it is stuck or gone: see its log, or `kill -TERM {pid}`",
            {"url": base, "pid": pid},
        ), None
    metrics = None
    with contextlib.suppress(OSError, ValueError, urllib.error.HTTPError):
        status, text = _get(base, "/metrics")
        metrics = text if status == 200 else None
    data = {"url": base, "pid": pid, "ready": code == 200, "why": why.strip()}
    if code != 200:
        return Part(
            "worker",
            False,
            f"{who} is not ready: {why.strip() or f'HTTP {code}'}",
            "it says why above; the worker's log has the detail (it retries Kafka and the store by itself)",
            data,
        ), metrics
    return Part("worker", True, f"{who} is ready ({why.strip()})", None, data), metrics


def _samples(metrics: str | None, name: str) -> list[tuple[dict[str, str], float]]:
    """``name``'s samples in Prometheus text: [(labels, value)]."""
    out: list[tuple[dict[str, str], float]] = []
    for m in re.finditer(rf"^{name}(?:\{{(.*?)\}})? (\S+)$", metrics or "", re.M):
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1) or ""))
        with contextlib.suppress(ValueError):
            out.append((labels, float(m.group(2))))
    return out


# --- store --------------------------------------------------------------------------------------------------
def check_store(settings: Settings) -> tuple[Part, Any]:
    """Open the store (through the worker when it holds it) and read its size and freshness."""
    from finsent.core.redact import redact_url
    from finsent.stream.store import store_from_settings

    shown = redact_url(settings.storage.store)
    path = _chdb_path(settings)
    if path is not None and not path.exists():
        return Part(
            "store",
            False,
            f"no store at {path} yet",
            "start the worker (it creates the store) or set FINSENT_STORE to yours",
            {"url": shown},
        ), None
    try:
        store = store_from_settings(settings)
        counts = store.count()
        db = store.database  # type: ignore[attr-defined]
        newest = store.query(f"SELECT max(ingested_at), max(event_time) FROM {db}.items")
    except Exception as exc:  # noqa: BLE001 -- each failure is this part's line, never a traceback
        with contextlib.suppress(Exception):
            store.close()  # type: ignore[possibly-undefined]
        hint = getattr(exc, "hint", None) or "check FINSENT_STORE; `finsent query count` says more"
        return Part("store", False, _one_line(exc), hint, {"url": shown}), None
    engine = "chdb" if settings.storage.store.startswith("chdb://") else "clickhouse"
    through = f", through worker pid {store.pid}" if getattr(store, "pid", None) else ""  # RemoteStore
    rows = int(counts.get("rows", 0))
    data: dict[str, Any] = {"url": shown, "engine": engine, "rows": rows, "through_worker": bool(through)}
    detail = f"{engine} {shown}{through}: {rows:,} items"
    if rows:
        last_in, last_event = (newest[0][0], newest[0][1]) if newest else (None, None)
        now = utcnow()
        if isinstance(last_in, datetime):
            data["last_ingested_at"] = last_in.isoformat()
            data["since_last_item_s"] = round((now - last_in).total_seconds(), 1)
            detail += f", last stored {_ago((now - last_in).total_seconds())} ago"
        if isinstance(last_event, datetime):
            data["event_time_lag_s"] = round((now - last_event).total_seconds(), 1)
            detail += f", event-time lag {_ago((now - last_event).total_seconds())}"
    else:
        detail += " (nothing stored yet)"
    return Part("store", True, detail, None, data), store


# --- model --------------------------------------------------------------------------------------------------
def _production(settings: Settings) -> tuple[str | None, str | None]:
    """(the registry's production version, a problem reading it)."""
    from finsent.stream.reload import production_version

    try:
        mv = production_version(settings)
    except Exception as exc:  # noqa: BLE001 -- a corrupt registry is this part's line
        return None, _one_line(exc)
    return (mv.version if mv is not None else None), None


def check_model(settings: Settings, metrics: str | None) -> Part:
    """The version served (or that a worker would start with) against the registry's production."""
    production, problem = _production(settings)
    serving = [labels for labels, value in _samples(metrics, "finsent_model_info") if value == 1.0]
    if serving:
        version = serving[0].get("version", "?")
        data = {"serving": version, "provider": serving[0].get("provider"), "production": production}
        detail = f"{version} served ({serving[0].get('provider', '?')})"
        if production and production != version:
            return Part(
                "model",
                False,
                f"{detail}, but the registry's production is {production}",
                "the worker follows production within FINSENT_RELOAD_INTERVAL_S; if it stays, "
                "finsent_model_reload_failures_total and its log say why",
                data,
            )
        return Part("model", True, detail + (" = production" if production else ""), None, data)
    if problem:
        return Part(
            "model", False, f"registry {settings.model_registry.registry}: {problem}", "`finsent models list`", {}
        )
    if production:
        return Part("model", True, f"{production} (the registry's production; no worker serving)", None, {})
    from finsent.models import resolve_model_dir
    from finsent.models.modeldir import read_model_info

    try:
        version = read_model_info(resolve_model_dir(settings.model.model_dir)).model_version
    except Exception as exc:  # noqa: BLE001
        return Part(
            "model",
            False,
            f"the model directory cannot be read: {_one_line(exc)}",
            "set FINSENT_MODEL_DIR to a model directory (model.onnx, tokenizer.json, labels.json)",
        )
    where = settings.model.model_dir or "the shipped model"
    return Part("model", True, f"{version} ({where}; no worker serving)", None, {"model_dir_version": version})


# --- lag ----------------------------------------------------------------------------------------------------
def _broker_lag(settings: Settings, admin: Any) -> tuple[int | None, str]:
    """(messages behind on the raw topic for the group, how it was measured): the log ends against the group's
    committed offsets, both from the broker (a partition the group never committed counts from 0)."""
    from kafka import TopicPartition
    from kafka.admin import OffsetSpec

    parts = admin.describe_topics([settings.kafka.topic_raw])[0]["partitions"]
    tps = [TopicPartition(settings.kafka.topic_raw, int(p.get("partition_index", p.get("partition")))) for p in parts]
    committed = admin.list_group_offsets({settings.kafka.consumer_group: tps}).get(settings.kafka.consumer_group) or {}
    done = {tp: m.offset for tp, m in committed.items() if m is not None and m.offset is not None and m.offset >= 0}
    if not done:
        return None, f"group {settings.kafka.consumer_group} has committed nothing on {settings.kafka.topic_raw} yet"
    ends = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in tps})
    lag = sum(max(0, int(ends[tp].offset) - done.get(tp, 0)) for tp in tps if tp in ends)
    return lag, "broker offsets"


def check_lag(settings: Settings, metrics: str | None, admin: Any) -> Part:
    gauge = [v for labels, v in _samples(metrics, "finsent_consumer_lag_messages")]
    if gauge:
        lag, how = int(sum(gauge)), "the worker's finsent_consumer_lag_messages"
    elif admin is None:
        return Part("lag", False, "unknown: the broker does not answer", "fix the broker first (above)")
    else:
        try:
            lag, how = _broker_lag(settings, admin)
        except Exception as exc:  # noqa: BLE001
            return Part("lag", False, f"unknown ({_one_line(exc)})", "`finsent worker` measures it while it runs")
        if lag is None:
            return Part("lag", True, how, None, {"lag": None})
    data = {"lag": lag, "group": settings.kafka.consumer_group, "topic": settings.kafka.topic_raw, "measured_by": how}
    detail = f"{lag:,} messages behind on {settings.kafka.topic_raw} (group {settings.kafka.consumer_group}; {how})"
    if lag > LAG_LIMIT:
        return Part(
            "lag",
            False,
            detail,
            "the workers fall behind: add one (up to FINSENT_PARTITIONS) or see `finsent bench` for its capacity",
            data,
        )
    return Part("lag", True, detail, None, data)


# --- alerts -------------------------------------------------------------------------------------------------
def check_alerts(settings: Settings, metrics: str | None, store: Any) -> Part:
    names: list[str] = []
    if metrics is not None:
        how = "active now"
        level = {1.0: "warning", 2.0: "critical"}
        names += [
            f"{labels.get('topic', '?')} ({level.get(v, v)})"
            for labels, v in _samples(metrics, "finsent_negative_spike_active")
            if v > 0
        ]
        names += [
            f"{labels.get('entity', '?')} ({level.get(v, v)})"
            for labels, v in _samples(metrics, "finsent_entity_alert_active")
            if v > 0
        ]
    elif store is not None:
        how = "fired in the last hour"
        try:
            rows = store.alerts(since=timedelta(hours=1))
        except Exception as exc:  # noqa: BLE001
            return Part("alerts", False, f"unknown ({_one_line(exc)})", "fix the store first (above)")
        names += [f"{r.get('topic') or r.get('entity_name') or '?'} ({r.get('severity')})" for r in rows]
    else:
        return Part("alerts", False, "unknown: neither a worker nor the store answers", "fix those first (above)")
    if names:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return Part(
            "alerts",
            False,
            f"{len(names)} {how}: {shown}",
            "read them: `finsent query alerts --since 1h`",
            {"alerts": names, "how": how},
        )
    return Part("alerts", True, f"none {how}", None, {"alerts": [], "how": how})


def status(settings: Settings) -> list[Part]:
    """Every part, in order; never raises for what it finds down."""
    broker, admin = check_broker(settings)
    worker, metrics = check_worker(settings)
    store_part, store = check_store(settings)
    try:
        parts = [
            broker,
            worker,
            store_part,
            check_model(settings, metrics),
            check_lag(settings, metrics, admin),
            check_alerts(settings, metrics, store),
        ]
    finally:
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.close()
    return parts


def lines(parts: list[Part]) -> list[str]:
    """The report: one line per part, and under each ✗ what to do next."""
    width = max(len(p.name) for p in parts)
    out = []
    for p in parts:
        out.append(f"{OK if p.ok else BAD} {p.name:<{width}}  {p.detail}")
        if not p.ok and p.next:
            out.append(f"  {'':<{width}}  next: {p.next}")
    return out


def run_status(args: argparse.Namespace, settings: Settings) -> int:
    """``finsent status``: the report (or ``--json``); exit 0 when every part is ✓, else 1."""
    started = time.monotonic()
    parts = status(settings)
    ok = all(p.ok for p in parts)
    if args.json:
        doc = {"ok": ok, "seconds": round(time.monotonic() - started, 2), "parts": [asdict(p) for p in parts]}
        emit_json(args.json, doc)
        if to_stdout(args.json):
            return 0 if ok else 1
    print("\n".join(lines(parts)))
    return 0 if ok else 1


def register(sub: Any) -> None:
    """``finsent status`` (a :class:`finsent.cli.tree.Subcommands`)."""
    p = sub.leaf(
        "status",
        run_status,
        help="is it working? broker, worker, store, model, consumer lag, alerts: one line each",
        description=(
            "Check the deployment these settings describe, one line per part with ✓ or ✗, and for each ✗ what "
            "to do next: the broker answers; a worker is ready (found through the embedded store's owner file, "
            "else at FINSENT_METRICS_HOST:FINSENT_METRICS_PORT); the store answers (engine, items, last stored, "
            "event-time lag); the model served against the registry's production; the consumer lag of the raw "
            f"topic (more than {LAG_LIMIT:,} messages is a ✗); alerts active now. Exit 0 when all is well, 1 "
            "otherwise. Each server gets 3 s at most."
        ),
        epilog="examples:\n"
        "  finsent status\n"
        "  finsent status --json\n"
        "  finsent --store clickhouse://finsent@ch:9000/finsent --brokers kafka:9092 status\n"
        "  finsent status || finsent query alerts --since 1h     in a script: act when something is wrong",
    )
    add_json_option(p, '{"ok", "seconds", "parts": [{"name", "ok", "detail", "next", "data"}]}')
