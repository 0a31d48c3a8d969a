"""Has the production model gone stale? Compare its recent predictions with the period before.

``finsent drift`` and the worker's ``finsent_drift_*`` gauges (:mod:`finsent.stream.drift_agent`)
both call :func:`drift_report`; everything below it is pure arithmetic on counts, unit-tested on
fake distributions (``tests/stream/test_drift.py``).

Why in ``stream``: drift watches what the worker stores (the store's prediction counts, queried through
:mod:`finsent.stream.store.schema.drift`) and runs as a worker extension; it needs the store and the worker
context, both in this layer, and nothing above it. Alerting on it is Prometheus' job
(``deploy/prometheus/finsent-drift-rules.yml`` over the gauges).

Periods, on the items' ``ingested_at`` (the store's time axis): the *window* is the last
``--window`` (default 24h), the *reference* the ``--reference`` (default 7d) just before it.
Only rows whose current score comes from the model being judged count: the registry's production
version when a registry is configured and has one, else the version that scored most of the
window (``--model-version`` overrides both). Items re-scored by another version leave the set.

What is measured
----------------
* **PSI** (population stability index) of each task's label distribution::

      PSI = sum over labels i of (w_i - r_i) * ln(w_i / r_i)

  with ``w_i`` / ``r_i`` the share of label ``i`` among the window's / reference's items, over every
  label seen in either period. A share of 0 (a label absent from one period) is replaced by
  ``EPSILON`` = 1e-4 so that the log stays finite: a label that vanishes or appears contributes about
  ``r_i * ln(r_i / 1e-4)``, large, as it should. The usual reading (credit scoring, where PSI comes
  from): below 0.1 no real shift, 0.1-0.25 a moderate one worth watching, 0.25 and up a large one.
  PSI is symmetric in the two periods and 0 for identical distributions.
* **Confidence**: the top sentiment probability of each item (the head the alerts are built on; the
  topic head's 20-way probabilities live on another scale and are covered by its PSI). The shift is
  mean(window) - mean(reference): negative means the model has become less sure.
* **Low-confidence share**: items whose top sentiment probability is below
  ``FINSENT_DRIFT_LOW_CONFIDENCE`` (0.5), in the window, and its rise over the reference.

A retrain is advised when either period has at least ``FINSENT_DRIFT_MIN_ITEMS`` items and any of:
a task's PSI >= ``FINSENT_DRIFT_PSI_THRESHOLD`` (0.25); the mean confidence fell by at least
``FINSENT_DRIFT_CONFIDENCE_DROP`` (0.05); the low-confidence share rose by at least
``FINSENT_DRIFT_LOW_CONFIDENCE_RISE`` (0.1). Each reason is stated with its numbers. A moderate PSI
(0.1 up to the threshold) is noted, not advised on.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from finsent.core.events import format_time, utcnow
from finsent.core.settings import DriftSettings, Settings
from finsent.models.labels import TASKS

log = logging.getLogger(__name__)

EPSILON = 1e-4
#: the customary PSI bands: below MODERATE no real shift, from LARGE a large one
PSI_MODERATE = 0.1
PSI_LARGE = 0.25


def shares(counts: Mapping[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


def psi(reference: Mapping[str, int], window: Mapping[str, int], eps: float = EPSILON) -> float | None:
    """PSI of two label-count distributions (see the module docstring); None when either is empty."""
    r, w = shares(reference), shares(window)
    if not r or not w:
        return None
    total = 0.0
    for label in set(r) | set(w):
        ri, wi = max(r.get(label, 0.0), eps), max(w.get(label, 0.0), eps)
        total += (wi - ri) * math.log(wi / ri)
    return total


def psi_band(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "large" if value >= PSI_LARGE else "moderate" if value >= PSI_MODERATE else "stable"


@dataclass
class PeriodStats:
    """What one period's predictions look like: label counts per task, confidence sum, low-confidence count."""

    start: datetime
    end: datetime
    items: int = 0
    labels: dict[str, Counter[str]] = field(default_factory=lambda: {t: Counter() for t in TASKS})
    confidence_sum: float = 0.0
    low: int = 0

    def add(self, sentiment: str, topic: str, n: int, confidence_sum: float, low: int) -> None:
        self.items += n
        self.labels["sentiment"][sentiment] += n
        self.labels["topic"][topic] += n
        self.confidence_sum += confidence_sum
        self.low += low

    @property
    def mean_confidence(self) -> float | None:
        return self.confidence_sum / self.items if self.items else None

    @property
    def low_ratio(self) -> float | None:
        return self.low / self.items if self.items else None

    def to_json(self) -> dict[str, Any]:
        return {
            "start": format_time(self.start),
            "end": format_time(self.end),
            "items": self.items,
            "mean_confidence": _round(self.mean_confidence),
            "low_confidence_ratio": _round(self.low_ratio),
            **{task: {k: round(v, 4) for k, v in sorted(shares(self.labels[task]).items())} for task in TASKS},
        }


@dataclass(frozen=True, slots=True)
class DriftThresholds:
    psi: float = PSI_LARGE
    confidence_drop: float = 0.05
    low_confidence: float = 0.5
    low_confidence_rise: float = 0.1
    min_items: int = 200

    @classmethod
    def from_settings(cls, drift: DriftSettings) -> DriftThresholds:
        return cls(
            psi=drift.drift_psi_threshold,
            confidence_drop=drift.drift_confidence_drop,
            low_confidence=drift.drift_low_confidence,
            low_confidence_rise=drift.drift_low_confidence_rise,
            min_items=drift.drift_min_items,
        )


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


