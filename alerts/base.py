"""What every spike detector shares: the per-window input, the per-topic state, the interface.

A detector is fed *closed* tumbling windows in time order: ``observe(window_end, counts)`` where
``counts`` maps topic -> ``(negative, total)`` items of that window. Topics absent from ``counts``
had no items in the window (they are still advanced, so sliding sums and baselines stay aligned
to time rather than to traffic). It returns the :class:`~finsent.core.events.Alert` objects that *start*
(or escalate from warning to critical) at this window; the ongoing state of every topic is in
``states()`` (what the gauges export and what the Alertmanager notifier re-posts while active).

Why windows and not items: the statistics need counts anyway, windows make several workers
agree (the same topic always lands on the same owner and the same window boundaries), and the
same code runs on live streams and on counts read back from ClickHouse (``alerts.runner``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from finsent.core.events import Alert, format_time, stable_id, utcnow

log = logging.getLogger(__name__)

Counts = Mapping[str, tuple[int, int]]


@dataclass(slots=True)
class TopicState:
    """What a detector believes about one topic after the last window (exported as gauges)."""

    topic: str
    score: float = 0.0
    active: bool = False
    severity: str = ""
    negative_share: float = 0.0
    baseline_share: float | None = None
    volume: int = 0  # items in the detection window (the short window / the current CUSUM run)
    since: datetime | None = None  # when the current alarm started


class Detector(Protocol):
    name: str
    window_s: int

    def observe(self, window_end: datetime, counts: Counts) -> list[Alert]: ...
    def states(self) -> dict[str, TopicState]: ...


class WindowedDetector:
    """What every detector shares: per-topic state, one window at a time, idle topics forgotten.

    A subclass says how to start a topic (:meth:`_new_topic`, an object with a ``state``
    :class:`TopicState`), how one window of ``(negatives, items)`` moves it (:meth:`_step`,
    returning a new or escalated alert), and when an idle topic may be forgotten
    (:meth:`_forgettable`; that bounds memory over topic churn). Windows must come in order:
    :func:`check_window` refuses one that goes back in time or malformed counts.
    """

    name: str = ""

    def __init__(self, window_s: int) -> None:
        if window_s < 1:
            raise ValueError("window_s must be >= 1")
        self.window_s = window_s
        self._topics: dict[str, Any] = {}
        self._last_end: datetime | None = None

    def states(self) -> dict[str, TopicState]:
        return {t: s.state for t, s in self._topics.items()}

    def observe(self, window_end: datetime, counts: Counts) -> list[Alert]:
        self._last_end = check_window(counts, window_end, self._last_end)
        alerts: list[Alert] = []
        for topic in set(self._topics) | set(counts):
            tp = self._topics.get(topic)
            if tp is None:
                tp = self._topics[topic] = self._new_topic(topic)
            neg, tot = (int(x) for x in counts.get(topic, (0, 0)))
            alert = self._step(tp, window_end, neg, tot)
            if alert is not None:
                alerts.append(alert)
            if self._forgettable(tp):
                del self._topics[topic]
        return alerts

    def _new_topic(self, topic: str) -> Any:
        raise NotImplementedError

    def _step(self, tp: Any, window_end: datetime, neg: int, tot: int) -> Alert | None:
        raise NotImplementedError

    def _forgettable(self, tp: Any) -> bool:
        raise NotImplementedError


def binomial_z(negative: float, total: float, p0: float) -> float:
    """Signed-root likelihood-ratio z of ``negative`` of ``total`` against share ``p0``.

    Not the Wald form ``(k - n p0) / sqrt(n p0 (1 - p0))``: at small expected counts (a 3 %
    topic, 40 items: 1.2 expected) that normal approximation puts 7 negatives at z = 5.5 when
    the exact tail is ~1e-4 -- a false alarm a day per topic. The signed root of the binomial
    deviance has near-exact tails down to a handful of expected events.
    """
    if total <= 0:
        return 0.0
    k, n = float(negative), float(total)
    expected = n * p0
    dev = 0.0
    if k > 0:
        dev += k * math.log(k / expected)
    if n - k > 0:
        dev += (n - k) * math.log((n - k) / (n - expected))
    z = math.sqrt(max(0.0, 2.0 * dev))
    return z if k >= expected else -z


def risen(share: float, p0: float, min_ratio: float, min_delta: float) -> bool:
    """Is ``share`` a rise worth an alarm over baseline ``p0``? Odds ratio >= min_ratio and delta >= min_delta.

    Odds, not shares: "2x" cannot apply to a topic at 60 % (it would need 120 %), but 60 % -> 75 %
    is the same odds ratio as 10 % -> 18 %. At low baselines the two agree (min_delta governs).
    """
    if share - p0 < min_delta:
        return False
    if share >= 1.0:
        return True
    return share / (1.0 - share) >= min_ratio * p0 / (1.0 - p0)


def required_share(p0: float, min_ratio: float, min_delta: float) -> float:
    """The smallest share that :func:`risen` accepts over ``p0``."""
    odds = min_ratio * p0 / (1.0 - p0)
    return max(odds / (1.0 + odds), p0 + min_delta)


def clamp(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


def check_window(counts: Counts, window_end: datetime, last_end: datetime | None) -> datetime:
    """Validate one window for a detector's ``observe``: sane counts, strictly after the last window.

    Returns ``window_end``, the detector's new ``_last_end``. Shared by every detector so the input rules
    are the same whichever one runs.
    """
    check_counts(counts)
    if last_end is not None and window_end <= last_end:
        raise ValueError(f"windows must arrive in order: {window_end} after {last_end}")
    return window_end


def check_counts(counts: Counts) -> None:
    """Reject impossible counts early with a message that names the topic (bad input -> clear error)."""
    for topic, (neg, tot) in counts.items():
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"topic must be a non-empty string, got {topic!r}")
        if neg < 0 or tot < 0 or neg > tot:
            raise ValueError(f"topic {topic!r}: need 0 <= negative <= total, got negative={neg} total={tot}")


def make_alert(
    detector: str,
    state: TopicState,
    window_end: datetime,
    span_s: int,
    negative: int,
    total: int,
    fired_at: datetime | None = None,
) -> Alert:
    """An :class:`Alert` for ``state``; the id is stable per (detector, topic, window start, severity).

    Replays of the same counts give the same ids (the store dedupes them), and an escalation from
    warning to critical within the same alarm is a second alert, not an overwrite of the first.
    """
    start = window_end - timedelta(seconds=span_s)
    return Alert(
        topic=state.topic,
        fired_at=fired_at or utcnow(),
        window_start=start,
        window_end=window_end,
        negative=int(negative),
        total=int(total),
        negative_share=round(negative / total, 6) if total else 0.0,
        baseline_share=round(state.baseline_share or 0.0, 6),
        score=round(state.score, 4),
        detector=detector,
        severity=state.severity or "warning",
        id=stable_id("alert", detector, state.topic, format_time(start) or "", state.severity or "warning"),
    )


def with_evidence(store: Any, alerts: Sequence[Alert], headlines: int = 5) -> list[Alert]:
    """``alerts`` with what a reader needs to act on a topic alert (issue 25), read from the store once each:
    ``evidence["headlines"]``, the most negative items of the topic in the alert's window, and ``model_version``,
    the version that scored most of the window's items (``evidence["model_versions"]`` has them all).

    Why here and not in the detectors: they see counts only, and must stay cheap and replayable. Entity alerts
    (evidence from their own detector) and alerts that already carry both pass through unchanged. The evidence
    is a courtesy: a store that cannot answer (down, not yet open, ``None``) leaves the alert as raised, with a
    warning, and the alert still goes out.
    """
    if store is None:
        return list(alerts)
    out: list[Alert] = []
    for a in alerts:
        if a.kind != "topic" or (a.evidence and a.model_version):
            out.append(a)
            continue
        try:
            ev = store.topic_alert_evidence(a.topic, a.window_start, a.window_end, headlines)
        except Exception as exc:  # noqa: BLE001 -- any store failure: the alert goes out without evidence
            log.warning(
                "no headlines for the %s alert on %s (%s); it goes out without them",
                a.severity,
                a.topic,
                " ".join(str(exc).split())[:200],
            )
            out.append(a)
            continue
        versions = ev.get("model_versions") or {}
        out.append(
            replace(a, evidence={**(a.evidence or {}), **ev}, model_version=a.model_version or next(iter(versions), ""))
        )
    return out


@dataclass(slots=True)
class Baseline:
    """A topic's recent negative share: exponentially decayed sums of negatives and totals.

    Sums are decayed per *window* (not per item), so the baseline forgets with time even when a
    topic goes quiet, and its share is a ratio of sums (never an average of ratios: a window of 2
    items weighs 2, not as much as a window of 200).

    ``rho`` is the intra-window correlation of a beta-binomial: real news traffic is burstier
    than independent coin flips (one story brings ten near-identical items within a minute), so
    a window of ``n`` items has variance ``n p (1-p) (1 + (n-1) rho)``, not ``n p (1-p)``.
    Ignoring it turns every busy-minute burst into an alarm; a single overdispersion factor does
    not fit either, because the excess grows with the window's volume. ``rho`` is estimated by
    moments from in-control windows (decayed sums, winsorised so one real spike cannot teach the
    detector that spikes are noise), starting from a small prior.

    The moment sums forget slowly (``noise_decay`` per window: 0.999 is a ~700-window half-life,
    about 12 h of 1-minute windows). One window's squared residual is a very noisy estimate of
    its variance, and with a ~70-window memory (0.99, the first version) the per-topic ``rho``
    wandered between 0 and twice its value (5th-95th percentile on the benchmark's traffic): the
    hours when it sat near 0 treated every busy minute as binomial and made the false alarms.
    """

    decay: float
    p_floor: float = 0.02
    rho_max: float = 0.2
    neg: float = 0.0
    tot: float = 0.0
    #: decayed sums of n and n^2 with the *squared* weights: the baseline share's own sampling variance
    sq_tot: float = 0.0
    sq_tot2: float = 0.0
    rho_num: float = 0.02 * 900.0  # prior: rho = 0.02 with the weight of one 100-item window
    rho_den: float = 900.0
    windows: int = 0
    noise_decay: float = 0.999

    def share(self) -> float | None:
        if self.tot <= 0:
            return None
        return clamp(self.neg / self.tot, self.p_floor, 1.0 - self.p_floor)

    @property
    def rho(self) -> float:
        return clamp(self.rho_num / self.rho_den, 0.0, self.rho_max)

    def logit_variance(self) -> float:
        """Sampling variance of the baseline share, in logit units (delta method).

        The share is a weighted mean of windows: ``Var = p (1-p) sum w_j^2 n_j (1 + (n_j-1) rho) / (sum w_j n_j)^2``,
        divided by ``(p (1-p))^2`` for logit units. Large for a quiet topic, small for a busy one.
        """
        p = self.share()
        if p is None or self.tot <= 0:
            return 0.0
        spread = self.sq_tot + self.rho * max(0.0, self.sq_tot2 - self.sq_tot)
        return spread / (self.tot * self.tot * p * (1.0 - p))

    def variance_factor(self, n: int) -> float:
        """How much wider than binomial the count of a window of ``n`` items is."""
        return 1.0 + max(0, n - 1) * self.rho

    def update(self, neg: int, tot: int, learn_noise: bool = True) -> None:
        p0 = self.share()
        if learn_noise and p0 is not None and tot >= 2 and self.tot >= 50:
            v = tot * p0 * (1.0 - p0)
            r2 = min(25.0, (neg - tot * p0) ** 2 / v)  # winsorised
            keep = self.noise_decay
            self.rho_num = keep * self.rho_num + (r2 - 1.0) * v
            self.rho_den = keep * self.rho_den + (tot - 1) * v
        self.neg = self.neg * self.decay + neg
        self.tot = self.tot * self.decay + tot
        d2 = self.decay * self.decay
        self.sq_tot = self.sq_tot * d2 + tot
        self.sq_tot2 = self.sq_tot2 * d2 + tot * tot
        self.windows += 1


def decay_for(halflife_windows: float) -> float:
    """Per-window decay factor whose weight halves after ``halflife_windows`` windows."""
    if halflife_windows <= 0:
        raise ValueError("baseline half-life must be positive")
    return 0.5 ** (1.0 / halflife_windows)
