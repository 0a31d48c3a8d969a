"""Binomial z-score of a short sliding window against an EWMA baseline of the same topic.

Per topic: the last ``short_windows`` tumbling windows are summed (``k`` negatives of ``n``
items), and so are the last ``fast_windows`` (a second, faster scale for big jumps); the
baseline is the exponentially decayed share of the windows *before* them (so a spike never
raises its own bar); the score is the quasi-binomial z::

    z = signed-root binomial LR z of (k, n, p0) / sqrt(spread)
    spread = sum_i n_i * (1 + (n_i - 1) * rho) / n  +  n * p0 * (1 - p0) * (v_base + drift_var)

(``rho``: the topic's intra-window correlation, see :class:`alerts.base.Baseline`.) The second
term is the baseline's own error, common to every item of the window and so growing with ``n``:
``v_base`` is the EWMA's sampling variance in logit units (large on a quiet topic, small on a busy
one: the volume-adaptive part) and ``drift_var`` how far a topic's level moves, in logit units
squared, between the baseline's centre of mass (~1.5 h back) and now. Without it the busiest
topics made the false alarms whenever their share drifted; with it (``drift_var = 0.02``, i.e.
~0.14 in logit) the threshold could come down from 5.5 to 5.0 with no false alarm on three
benchmark seeds (``bench/RESULTS.md``, Alerts).

An alarm needs, on either scale: ``z >= z_threshold`` (surprising), the odds of a negative
item up ``min_ratio``-fold and the share up by ``min_delta`` (big enough to matter: a topic
steady at 50 % never qualifies, 1 % -> 3 % is not news; odds, because a 60 % topic cannot
double), and ``n >= min_volume`` (a handful of items is no evidence).
It clears with hysteresis (``z < z_clear`` or the rise halves) so it does not flap.

Example::

    >>> from datetime import datetime, timedelta, timezone
    >>> det = EwmaZ(window_s=60)
    >>> t0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
    >>> for i in range(180):                       # three calm hours, 10 % negative
    ...     _ = det.observe(t0 + timedelta(minutes=i), {"banking": (2, 20)})
    >>> alerts = []
    >>> for i in range(180, 190):                  # the share jumps to 60 % at 20 items/minute
    ...     alerts += det.observe(t0 + timedelta(minutes=i), {"banking": (12, 20)})
    >>> [(a.topic, a.severity) for a in alerts][:1]
    [('banking', 'warning')]
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from finsent.alerts.base import Baseline, TopicState, WindowedDetector, binomial_z, decay_for, make_alert, risen
from finsent.core.events import Alert


@dataclass(slots=True)
class _Topic:
    state: TopicState
    baseline: Baseline
    recent: deque[tuple[int, int]] = field(default_factory=deque)


class EwmaZ(WindowedDetector):
    """Sliding-window binomial z-test against an EWMA baseline (see the module docstring)."""

    name = "ewma_z"

    def __init__(
        self,
        window_s: int = 60,
        short_windows: int = 5,
        fast_windows: int = 2,
        halflife_windows: float = 60.0,
        z_threshold: float = 5.0,
        z_critical: float = 11.0,
        min_ratio: float = 2.0,
        min_delta: float = 0.1,
        min_volume: int = 30,
        min_baseline: float = 200.0,
        drift_var: float = 0.02,
        noise_decay: float = 0.999,
    ) -> None:
        if short_windows < 1:
            raise ValueError("short_windows must be >= 1")
        super().__init__(window_s)
        self.short_windows = short_windows
        #: window counts tested: a fast scale catches big jumps sooner, the short one moderate rises
        self.scales = tuple(sorted({max(1, min(fast_windows, short_windows)), short_windows}))
        self.decay = decay_for(halflife_windows)
        self.z_threshold = z_threshold
        self.z_clear = z_threshold / 2.0
        self.z_critical = z_critical
        self.min_ratio = min_ratio
        self.min_delta = min_delta
        self.min_volume = min_volume
        self.min_baseline = min_baseline
        if drift_var < 0 or not 0.0 < noise_decay < 1.0:
            raise ValueError("drift_var must be >= 0 and noise_decay in (0, 1)")
        self.drift_var = drift_var
        self.noise_decay = noise_decay

    def _new_topic(self, topic: str) -> _Topic:
        return _Topic(TopicState(topic), Baseline(self.decay, noise_decay=self.noise_decay))

    def _forgettable(self, tp: _Topic) -> bool:
        return tp.baseline.tot < 1e-3 and not any(t for _, t in tp.recent)

    def _step(self, tp: _Topic, window_end: datetime, neg: int, tot: int) -> Alert | None:
        tp.recent.append((neg, tot))
        if len(tp.recent) > self.short_windows:
            old_neg, old_tot = tp.recent.popleft()
            # noise is learnt in control only: not while a rise is building (it would teach that spikes are noise)
            calm = not tp.state.active and tp.state.score < self.z_clear
            tp.baseline.update(old_neg, old_tot, learn_noise=calm)
        return self._judge(tp, window_end)

    def _scale(self, tp: _Topic, windows: int, p0: float) -> tuple[float, int, int, bool]:
        """(z, negatives, items, qualifies) over the last ``windows`` windows."""
        recent = list(tp.recent)[-windows:]
        k = sum(n for n, _ in recent)
        n = sum(t for _, t in recent)
        if n == 0:
            return 0.0, 0, 0, False
        base = tp.baseline
        spread = sum(t * base.variance_factor(t) for _, t in recent) / n  # beta-binomial widening
        # the baseline is an estimate of a level that has moved since: its error is common to the whole window
        spread += n * p0 * (1.0 - p0) * (base.logit_variance() + self.drift_var)
        z = binomial_z(k, n, p0) / spread**0.5
        ok = z >= self.z_threshold and n >= self.min_volume and risen(k / n, p0, self.min_ratio, self.min_delta)
        return z, k, n, ok

    def _judge(self, tp: _Topic, window_end: datetime) -> Alert | None:
        st, base = tp.state, tp.baseline
        p0 = base.share() if base.tot >= self.min_baseline else None
        st.baseline_share = p0
        if p0 is None or not any(t for _, t in tp.recent):
            st.score, st.negative_share, st.volume = 0.0, 0.0, 0
            st.active, st.severity, st.since = False, "", None
            return None
        results = [(self._scale(tp, w, p0), w) for w in self.scales]
        # the scale that speaks loudest: qualifying ones first, then the highest z
        (z, k, n, ok), w = max(results, key=lambda r: (r[0][3], r[0][0]))
        st.score, st.negative_share, st.volume = z, k / n if n else 0.0, n
        was_severity = st.severity if st.active else ""
        if not st.active:
            if ok:
                st.active, st.since = True, window_end
        elif z < self.z_clear or not risen(k / n if n else 0.0, p0, 1.0, self.min_delta / 2):
            st.active, st.severity, st.since = False, "", None
            return None
        if not st.active:
            return None
        critical = z >= self.z_critical and risen(k / n, p0, self.min_ratio, self.min_delta)
        st.severity = "critical" if critical else (was_severity or "warning")
        if st.severity != was_severity:  # a new alarm, or an escalation to critical
            return make_alert(self.name, st, window_end, self.window_s * min(w, len(tp.recent)), k, n)
        return None
