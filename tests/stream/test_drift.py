"""Drift: PSI and the retrain advice on fake distributions, ``finsent drift`` on real stores (18.16 and chdb),
and the ``finsent_drift_*`` gauges recomputed by a real worker."""

from __future__ import annotations

import json
import logging
import math
import subprocess
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from finsent.cli import main
from finsent.core.errors import StoreInUse
from finsent.core.events import RawItem, ScoredItem, utcnow
from finsent.core.settings import load_settings
from finsent.stream.drift import (
    EPSILON,
    DriftThresholds,
    PeriodStats,
    compare,
    drift_report,
    psi,
    psi_band,
)
from finsent.stream.drift_agent import DriftMonitor
from finsent.stream.store import open_store
from tests.models.test_labels import chdb_held_by_another_process, finsent_subprocess

REPO = Path(__file__).resolve().parents[2]


def by_hand(ref: dict[str, int], win: dict[str, int]) -> float:
    """PSI written out independently of the module: sum (w - r) ln(w / r), zero shares -> 1e-4."""
    rt, wt = sum(ref.values()), sum(win.values())
    out = 0.0
    for k in set(ref) | set(win):
        r, w = max(ref.get(k, 0) / rt, 1e-4), max(win.get(k, 0) / wt, 1e-4)
        out += (w - r) * math.log(w / r)
    return out


# --- pure -------------------------------------------------------------------------------------------


def test_psi_of_known_distributions() -> None:
    assert psi({"a": 50, "b": 50}, {"a": 5, "b": 5}) == 0.0  # same shares, other volume
    # (0.8 - 0.5) ln(0.8/0.5) + (0.2 - 0.5) ln(0.2/0.5)
    assert psi({"a": 50, "b": 50}, {"a": 80, "b": 20}) == pytest.approx(0.3 * math.log(1.6) + 0.3 * math.log(2.5))
    assert psi({"a": 50, "b": 50}, {"a": 80, "b": 20}) == pytest.approx(psi({"a": 80, "b": 20}, {"a": 50, "b": 50}))
    # a label absent from the reference: its share is EPSILON there, so the PSI is large but finite
    assert EPSILON == 1e-4
    assert psi({"a": 100}, {"a": 50, "b": 50}) == pytest.approx(0.5 * math.log(2) + (0.5 - 1e-4) * math.log(5000))
    assert psi({}, {"a": 1}) is None and psi({"a": 1}, {}) is None
    assert [psi_band(x) for x in (None, 0.05, 0.1, 0.2, 0.25, 3.0)] == [
        "n/a",
        "stable",
        "moderate",
        "moderate",
        "large",
        "large",
    ]


def period(items: dict[tuple[str, str], int], confidence: float = 0.9, low: int = 0) -> PeriodStats:
    now = utcnow()
    p = PeriodStats(now - timedelta(hours=1), now)
    for (s, t), n in items.items():
        p.add(s, t, n, confidence * n, 0)
    p.low = low
    return p


STEADY = {("negative", "Macro"): 100, ("neutral", "Macro"): 150, ("positive", "Earnings"): 150}


def test_steady_predictions_advise_nothing() -> None:
    r = compare(period(STEADY), period({k: v * 2 for k, v in STEADY.items()}), DriftThresholds())
    assert r.enough_data and not r.retrain_advised and r.reasons == [] and r.notes == []
    assert r.psi == {"sentiment": 0.0, "topic": 0.0} and r.confidence_shift == pytest.approx(0.0)


def test_a_moved_topic_distribution_advises_a_retrain_with_its_numbers() -> None:
    moved = {("negative", "Macro"): 100, ("neutral", "Crypto"): 150, ("positive", "Earnings"): 150}
    r = compare(period(STEADY), period(moved), DriftThresholds())
    assert r.retrain_advised and r.psi["sentiment"] == 0.0
    assert r.psi["topic"] == pytest.approx(
        by_hand({"Macro": 250, "Earnings": 150}, {"Macro": 100, "Crypto": 150, "Earnings": 150})
    )
    assert r.reasons == [f"the topic label distribution moved: PSI {r.psi['topic']:.3f} >= 0.25"]
    assert compare(period(STEADY), period(moved), DriftThresholds(psi=10.0)).retrain_advised is False


def test_moderate_psi_is_noted_not_advised() -> None:
    # sentiment shares 0.25/0.375/0.375 -> 0.4/0.3/0.3: PSI about 0.11
    shifted = {("negative", "Macro"): 160, ("neutral", "Macro"): 120, ("positive", "Earnings"): 120}
    r = compare(period(STEADY), period(shifted), DriftThresholds(psi=0.5))
    assert 0.1 <= r.psi["sentiment"] < 0.25 and not r.retrain_advised
    assert r.notes == [f"sentiment PSI {r.psi['sentiment']:.3f}: a moderate shift (0.1-0.25), worth watching"]


