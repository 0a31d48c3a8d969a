"""Pure-logic tests of the spike detectors and the Python model of the Prometheus rule."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from finsent.alerts.base import binomial_z
from finsent.alerts.cusum import BinomialCusum
from finsent.alerts.detector import make_detector
from finsent.alerts.ewma_z import EwmaZ
from finsent.alerts.prom_rule import PromRuleParams, evaluate
from finsent.core.errors import ConfigError
from finsent.core.settings import load_settings

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)  # noqa: UP017
DETECTORS = [EwmaZ, BinomialCusum]


def feed(det, series, topic="banking", start=0):
    """Feed (neg, tot) per minute; return [(minute index, alert)]."""
    out = []
    for i, (neg, tot) in enumerate(series, start=start):
        for a in det.observe(T0 + timedelta(minutes=i + 1), {topic: (neg, tot)} if tot else {}):
            out.append((i, a))
    return out


def noisy(rng, minutes, share, rate):
    tot = rng.poisson(rate, minutes)
    return list(zip(rng.binomial(tot, share).tolist(), tot.tolist(), strict=True))


@pytest.mark.parametrize("cls", DETECTORS)
def test_issue_example_spike_is_detected_within_minutes(cls):
    rng = np.random.default_rng(0)
    det = cls()
    assert feed(det, noisy(rng, 240, 0.10, 20)) == []
    hits = feed(det, noisy(rng, 15, 0.60, 20), start=240)
    assert hits, "a 10% -> 60% jump at 20 items/min must alarm"
    minute, alert = hits[0]
    assert minute - 240 + 1 <= 4
    assert alert.topic == "banking" and alert.detector == det.name
    assert alert.negative_share > 0.4 and 0.05 < alert.baseline_share < 0.15
    assert det.states()["banking"].active


@pytest.mark.parametrize("cls", DETECTORS)
def test_three_x_rise_at_forty_per_minute_within_five_minutes(cls):
    rng = np.random.default_rng(1)
    det = cls()
    feed(det, noisy(rng, 240, 0.10, 40))
    hits = feed(det, [(12, 40)] * 15, start=240)  # exactly 3x: the benchmark covers noisy and lower volumes
    assert hits and hits[0][0] - 240 + 1 <= 5


@pytest.mark.parametrize("cls", DETECTORS)
def test_chronically_negative_topic_never_alarms(cls):
    rng = np.random.default_rng(2)
    det = cls()
    assert feed(det, noisy(rng, 3 * 1440, 0.5, 20)) == []


@pytest.mark.parametrize("cls", DETECTORS)
def test_a_handful_of_items_is_not_a_spike(cls):
    rng = np.random.default_rng(3)
    det = cls()
    feed(det, noisy(rng, 600, 0.1, 1.0))  # a quiet topic, ~1 item a minute
    # every item negative for 10 minutes: still only ~10 items, under the volume floor of 30
    assert feed(det, [(n, n) for n in rng.poisson(1.0, 10).tolist()], start=600) == []


@pytest.mark.parametrize("cls", DETECTORS)
def test_alarm_clears_after_the_spike_and_fires_once(cls):
    det = cls()
    feed(det, [(2, 20)] * 240)
    hits = feed(det, [(12, 20)] * 10, start=240)
    assert [a.severity for _, a in hits][0] == "warning"
    assert len({a.id for _, a in hits}) == len(hits) <= 2  # a warning, maybe one escalation
    feed(det, [(2, 20)] * 30, start=250)
    assert not det.states()["banking"].active


@pytest.mark.parametrize("cls", DETECTORS)
def test_bad_input_is_rejected_with_the_topic_named(cls):
    det = cls()
    with pytest.raises(ValueError, match="banking"):
        det.observe(T0, {"banking": (5, 3)})
    det.observe(T0, {"banking": (1, 3)})
    with pytest.raises(ValueError, match="in order"):
        det.observe(T0, {"banking": (1, 3)})


def test_signed_root_z_has_honest_tails_at_small_counts():
    # 7 negatives where 1.2 are expected: Wald says z~5.5, the exact tail is ~1e-4 (z~3.7)
    z = binomial_z(7, 49, 0.024)
    assert 3.0 < z < 4.5
    assert binomial_z(1, 49, 0.024) < 0
    assert abs(binomial_z(60, 200, 0.1) - binomial_z(60, 200, 0.1)) == 0


def test_make_detector_reads_the_settings():
    det = make_detector(load_settings(alert_detector="cusum", alert_threshold=7.5, alert_min_volume=11).alerts)
    assert isinstance(det, BinomialCusum) and det.threshold == 7.5 and det.min_volume == 11
    det = make_detector(load_settings(alert_short_s=180, alert_window_s=60, alert_drift_var=0.05).alerts)
    assert isinstance(det, EwmaZ) and det.short_windows == 3 and det.drift_var == 0.05
    with pytest.raises(ConfigError, match="FINSENT_ALERT_DETECTOR.*ewma_z"):
        make_detector(load_settings(alert_detector="magic").alerts)


def test_prometheus_rule_model_fires_after_for_and_not_on_flat_traffic():
    p = PromRuleParams(for_="1m")
    neg = np.array([[2] * 120 + [12] * 10, [10] * 130])
    tot = np.array([[20] * 130, [20] * 130])
    sev = evaluate(neg, tot, p)
    first = int(np.argmax(sev[0] > 0))
    assert 120 <= first <= 123  # condition true at 120/121, held one more evaluation for `for: 1m`
    assert sev[0, 119] == 0 and sev[1].max() == 0  # flat 50 % topic never fires
    sev0 = evaluate(neg, tot, PromRuleParams(for_="0s"))
    assert int(np.argmax(sev0[0] > 0)) == first - 1


@pytest.mark.parametrize("cls", DETECTORS)
def test_chronic_topic_jumping_well_above_its_level_alarms(cls):
    """50 % -> 90 % cannot be a 2x share, but it is a 9x rise in the odds: a real spike."""
    rng = np.random.default_rng(4)
    det = cls()
    assert feed(det, noisy(rng, 240, 0.5, 30)) == []
    hits = feed(det, noisy(rng, 10, 0.9, 30), start=240)
    assert hits and hits[0][0] - 240 + 1 <= 5


def betabinomial(rng, minutes, share, rate, concentration=60.0):
    """Overdispersed minutes: each minute's share ~ Beta around ``share`` (intra-minute rho = 1/(c+1))."""
    tot = rng.poisson(rate, minutes)
    p = rng.beta(share * concentration, (1 - share) * concentration, minutes)
    return list(zip(rng.binomial(tot, p).tolist(), tot.tolist(), strict=True))