@dataclass
class DriftReport:
    model_version: str | None
    version_source: str
    window: PeriodStats
    reference: PeriodStats
    thresholds: DriftThresholds
    psi: dict[str, float | None]
    confidence_shift: float | None
    low_confidence_shift: float | None
    enough_data: bool
    retrain_advised: bool
    reasons: list[str]
    notes: list[str]
    versions_in_window: list[tuple[str, int]] = field(default_factory=list)

    @property
    def low_confidence_ratio(self) -> float | None:
        return self.window.low_ratio

    def to_json(self) -> dict[str, Any]:
        t = self.thresholds
        return {
            "model_version": self.model_version,
            "version_source": self.version_source,
            "window": self.window.to_json(),
            "reference": self.reference.to_json(),
            "psi": {k: _round(v) for k, v in self.psi.items()},
            "psi_band": {k: psi_band(v) for k, v in self.psi.items()},
            "confidence_shift": _round(self.confidence_shift),
            "low_confidence_ratio": _round(self.low_confidence_ratio),
            "low_confidence_shift": _round(self.low_confidence_shift),
            "enough_data": self.enough_data,
            "retrain_advised": self.retrain_advised,
            "reasons": self.reasons,
            "notes": self.notes,
            "thresholds": {
                "psi": t.psi,
                "confidence_drop": t.confidence_drop,
                "low_confidence": t.low_confidence,
                "low_confidence_rise": t.low_confidence_rise,
                "min_items": t.min_items,
            },
            "versions_in_window": [{"model_version": v, "items": n} for v, n in self.versions_in_window],
        }


def compare(
    reference: PeriodStats,
    window: PeriodStats,
    thresholds: DriftThresholds,
    model_version: str | None = None,
    version_source: str = "",
) -> DriftReport:
    """The figures and the advice for two periods of one model's predictions (pure; no store)."""
    t = thresholds
    scores = {task: psi(reference.labels[task], window.labels[task]) for task in TASKS}
    conf_shift = _diff(window.mean_confidence, reference.mean_confidence)
    low_shift = _diff(window.low_ratio, reference.low_ratio)
    enough = min(window.items, reference.items) >= t.min_items
    reasons: list[str] = []
    notes: list[str] = []
    if not enough:
        notes.append(
            f"too few items for a verdict: window {window.items}, reference {reference.items} "
            f"(at least {t.min_items} each, FINSENT_DRIFT_MIN_ITEMS)"
        )
    else:
        for task, value in scores.items():
            if value is not None and value >= t.psi:
                reasons.append(f"the {task} label distribution moved: PSI {value:.3f} >= {t.psi:g}")
            elif value is not None and value >= PSI_MODERATE:
                notes.append(f"{task} PSI {value:.3f}: a moderate shift (0.1-0.25), worth watching")
        if conf_shift is not None and -conf_shift >= t.confidence_drop:
            reasons.append(
                f"mean confidence fell by {-conf_shift:.3f} (from {reference.mean_confidence:.3f} to "
                f"{window.mean_confidence:.3f}) >= {t.confidence_drop:g}"
            )
        if low_shift is not None and low_shift >= t.low_confidence_rise:
            reasons.append(
                f"the share of low-confidence items (top probability < {t.low_confidence:g}) rose from "
                f"{reference.low_ratio:.1%} to {window.low_ratio:.1%} (+{low_shift:.3f} >= "
                f"{t.low_confidence_rise:g})"
            )
    return DriftReport(
        model_version,
        version_source,
        window,
        reference,
        t,
        scores,
        conf_shift,
        low_shift,
        enough,
        bool(reasons),
        reasons,
        notes,
    )


# --- from the store -------------------------------------------------------------------------------


def production_version(settings: Settings) -> str | None:
    """The registry's production version, or None (no registry configured, or no production alias)."""
    if not settings.model_registry.registry:
        return None
    from finsent.models.registry import Registry

    mv = Registry(settings.model_registry.registry).resolve("production")
    return mv.version if mv is not None else None


def drift_report(
    store: Any,
    settings: Settings,
    window: timedelta | None = None,
    reference: timedelta | None = None,
    model_version: str | None = None,
    now: datetime | None = None,
) -> DriftReport:
    """Read both periods of the judged model's predictions from ``store`` and :func:`compare` them."""
    now = now or utcnow()
    window = window or timedelta(seconds=settings.drift.drift_window_s)
    reference = reference or timedelta(seconds=settings.drift.drift_reference_s)
    split, start, until = now - window, now - window - reference, now + timedelta(seconds=1)
    versions = store.model_version_counts(split, until)
    source = "given"
    if model_version is None:
        model_version, source = production_version(settings), "registry production alias"
    if model_version is None:
        model_version, source = (versions[0][0] if versions else None), "most common in the window"
    thresholds = DriftThresholds.from_settings(settings.drift)
    ref, win = PeriodStats(start, split), PeriodStats(split, now)
    if model_version is not None:
        for row in store.prediction_stats(start, split, until, model_version, thresholds.low_confidence):
            (win if row["recent"] else ref).add(row["sentiment"], row["topic"], row["n"], row["confidence"], row["low"])
    report = compare(ref, win, thresholds, model_version, source)
    report.versions_in_window = versions
    if model_version is not None and versions and model_version not in dict(versions):
        report.notes.append(
            f"no item in the window is scored by {model_version}; the window's versions: "
            + ", ".join(f"{v} ({n})" for v, n in versions[:5])
        )
    return report