def test_falling_confidence_and_more_low_confidence_items_advise_a_retrain() -> None:
    r = compare(period(STEADY, 0.9, low=4), period(STEADY, 0.8, low=80), DriftThresholds())
    assert r.confidence_shift == pytest.approx(-0.1) and r.low_confidence_ratio == pytest.approx(0.2)
    assert r.low_confidence_shift == pytest.approx(0.19)
    assert r.reasons == [
        "mean confidence fell by 0.100 (from 0.900 to 0.800) >= 0.05",
        "the share of low-confidence items (top probability < 0.5) rose from 1.0% to 20.0% (+0.190 >= 0.1)",
    ]
    # a rise in confidence is no reason; thresholds come from the settings
    assert not compare(period(STEADY, 0.8), period(STEADY, 0.9), DriftThresholds()).retrain_advised
    t = DriftThresholds.from_settings(load_settings(drift_confidence_drop=0.2, drift_low_confidence_rise=0.5).drift)
    assert not compare(period(STEADY, 0.9, low=4), period(STEADY, 0.8, low=80), t).retrain_advised


def test_too_few_items_is_no_verdict() -> None:
    moved = {("negative", "Crypto"): 50}
    r = compare(period(STEADY), period(moved), DriftThresholds(min_items=100))
    assert not r.enough_data and not r.retrain_advised and r.psi["topic"] > 1  # computed, not acted on
    assert r.notes == [
        "too few items for a verdict: window 50, reference 400 (at least 100 each, FINSENT_DRIFT_MIN_ITEMS)"
    ]


# --- on real stores -----------------------------------------------------------------------------------


@pytest.fixture(params=["clickhouse", "chdb"])
def store_url(request: pytest.FixtureRequest) -> str:  # as in test_store_engines: both engines, a fresh database
    return request.getfixturevalue(f"{request.param}_db_url")


@pytest.fixture
def store(store_url: str) -> Iterator[Any]:
    s = open_store(store_url)
    s.ensure_schema()
    yield s
    s.close()


def item(i: int, sentiment: str, topic: str, top: float, age: timedelta, version: str = "m1") -> ScoredItem:
    rest = round((1 - top) / 2, 6)
    probs = {s: (top if s == sentiment else rest) for s in ("negative", "neutral", "positive")}
    raw = RawItem(
        id=f"{version}-{i}", source="test-feed", source_type="news", text=f"text {i}", ingested_at=utcnow() - age
    )
    return ScoredItem(raw, sentiment, probs, topic, 0.8, version, utcnow())


REF_MIX = (
    [("negative", "Macro")] * 3
    + [("neutral", "Macro")] * 2
    + [("neutral", "Earnings")] * 2
    + [("positive", "Earnings")] * 3
)
WIN_MIX = (
    [("negative", "Macro")] * 5
    + [("negative", "Markets")] * 1
    + [("neutral", "Markets")] * 2
    + [("positive", "Earnings")] * 2
)


def seed_store(store: Any) -> None:
    """m1: a steady, confident reference two days back; a window an hour back with another mix and half
    of its items unsure; m2 scored fewer items in the window; one m1 item older than the reference."""
    rows = [item(i, *REF_MIX[i % 10], 0.9, timedelta(days=2, minutes=i)) for i in range(300)]
    rows += [
        item(1000 + i, *WIN_MIX[i % 10], 0.45 if i % 2 else 0.9, timedelta(minutes=60 + i % 50)) for i in range(300)
    ]
    rows += [item(i, "positive", "IPO", 0.99, timedelta(minutes=30), version="m2") for i in range(100)]
    rows.append(item(9999, "positive", "IPO", 0.99, timedelta(days=10)))
    store.insert_scored(rows)


def expected_psi(mix_ref: list, mix_win: list, k: int) -> float:
    return by_hand(Counter(x[k] for x in mix_ref), Counter(x[k] for x in mix_win))