def test_baseline_overdispersion_estimate_is_stable_over_hours():
    """rho is learnt from a long memory: it must not wander to 0 (which made busy minutes look binomial)."""
    from finsent.alerts.base import Baseline, decay_for

    rng = np.random.default_rng(7)
    base = Baseline(decay_for(60.0))
    rhos = []
    for i, (neg, tot) in enumerate(betabinomial(rng, 3000, 0.15, 30)):
        base.update(neg, tot)
        if i >= 600:
            rhos.append(base.rho)
    lo, hi = np.percentile(rhos, [5, 95])
    true = 1 / 61
    assert 0.5 * true < lo and hi < 1.6 * true, (lo, hi)


def test_baseline_logit_variance_matches_the_weighted_mean_formula():
    from finsent.alerts.base import Baseline, decay_for

    d = decay_for(60.0)
    base = Baseline(d)
    for _ in range(2000):
        base.update(4, 40, learn_noise=False)
    p, n, rho = base.share(), 40, base.rho
    # steady state of sum d^2j n vf / (sum d^j n)^2, in logit units: (1-d)/(1+d) * vf / (n p (1-p))
    expected = (1 - d) / (1 + d) * (1 + (n - 1) * rho) / (n * p * (1 - p))
    assert base.logit_variance() == pytest.approx(expected, rel=1e-6)
    assert Baseline(d).logit_variance() == 0.0


def test_ewma_z_score_includes_the_baselines_own_error():
    """z = LR z / sqrt(window spread + n p0 (1-p0) (baseline sampling variance + drift_var))."""
    series = [(6, 60)] * 300 + [(13, 60)] * 5  # 10 % for five hours, then 21.7 % for five minutes
    scores = {}
    for drift in (0.0, 0.02):
        det = EwmaZ(drift_var=drift, z_threshold=50)
        feed(det, series)
        tp = det._topics["banking"]
        p0, base = tp.state.baseline_share, tp.baseline
        k, n = 65, 300
        spread = 1 + (60 - 1) * base.rho + n * p0 * (1 - p0) * (base.logit_variance() + drift)
        assert tp.state.score == pytest.approx(binomial_z(k, n, p0) / spread**0.5, rel=1e-9)
        scores[drift] = tp.state.score
    # the drift term matters most where the window is big: here it takes z from ~6 to ~4.5
    assert scores[0.0] > 5.5 and scores[0.02] < 5.0


def test_ewma_z_is_quiet_on_overdispersed_busy_traffic_and_catches_a_5x_rise():
    rng = np.random.default_rng(11)
    det = EwmaZ()
    assert feed(det, betabinomial(rng, 24 * 60, 0.1, 40)) == []  # a day of busy, bursty, calm traffic
    hits = feed(det, betabinomial(rng, 10, 0.5, 40), start=24 * 60)
    assert hits and hits[0][0] - 24 * 60 + 1 <= 3


def test_prometheus_rule_model_keeps_firing_for_five_minutes_after_the_condition_ends():
    neg = np.array([[2] * 120 + [12] * 10 + [2] * 40])
    tot = np.array([[20] * 170])
    held = evaluate(neg, tot, PromRuleParams())
    bare = evaluate(neg, tot, PromRuleParams(keep_firing_for="0s"))
    last_bare, last_held = int(np.nonzero(bare[0])[0].max()), int(np.nonzero(held[0])[0].max())
    assert last_held == last_bare + 5  # as Prometheus: resolved on the 6th evaluation without the condition
    assert int(np.argmax(held[0] > 0)) == int(np.argmax(bare[0] > 0))  # the start is unchanged
    assert (held[0] >= bare[0]).all()  # keeping never drops a firing minute
