"""Synthetic scored traffic for the detection benchmark: per-topic per-minute (negative, total) counts.

Realism that matters for false alarms, each modelled on purpose:

* volumes spanning three orders of magnitude (busy topics ~20-60 items/min at peak, quiet ones
  well under one), with a daily cycle peaking in US market hours and quiet weekends;
* volume bursts: per-minute rates are gamma-distributed around the mean (news comes in clumps);
* negative share that drifts (a mean-reverting walk in logit space, ~6 h time scale) and has a
  daily pattern, so a fixed threshold would fire and a tracking baseline must follow it;
* overdispersion: each minute's share is Beta-distributed around the current level (one story
  brings several near-identical items), so plain binomial tests are over-confident;
* chronically negative topics (45-60 % negative) that must never alarm on their level.

Spikes multiply a topic's negative share by ``size`` (capped at 95 %) for ``duration`` minutes,
volume unchanged (the harder case: real spikes usually also raise volume). They start in the
busier part of the day, half on busy topics, 30 % on medium, 20 % on chronically negative ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: (class, count share, peak items/min range, base negative share range)
TOPIC_CLASSES: tuple[tuple[str, float, tuple[float, float], tuple[float, float]], ...] = (
    ("busy", 0.2, (20.0, 60.0), (0.05, 0.2)),
    ("medium", 0.4, (5.0, 20.0), (0.05, 0.25)),
    ("quiet", 0.2, (0.1, 2.0), (0.05, 0.3)),
    ("chronic", 0.2, (5.0, 30.0), (0.45, 0.6)),
)


@dataclass(frozen=True, slots=True)
class Spike:
    topic: int
    start: int  # first minute (index) of the spike
    duration: int  # minutes
    size: float  # multiplier of the negative share

    @property
    def end(self) -> int:
        return self.start + self.duration


@dataclass(slots=True)
class Traffic:
    """``neg`` and ``tot`` are int arrays of shape (topics, minutes); minute 0 is Monday 00:00 UTC."""

    topics: list[str]
    classes: list[str]
    neg: np.ndarray
    tot: np.ndarray
    share: np.ndarray  # the true (pre-noise) negative share per topic and minute
    spikes: list[Spike]

    @property
    def minutes(self) -> int:
        return int(self.tot.shape[1])


def _season(minutes: np.ndarray) -> np.ndarray:
    """Volume multiplier by time of day and week: peak ~15:00 UTC, nights ~0.3, weekends x0.4."""
    hour = (minutes % 1440) / 60.0
    day = (minutes // 1440) % 7
    daily = 0.3 + 1.0 * np.exp(-(((hour - 15.0) / 4.0) ** 2))
    return daily * np.where(day >= 5, 0.4, 1.0)


def generate(
    n_topics: int = 50,
    days: float = 7.0,
    seed: int = 0,
    spikes: list[tuple[float, int]] | None = None,
    spike_gap_min: int = 360,
    warmup_min: int = 180,
    concentration: float = 60.0,
) -> Traffic:
    """Generate traffic; ``spikes`` is a list of (size, duration) to inject on random non-quiet topics."""
    rng = np.random.default_rng(seed)
    minutes = int(days * 1440)
    t = np.arange(minutes)
    names: list[str] = []
    classes: list[str] = []
    peak = np.empty(n_topics)
    base = np.empty(n_topics)
    bounds = np.cumsum([c[1] for c in TOPIC_CLASSES])
    for i in range(n_topics):
        cls = TOPIC_CLASSES[int(np.searchsorted(bounds, (i + 0.5) / n_topics))]
        classes.append(cls[0])
        names.append(f"{cls[0]}-{i:03d}")
        peak[i] = np.exp(rng.uniform(np.log(cls[2][0]), np.log(cls[2][1])))
        base[i] = rng.uniform(*cls[3])
    season = _season(t)
    rate = peak[:, None] * season[None, :] / 1.3
    rate = rate * rng.gamma(4.0, 0.25, size=rate.shape)  # minute-level volume bursts
    tot = rng.poisson(rate)
    # negative share: logit(base) + OU drift (sd 0.3, tau 6 h) + daily pattern (+-0.2 logit)
    tau, sd = 360.0, 0.3
    a = np.exp(-1.0 / tau)
    eps = rng.normal(0.0, sd * np.sqrt(1 - a * a), size=(n_topics, minutes))
    drift = np.empty_like(eps)
    drift[:, 0] = rng.normal(0.0, sd, size=n_topics)
    for j in range(1, minutes):
        drift[:, j] = a * drift[:, j - 1] + eps[:, j]
    phase = rng.uniform(0, 2 * np.pi, size=n_topics)
    daily = 0.2 * np.sin(2 * np.pi * t[None, :] / 1440.0 + phase[:, None])
    logit = np.log(base / (1 - base))[:, None] + drift + daily
    share = 1.0 / (1.0 + np.exp(-logit))
    injected: list[Spike] = []
    if spikes:
        # half of the spikes on busy topics (where a 5-minute detection is statistically possible),
        # the rest on medium and chronically negative ones; none on quiet topics (below any floor)
        pools = [[i for i, c in enumerate(classes) if c == cls] for cls in ("busy", "medium", "chronic")]
        pools = [pool for pool in pools if pool]
        weights = np.array([0.5, 0.3, 0.2][: len(pools)])
        taken: dict[int, list[tuple[int, int]]] = {}
        order = rng.permutation(len(spikes))  # sizes and durations interleaved, not placed in plan order
        for j in order:
            size, duration = spikes[int(j)]
            for _ in range(2000):
                pool = pools[int(rng.choice(len(pools), p=weights / weights.sum()))]
                topic = int(rng.choice(pool))
                start = int(rng.integers(warmup_min, minutes - duration - 60))
                lo, hi = start - spike_gap_min, start + duration + spike_gap_min  # spikes never overlap baselines
                free = all(e <= lo or s0 >= hi for s0, e in taken.get(topic, []))
                if free and season[start] > 0.6:  # in the busier part of the day
                    break
            else:
                continue
            share[topic, start : start + duration] = np.minimum(0.95, share[topic, start : start + duration] * size)
            taken.setdefault(topic, []).append((start, start + duration))
            injected.append(Spike(topic, start, duration, size))
        injected.sort(key=lambda sp: (sp.topic, sp.start))
    k = concentration
    p = rng.beta(np.maximum(share * k, 1e-3), np.maximum((1 - share) * k, 1e-3))
    neg = rng.binomial(tot, p)
    return Traffic(names, classes, neg.astype(np.int64), tot.astype(np.int64), share, injected)
