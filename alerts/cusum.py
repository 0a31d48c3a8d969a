"""Binomial CUSUM: accumulate the log-likelihood ratio "risen share" vs "baseline share".

Per topic and window with ``k`` negatives of ``n`` items, against baseline share ``p0`` (EWMA of
earlier windows, as in :mod:`finsent.alerts.ewma_z`) and the smallest rise worth an alarm
``p1 = max(odds(p0) * min_ratio as a share, p0 + min_delta)``::

    S <- max(0, S + (k*log(p1/p0) + (n-k)*log((1-p1)/(1-p0))) / (1 + (n-1)*rho))

(the quasi-likelihood of a beta-binomial window: ``rho`` is the topic's intra-window
correlation, see :class:`alerts.base.Baseline`)

S drifts to 0 under the baseline and climbs at a rate proportional to volume under a rise, so
it is the optimal sequential test for a step change of at least that size (Page 1954): a big
rise at high volume crosses ``threshold`` in one window, a moderate one in a few. A run of a
handful of items cannot alarm: the items counted since S last left 0 must reach ``min_volume``.
The alarm clears when S falls back to 0; S is capped at ``2*threshold`` so that happens within
a few windows of the spike ending. A chronically negative topic has ``p0`` near its level, so
only a rise *above its own* level counts.

Example::

    >>> from datetime import datetime, timedelta, timezone
    >>> det = BinomialCusum(window_s=60)
    >>> t0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
    >>> for i in range(180):                       # three calm hours, 10 % negative
    ...     _ = det.observe(t0 + timedelta(minutes=i), {"banking": (2, 20)})
    >>> alerts = []
    >>> for i in range(180, 190):                  # the share jumps to 30 % (3x) at 20 items/minute
    ...     alerts += det.observe(t0 + timedelta(minutes=i), {"banking": (6, 20)})
    >>> [(a.topic, (a.window_end - t0).seconds // 60 - 180, a.severity) for a in alerts]  # minutes after the jump
    [('banking', 5, 'warning'), ('banking', 9, 'critical')]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from finsent.alerts.base import Baseline, TopicState, WindowedDetector, clamp, decay_for, make_alert, required_share
from finsent.core.events import Alert


@dataclass(slots=True)
class _Topic:
    state: TopicState
    baseline: Baseline
    s: float = 0.0
    run_neg: int = 0  # items accumulated since S last left 0
    run_tot: int = 0
    run_windows: int = 0
    idle: int = 0


class BinomialCusum(WindowedDetector):
    """One-sided binomial CUSUM against an EWMA baseline (see the module docstring)."""

    name = "cusum"

    def __init__(
        self,
        window_s: int = 60,
        halflife_windows: float = 60.0,
        threshold: float = 12.0,
        critical: float | None = None,
        min_ratio: float = 2.0,
        min_delta: float = 0.1,
        min_volume: int = 30,
        min_baseline: float = 200.0,
        p1_max: float = 0.95,
    ) -> None:
        if threshold <= 0:
            raise ValueError("threshold must be > 0")
        super().__init__(window_s)
        self.decay = decay_for(halflife_windows)
        self.threshold = threshold
        self.cap = 2.0 * threshold
        self.critical = critical if critical is not None else 1.75 * threshold
        self.min_ratio = min_ratio
        self.min_delta = min_delta
        self.min_volume = min_volume
        self.min_baseline = min_baseline
        self.p1_max = p1_max

    def _new_topic(self, topic: str) -> _Topic:
        return _Topic(TopicState(topic), Baseline(self.decay))

    def _forgettable(self, tp: _Topic) -> bool:
        return tp.baseline.tot < 1e-3 and tp.s == 0.0

    def _step(self, tp: _Topic, window_end: datetime, neg: int, tot: int) -> Alert | None:
        alert = self._score(tp, window_end, neg, tot)
        calm = not tp.state.active and tp.s < self.threshold / 2  # noise: learnt in control only
        tp.baseline.update(neg, tot, learn_noise=calm)
        tp.idle = tp.idle + 1 if tot == 0 else 0
        return alert

    def _score(self, tp: _Topic, window_end: datetime, neg: int, tot: int) -> Alert | None:
        st, base = tp.state, tp.baseline
        p0 = base.share() if base.tot >= self.min_baseline else None
        st.baseline_share = p0
        if p0 is None:
            st.score, st.active, st.severity, st.since, st.volume = 0.0, False, "", None, 0
            return None
        if tot:
            p1 = clamp(required_share(p0, self.min_ratio, self.min_delta), p0 + 1e-6, self.p1_max)
            llr = neg * math.log(p1 / p0) + (tot - neg) * math.log((1.0 - p1) / (1.0 - p0))
            tp.s = min(self.cap, max(0.0, tp.s + llr / base.variance_factor(tot)))
        if tp.s == 0.0:
            tp.run_neg = tp.run_tot = tp.run_windows = 0
        elif tot:
            tp.run_neg += neg
            tp.run_tot += tot
            tp.run_windows += 1
        st.score = tp.s
        st.volume = tp.run_tot
        st.negative_share = tp.run_neg / tp.run_tot if tp.run_tot else 0.0
        was_severity = st.severity if st.active else ""
        if not st.active:
            if tp.s >= self.threshold and tp.run_tot >= self.min_volume:
                st.active, st.since = True, window_end
        elif tp.s == 0.0:
            st.active, st.severity, st.since = False, "", None
        if not st.active:
            return None
        st.severity = "critical" if tp.s >= self.critical else (was_severity or "warning")
        if st.severity != was_severity:
            span = self.window_s * max(1, tp.run_windows)
            return make_alert(self.name, st, window_end, span, tp.run_neg, tp.run_tot)
        return None
