"""The detectors, one import away, and ``make_detector(settings)`` (what the worker and the CLI use).

Example (a calm topic, then a spike)::

    >>> from datetime import datetime, timedelta, timezone
    >>> from finsent.core.settings import Settings
    >>> det = make_detector(Settings().alerts)
    >>> t0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
    >>> for i in range(120):
    ...     _ = det.observe(t0 + timedelta(minutes=i), {"earnings": (2, 20)})
    >>> alerts = []
    >>> for i in range(120, 130):
    ...     alerts += det.observe(t0 + timedelta(minutes=i), {"earnings": (12, 20)})
    >>> alerts[0].topic, alerts[0].severity, det.states()["earnings"].active
    ('earnings', 'warning', True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from finsent.alerts.base import Counts, Detector, TopicState, WindowedDetector
from finsent.alerts.cusum import BinomialCusum
from finsent.alerts.ewma_z import EwmaZ
from finsent.core.settings import AlertSettings

if TYPE_CHECKING:
    pass

#: every detector, by the name ``FINSENT_ALERT_DETECTOR`` takes;
#: tests/alerts/test_alerts_contract.py runs its checks on each
REGISTRY: dict[str, type[WindowedDetector]] = {EwmaZ.name: EwmaZ, BinomialCusum.name: BinomialCusum}
DETECTORS = tuple(REGISTRY)


def make_detector(alerts: AlertSettings) -> Detector:
    """The detector chosen by ``alerts.alert_detector``, configured from the Alerts settings."""
    window_s = alerts.alert_window_s
    halflife = max(1.0, alerts.alert_baseline_halflife_s / window_s)
    common: dict[str, float] = dict(
        window_s=window_s,
        halflife_windows=halflife,
        min_ratio=alerts.alert_min_ratio,
        min_delta=alerts.alert_min_delta,
        min_volume=alerts.alert_min_volume,
    )
    threshold = alerts.alert_threshold  # None: the detector's benchmarked default
    if alerts.alert_detector == "ewma_z":
        short = max(1, round(alerts.alert_short_s / window_s))
        if threshold is not None:
            common["z_threshold"] = threshold
        return EwmaZ(short_windows=short, drift_var=alerts.alert_drift_var, **common)  # type: ignore[arg-type]
    if alerts.alert_detector == "cusum":
        if threshold is not None:
            common["threshold"] = threshold
        return BinomialCusum(**common)  # type: ignore[arg-type]
    raise ValueError(f"alert_detector must be one of {', '.join(DETECTORS)}, got {alerts.alert_detector!r}")


__all__ = [
    "BinomialCusum",
    "Counts",
    "DETECTORS",
    "Detector",
    "EwmaZ",
    "REGISTRY",
    "TopicState",
    "WindowedDetector",
    "make_detector",
]
