"""The drift figures as Prometheus gauges, recomputed by every worker on a timer: ``attach(app, context)``.

Gauges (default registry, on the worker's ``/metrics``), the figures of :func:`finsent.stream.drift.drift_report`:

    finsent_drift_psi{task}                 PSI of the task's label distribution, window vs reference
    finsent_drift_confidence_shift          mean top sentiment probability, window minus reference
    finsent_drift_low_confidence_ratio      share of the window's items below FINSENT_DRIFT_LOW_CONFIDENCE
    finsent_drift_retrain_advised           1 when the report advises a retrain, else 0

A figure that cannot be computed (no items of the model in a period) is NaN, so a rule comparing
it is false and a dashboard shows a gap rather than a made-up 0.

Why a timer on every worker: the figures come from the store (they are the same for every worker,
so the example rule takes ``max`` over instances) and change slowly; each recomputation is two
queries over ``items FINAL`` for the window plus the reference (8 days by default), run in a thread
of its own every ``FINSENT_DRIFT_INTERVAL_S`` (300 s; 0 = off), never on the event loop. With the
embedded store the worker's own store object is shared (chdb: one process per path), so inserts
wait for the query's few hundred milliseconds; with a server the agent opens its own connection.
A failing recomputation is logged once (and once more when it recovers) and leaves the gauges as
they were; it never stops the worker.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from finsent.core.settings import Settings
from finsent.stream.context import WorkerContext
from finsent.stream.drift import TASKS, DriftReport, drift_report

log = logging.getLogger(__name__)

#: how often the timer wakes to see whether a recomputation is due (the first one runs this soon after start)
TICK_S = 5.0

_gauges_lock = threading.Lock()
_gauges: dict[str, Any] = {}


def drift_gauges() -> dict[str, Any]:
    """The four ``finsent_drift_*`` gauges on the default registry, created once per process."""
    with _gauges_lock:
        if not _gauges:
            from prometheus_client import Gauge

            _gauges.update(
                psi=Gauge(
                    "finsent_drift_psi",
                    "PSI of the task's predicted label distribution, recent window vs "
                    "the reference period before it (0.1 moderate, 0.25 large)",
                    ["task"],
                ),
                confidence_shift=Gauge(
                    "finsent_drift_confidence_shift",
                    "Mean top sentiment probability, window minus reference (negative: the model got less sure)",
                ),
                low_ratio=Gauge(
                    "finsent_drift_low_confidence_ratio",
                    "Share of the window's items whose top sentiment probability is below FINSENT_DRIFT_LOW_CONFIDENCE",
                ),
                advised=Gauge("finsent_drift_retrain_advised", "1 when the drift report advises a retrain"),
            )
        return _gauges


def _value(x: float | None) -> float:
    return math.nan if x is None else float(x)


class DriftMonitor:
    """Recomputes the report (blocking, in a worker thread) and mirrors it into the gauges; never raises."""

    def __init__(self, settings: Settings, store_getter: Callable[[], Any]) -> None:
        self.settings = settings
        self.store_getter = store_getter
        self.gauges = drift_gauges()
        self.last: DriftReport | None = None
        self.runs = 0
        self.failures = 0
        self._failing = False

    def refresh(self) -> DriftReport | None:
        try:
            report = drift_report(self.store_getter(), self.settings)
        except Exception as exc:  # noqa: BLE001 - a drift query must never take the worker down
            self.failures += 1
            if not self._failing:
                self._failing = True
                log.warning(
                    "drift: could not recompute the drift figures (%s); the gauges keep their last "
                    "values, retrying every %gs (logged once)",
                    " ".join(str(exc).split())[:300],
                    self.settings.drift.drift_interval_s,
                )
            return None
        if self._failing:
            self._failing = False
            log.info("drift: recomputing the drift figures works again")
        self.runs += 1
        self.last = report
        g = self.gauges
        for task in TASKS:
            g["psi"].labels(task=task).set(_value(report.psi.get(task)))
        g["confidence_shift"].set(_value(report.confidence_shift))
        g["low_ratio"].set(_value(report.low_confidence_ratio))
        g["advised"].set(1 if report.retrain_advised else 0)
        return report


def _store_getter(ctx: WorkerContext) -> Callable[[], Any]:
    """chdb: the scoring worker's own store (one process per path); a server: a connection of our own."""
    settings = ctx.settings
    if settings.storage.store.startswith("chdb://"):
        return ctx.store.get
    own: list[Any] = []

    def get() -> Any:
        if not own:
            from finsent.stream.store import store_from_settings

            s = store_from_settings(settings)
            s.ensure_schema()
            own.append(s)
        return own[0]

    return get


def attach(app: Any, ctx: WorkerContext, store_getter: Callable[[], Any] | None = None) -> DriftMonitor | None:
    """Add the drift timer to the Faust ``app``; nothing when FINSENT_DRIFT_INTERVAL_S=0.

    Registered as extension ``"drift"`` (``ctx.extensions.get("drift")``).
    """
    settings = ctx.settings
    if settings.drift.drift_interval_s <= 0:
        return None
    monitor = DriftMonitor(settings, store_getter or _store_getter(ctx))
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finsent-drift")
    ctx.extensions.register("drift", monitor, close=lambda: pool.shutdown(wait=False, cancel_futures=True))
    due = [0.0]  # monotonic time of the next recomputation; the first is due at the first tick

    @app.timer(interval=min(TICK_S, settings.drift.drift_interval_s))
    async def recompute_drift() -> None:
        if time.monotonic() < due[0]:
            return
        due[0] = time.monotonic() + settings.drift.drift_interval_s
        await asyncio.get_running_loop().run_in_executor(pool, monitor.refresh)

    return monitor