@pytest.mark.integration
def test_drift_command_on_a_real_store(store, store_url, capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FINSENT_REGISTRY", "")
    seed_store(store)
    out_json = tmp_path / "drift.json"
    rc = main(["--store", store_url, "drift", "--window", "24h", "--reference", "7d", "--json", str(out_json)])
    text = capsys.readouterr().out
    assert rc == 0
    doc = json.loads(out_json.read_text())
    assert (doc["model_version"], doc["version_source"]) == ("m1", "most common in the window")
    assert doc["versions_in_window"] == [{"model_version": "m1", "items": 300}, {"model_version": "m2", "items": 100}]
    assert (doc["window"]["items"], doc["reference"]["items"]) == (300, 300)  # m2 and the 10-day-old item left out
    assert doc["psi"]["sentiment"] == pytest.approx(expected_psi(REF_MIX, WIN_MIX, 0), abs=1e-4)
    assert doc["psi"]["topic"] == pytest.approx(expected_psi(REF_MIX, WIN_MIX, 1), abs=1e-4)
    assert doc["window"]["topic"] == {"Earnings": 0.2, "Macro": 0.5, "Markets": 0.3}
    assert doc["reference"]["mean_confidence"] == pytest.approx(0.9, abs=1e-4)
    assert doc["window"]["mean_confidence"] == pytest.approx(0.675, abs=1e-4)
    assert doc["confidence_shift"] == pytest.approx(-0.225, abs=1e-4)
    assert (doc["low_confidence_ratio"], doc["reference"]["low_confidence_ratio"]) == (0.5, 0.0)
    assert doc["retrain_advised"] is True and doc["enough_data"] is True
    assert [r.split(":")[0].split(" (")[0] for r in doc["reasons"]] == [
        "the sentiment label distribution moved",
        "the topic label distribution moved",
        "mean confidence fell by 0.225",
        "the share of low-confidence items",
    ]
    assert "retrain advised: the sentiment label distribution moved: PSI" in text
    assert "model m1 (most common in the window)" in text and "window " in text

    # another version, given explicitly: only its 100 window items, no reference -> no verdict
    rc = main(["--store", store_url, "drift", "--model-version", "m2", "--json", "-"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and (doc["window"]["items"], doc["reference"]["items"]) == (100, 0)
    assert doc["retrain_advised"] is False and doc["psi"] == {"sentiment": None, "topic": None}
    assert doc["notes"][0].startswith("too few items for a verdict: window 100, reference 0")


@pytest.mark.integration
def test_drift_judges_the_registry_production_version(store, store_url, capsys, tmp_path: Path, monkeypatch) -> None:
    # the registry's on-disk layout (models.registry): a version directory and aliases.json
    root = tmp_path / "registry"
    (root / "versions" / "v0002-0123abcd").mkdir(parents=True)
    (root / "versions" / "v0002-0123abcd" / "registry.json").write_text(json.dumps({"version": "v0002-0123abcd"}))
    (root / "aliases.json").write_text(json.dumps({"production": "v0002-0123abcd", "candidate": None, "history": []}))
    monkeypatch.setenv("FINSENT_REGISTRY", str(root))
    seed_store(store)
    rc = main(["--store", store_url, "drift", "--json", "-"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and (doc["model_version"], doc["version_source"]) == ("v0002-0123abcd", "registry production alias")
    assert doc["window"]["items"] == 0 and not doc["retrain_advised"]
    note = "no item in the window is scored by v0002-0123abcd; the window's versions: m1 (300), m2 (100)"
    assert note in doc["notes"]
    store.insert_scored(
        [item(i, "neutral", "Macro", 0.9, timedelta(minutes=5), version="v0002-0123abcd") for i in range(10)]
    )
    rc = main(["--store", store_url, "drift", "--json", "-"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["model_version"] == "v0002-0123abcd" and doc["window"]["items"] == 10


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


@pytest.mark.integration
def test_monitor_sets_the_gauges_and_logs_a_failing_store_once(chdb_db_url: str, caplog, monkeypatch) -> None:
    monkeypatch.setenv("FINSENT_REGISTRY", "")
    settings = load_settings(store=chdb_db_url)
    store = open_store(chdb_db_url)
    store.ensure_schema()
    try:
        seed_store(store)
        broken = DriftMonitor(settings, lambda: (_ for _ in ()).throw(ConnectionError("store is down")))
        with caplog.at_level(logging.INFO, logger="finsent.stream.drift_agent"):
            assert [broken.refresh() for _ in range(3)] == [None, None, None]
            assert broken.failures == 3
            assert [r.message for r in caplog.records].count(
                next(r.message for r in caplog.records if "could not recompute" in r.message)
            ) == 1
            assert "store is down" in caplog.text
            broken.store_getter = lambda: store
            report = broken.refresh()
            assert "works again" in caplog.text
        expected = drift_report(store, settings)
        assert report is not None and report.to_json()["psi"] == expected.to_json()["psi"]
        assert gauge("finsent_drift_psi", task="topic") == pytest.approx(expected.psi["topic"])
        assert gauge("finsent_drift_psi", task="sentiment") == pytest.approx(expected.psi["sentiment"])
        assert gauge("finsent_drift_confidence_shift") == pytest.approx(-0.225, abs=1e-4)
        assert gauge("finsent_drift_low_confidence_ratio") == pytest.approx(0.5)
        assert gauge("finsent_drift_retrain_advised") == 1.0
        # nothing to judge: NaN figures, no advice
        store.query(f"TRUNCATE TABLE {store.database}.items")
        broken.refresh()
        assert math.isnan(gauge("finsent_drift_psi", task="topic")) and gauge("finsent_drift_retrain_advised") == 0
    finally:
        store.close()


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from finsent.models.runtime import Classifier
    from finsent.models.testing import make_tiny_model

    return Classifier.load(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.mark.integration
def test_a_running_worker_recomputes_the_drift_gauges_on_its_timer(
    kafka_bootstrap, chdb_db_url, unique_name, tiny_classifier, monkeypatch
) -> None:
    from finsent.stream.drift_agent import attach
    from finsent.stream.service import WorkerThread
    from tests.stream_helpers import make_items, produce_items, stream_settings, wait_for

    monkeypatch.setenv("FINSENT_REGISTRY", "")
    s = stream_settings(kafka_bootstrap, chdb_db_url, unique_name, drift_interval_s=1.0, drift_min_items=50)
    store = open_store(chdb_db_url)
    store.ensure_schema()
    try:
        seed_store(store)
        with WorkerThread(s, classifier=tiny_classifier, store=store, extensions=[attach]) as w:
            monitor = w.context.extensions.get("drift")
            wait_for(lambda: monitor.runs >= 1, 60, "the first drift recomputation")
            assert gauge("finsent_drift_retrain_advised") == 1.0
            produce_items(s, make_items(20, prefix=unique_name))  # items keep flowing meanwhile
            wait_for(lambda: store.count()["rows"] >= 721, 60, "the new items in the store")
            runs = monitor.runs
            wait_for(lambda: monitor.runs >= runs + 2, 30, "two more recomputations (every second)")
            assert monitor.failures == 0
    finally:
        store.close()


@pytest.mark.integration
def test_drift_while_another_process_holds_the_chdb_store(tmp_path: Path) -> None:
    url = f"chdb://{tmp_path / 'held'}"
    with chdb_held_by_another_process(url):
        proc = finsent_subprocess("--store", url, "drift")
    assert proc.returncode == StoreInUse.exit_code and "Traceback" not in proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("finsent: error: finsent drift: chdb data path") and "finsent_drift_" in last


# --- the example alert rule (promtool) and its routing (amtool) -------------------------------------

DEPLOY = REPO / "deploy"
DRIFT_RULES = DEPLOY / "prometheus" / "finsent-drift-rules.yml"
DRIFT_TESTS = DEPLOY / "prometheus" / "tests" / "finsent-drift-rules.test.yml"


def test_drift_rule_is_valid_loaded_by_prometheus_yml_and_passes_its_unit_tests(promtool) -> None:
    import yaml

    assert (
        "finsent-drift-rules.yml"
        in yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["rule_files"]
    )
    (rule,) = yaml.safe_load(DRIFT_RULES.read_text())["groups"][0]["rules"]
    assert rule["labels"] == {"severity": "warning", "source": "prometheus", "category": "ops"}
    assert set(rule["annotations"]) == {"summary", "description", "runbook", "dashboard"}
    out = subprocess.run([promtool, "check", "rules", str(DRIFT_RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run([promtool, "test", "rules", str(DRIFT_TESTS)], capture_output=True, text=True)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize(
    "old, new",
    [
        ("\n        for: 30m\n", "\n        for: 10m\n"),  # advice that comes and goes would alert
        ('retrain_advised{job="finsent-worker"}', "retrain_advised"),  # another job's gauges would alert
        ("== 1", ">= 0"),  # a report without advice would alert
        ("max by (job)", "max by (job, instance)"),  # one alert per worker instead of one per job
    ],
)
def test_drift_rule_unit_tests_catch_a_broken_rule(promtool, tmp_path: Path, old: str, new: str) -> None:
    (tmp_path / "tests").mkdir()
    text = DRIFT_RULES.read_text()
    assert text.count(old) == 1
    (tmp_path / DRIFT_RULES.name).write_text(text.replace(old, new, 1))
    (tmp_path / "tests" / DRIFT_TESTS.name).write_text(DRIFT_TESTS.read_text())
    out = subprocess.run(
        [promtool, "test", "rules", str(tmp_path / "tests" / DRIFT_TESTS.name)], capture_output=True, text=True
    )
    assert out.returncode != 0 and "FAILED" in out.stdout + out.stderr, out.stdout


def test_drift_alert_goes_to_the_ops_receiver(amtool) -> None:
    config = DEPLOY / "alertmanager" / "alertmanager.yml"
    labels = ["alertname=FinsentModelDriftRetrainAdvised", "severity=warning", "category=ops", "job=finsent-worker"]
    out = subprocess.run(
        [amtool, "config", "routes", "test", f"--config.file={config}", "--verify.receivers=finsent-ops", *labels],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and out.stdout.strip() == "finsent-ops", out.stdout + out.stderr
