"""One contract, every detector in the registry (like river's estimator checks).

A detector added to ``finsent.alerts.detector.REGISTRY`` is checked here without a line of
test code of its own: calm traffic never alarms, a strong rise does (once, on its topic), an
alarm clears when the rise ends, windows must come in order, malformed counts are refused,
idle topics are forgotten, and the same input gives the same output.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from finsent.alerts.base import WindowedDetector
from finsent.alerts.detector import REGISTRY

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
NAMES = sorted(REGISTRY)


def _calm(det: WindowedDetector, windows: int, seed: int = 0, start: int = 0) -> list:
    rng = np.random.default_rng(seed)
    alerts = []
    for i in range(start, start + windows):
        counts = {"banking": (int(rng.binomial(20, 0.1)), 20), "crypto": (int(rng.binomial(30, 0.2)), 30)}
        alerts += det.observe(T0 + timedelta(minutes=i), counts)
    return alerts


@pytest.mark.parametrize("name", NAMES)
def test_registry_names_match_and_share_the_windowing(name: str) -> None:
    det = REGISTRY[name](window_s=60)
    assert det.name == name and isinstance(det, WindowedDetector) and det.window_s == 60


@pytest.mark.parametrize("name", NAMES)
def test_calm_traffic_never_alarms(name: str) -> None:
    det = REGISTRY[name](window_s=60)
    assert _calm(det, 600) == []
    assert set(det.states()) == {"banking", "crypto"} and not any(s.active for s in det.states().values())


@pytest.mark.parametrize("name", NAMES)
def test_a_strong_rise_alarms_on_its_topic_then_clears(name: str) -> None:
    det = REGISTRY[name](window_s=60)
    _calm(det, 240)
    alerts = []
    for i in range(240, 255):  # 10 % -> 60 % negative on one topic
        alerts += det.observe(T0 + timedelta(minutes=i), {"banking": (12, 20), "crypto": (6, 30)})
    assert alerts and {a.topic for a in alerts} == {"banking"} and alerts[0].detector == name
    assert det.states()["banking"].active and not det.states()["crypto"].active
    assert alerts[0].severity == "warning" and alerts[0].window_end <= T0 + timedelta(minutes=255)
    _calm(det, 120, seed=1, start=255)
    assert not det.states()["banking"].active


@pytest.mark.parametrize("name", NAMES)
def test_windows_must_come_in_order_and_counts_be_sane(name: str) -> None:
    det = REGISTRY[name](window_s=60)
    det.observe(T0, {"banking": (1, 10)})
    with pytest.raises(ValueError):
        det.observe(T0 - timedelta(minutes=1), {"banking": (1, 10)})
    for bad in ({"banking": (11, 10)}, {"banking": (-1, 10)}):
        with pytest.raises(ValueError):
            det.observe(T0 + timedelta(minutes=5), bad)


@pytest.mark.parametrize("name", NAMES)
def test_idle_topics_are_forgotten(name: str) -> None:
    det = REGISTRY[name](window_s=60, halflife_windows=5.0)
    det.observe(T0, {"one-off": (1, 3)})
    for i in range(1, 2000):
        det.observe(T0 + timedelta(minutes=i), {})
        if "one-off" not in det.states():
            break
    assert "one-off" not in det.states()


@pytest.mark.parametrize("name", NAMES)
def test_same_input_same_output(name: str) -> None:
    runs = []
    for _ in range(2):
        det = REGISTRY[name](window_s=60)
        _calm(det, 200)
        out = []
        for i in range(200, 210):
            out += det.observe(T0 + timedelta(minutes=i), {"banking": (12, 20)})
        runs.append([(a.topic, a.severity, a.window_end, round(a.score, 9)) for a in out])
    assert runs[0] == runs[1] and runs[0]
