"""``finsent rescore`` and ``finsent query compare`` on real stores (chdb and clickhouse-server 18.16).

The two model versions are the tiny test model registered twice, the second with its sentiment
labels reversed (``labels.json``): the same graph, so it loads like any version, but every
negative item of version A is positive under B and vice versa -- a re-score that did not happen,
or a compare that mixed the versions up, cannot pass for the real thing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from finsent.core.events import RawItem, utcnow
from finsent.core.settings import load_settings
from finsent.stream.rescore import rescore
from finsent.stream.store import open_store
from finsent.stream.store.reports import api_handlers, compare_report, top_report
from finsent.stream.worker import score_items

pytestmark = pytest.mark.integration

#: the items span 3 h 16 min, so a re-score walks several of its one-hour slices
WINDOW = timedelta(hours=4)
WORDS = (
    "shares",
    "jump",
    "fall",
    "profit",
    "loss",
    "bank",
    "oil",
    "gold",
    "rates",
    "cut",
    "record",
    "weak",
    "strong",
    "deal",
    "ipo",
    "dividend",
    "bonds",
    "yield",
    "drop",
    "beat",
)


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A registry with A (the tiny model) and B (A with its sentiment labels reversed); production = B."""
    from finsent.models.registry import Registry
    from finsent.models.runtime import Classifier
    from finsent.models.testing import make_tiny_model

    root = tmp_path_factory.mktemp("rescore")
    tiny = make_tiny_model(root / "tiny")
    flipped = root / "flipped"
    shutil.copytree(tiny, flipped)
    labels = json.loads((flipped / "labels.json").read_text())
    labels["sentiment"] = list(reversed(labels["sentiment"]))
    (flipped / "labels.json").write_text(json.dumps(labels))
    reg = Registry(root / "registry")
    a, b = reg.register(tiny), reg.register(flipped)
    reg.set_alias("production", b.version)
    # fp32: int8's dynamic quantisation scales activations per batch, so its verdicts on near-ties
    # depend on which items share a batch; the truth here is computed in other batches than rescore's
    return {
        "registry": reg,
        "a": a.version,
        "b": b.version,
        "clf_a": Classifier.load(a.path, variant="fp32"),
        "clf_b": Classifier.load(b.path, variant="fp32"),
    }


def _items(n: int, prefix: str) -> list[RawItem]:
    now = utcnow()
    return [
        RawItem(
            id=f"{prefix}-{i:03d}",
            source="test",
            source_type="news",
            text=" ".join(WORDS[(i * k) % len(WORDS)] for k in (1, 3, 7, 11)) + f" {i}",
            ingested_at=now - timedelta(minutes=(i % 50) * 4, milliseconds=i),
        )
        for i in range(n)
    ]


def _stored_by_a(store: Any, versions: dict[str, Any], n: int, prefix: str) -> dict[str, Any]:
    """Items scored with A and stored, as the worker stores them; returns A's and B's verdicts per id."""
    raw = _items(n, prefix)
    scored_a, dead = score_items(versions["clf_a"], raw)
    assert not dead
    store.insert_scored(scored_a)
    scored_b, _ = score_items(versions["clf_b"], raw)
    return {
        "a": {s.id: (s.sentiment, s.topic) for s in scored_a},
        "b": {s.id: (s.sentiment, s.topic) for s in scored_b},
    }


def _current(store: Any) -> dict[str, tuple[str, str, str, int]]:
    """id -> (model_version, sentiment, topic, version) of every row a default query sees."""
    rows = store.query(
        f"SELECT id, toString(model_version), toString(sentiment), toString(topic), version "
        f"FROM {store.database}.items FINAL"
    )
    return {r[0]: (r[1], r[2], r[3], int(r[4])) for r in rows}


def _settings(url: str, versions: dict[str, Any], tmp_path: Path) -> Any:
    return load_settings(
        store=url, registry=str(versions["registry"].root), cache_dir=str(tmp_path / "cache"), model_variant="fp32"
    )


@pytest.fixture(params=["chdb", "clickhouse"])
def store_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("chdb_db_url" if request.param == "chdb" else "clickhouse_db_url")


def test_rescore_replaces_the_latest_score_and_compare_shows_both(
    store_url: str, versions: dict[str, Any], tmp_path: Path
) -> None:
    a, b = versions["a"], versions["b"]
    store = open_store(store_url)
    try:
        store.ensure_schema()
        truth = _stored_by_a(store, versions, 60, "r")
        assert {v[0] for v in _current(store).values()} == {a}
        summary = rescore(_settings(store_url, versions, tmp_path), WINDOW, batch_size=16, progress=None)
        assert summary["version"] == b and summary["finished"] and not summary["resumed"]
        assert summary["total"] == 60 and summary["done"] == 60 and summary["batches_this_run"] == 4

        # default queries: one row per id, the new version's verdict
        assert store.count() == {"rows": 60, "unique_ids": 60}
        current = _current(store)
        assert {k: v[:3] for k, v in current.items()} == {i: (b, *truth["b"][i]) for i in truth["b"]}
        top = top_report(store, WINDOW, limit=1000)
        assert sum(t["total"] for t in top["topics"]) == 60
        negative_b = {i for i, (s, _) in truth["b"].items() if s == "negative"}
        assert negative_b and {it["id"] for it in top["negative"]} == negative_b
        assert {it["model_version"] for it in top["negative"]} == {b}

        # the history: both versions of the same 60 items, per topic as A assigned them
        report = compare_report(store, a, b, WINDOW)
        assert report["items"] == 60 and report["versions"] == {a: 60, b: 60}
        by_topic = {r["topic"]: r for r in report["topics"]}
        want: dict[str, Counter[str]] = {}
        for i, (sent_a, topic_a) in truth["a"].items():
            c = want.setdefault(topic_a, Counter())
            c["items"] += 1
            c["negative_a"] += sent_a == "negative"
            c["negative_b"] += truth["b"][i][0] == "negative"
        assert set(by_topic) == set(want)
        for topic, c in want.items():
            r = by_topic[topic]
            assert (r["items"], r["negative_a"], r["negative_b"]) == (c["items"], c["negative_a"], c["negative_b"])
            assert r["negative_share_a"] == round(c["negative_a"] / c["items"], 4)
            assert r["topic_changed"] == 0  # labels reversed, topic head untouched
        assert sum(r["negative_a"] for r in report["topics"]) != sum(r["negative_b"] for r in report["topics"])
        # the reversed direction is the mirror image; an unknown version compares nothing
        back = compare_report(store, b, a, WINDOW)
        assert sum(r["negative_a"] for r in back["topics"]) == sum(r["negative_b"] for r in report["topics"])
        assert compare_report(store, a, "v9999-00000000")["items"] == 0
        # the same report through the read-only API a worker holding a chdb store serves (`finsent query` uses it)
        status, body = api_handlers(lambda: store)["/v1/compare"]({"a": a, "b": b, "since": str(4 * 3600)})
        assert status == 200 and body == json.loads(json.dumps(report))
    finally:
        store.close()


class CrashingClassifier:
    """The real classifier B that dies on its ``crash_on``-th batch (a process killed mid-job, in-process)."""

    def __init__(self, inner: Any, crash_on: int) -> None:
        self.inner, self.crash_on, self.calls = inner, crash_on, 0
        self.version = inner.version

    def predict(self, texts: list[str]) -> Any:
        self.calls += 1
        if self.calls == self.crash_on:
            raise KeyboardInterrupt  # not an Exception: score_items must not turn it into dead letters
        return self.inner.predict(texts)


def test_resume_after_an_interruption_does_not_redo_finished_batches(
    store_url: str, versions: dict[str, Any], tmp_path: Path
) -> None:
    b = versions["b"]
    settings = _settings(store_url, versions, tmp_path)
    store = open_store(store_url)
    try:
        store.ensure_schema()
        truth = _stored_by_a(store, versions, 50, "k")
        # 1) a bounded run: two batches of 8, then it stops and says so
        first = rescore(settings, WINDOW, batch_size=8, max_batches=2, progress=None)
        assert (first["done"], first["batches_this_run"], first["finished"]) == (16, 2, False)
        after_first = _current(store)
        done_first = {i for i, v in after_first.items() if v[0] == b}
        assert len(done_first) == 16
        # 2) killed during its second batch (the first one is stored and checkpointed)
        with pytest.raises(KeyboardInterrupt):
            rescore(
                settings,
                WINDOW,
                batch_size=8,
                progress=None,
                classifier=CrashingClassifier(versions["clf_b"], crash_on=2),
            )
        after_crash = _current(store)
        done_crash = {i for i, v in after_crash.items() if v[0] == b}
        assert len(done_crash) == 24 and done_first < done_crash
        # 3) the same command again: resumes after the last checkpointed batch
        last = rescore(settings, WINDOW, batch_size=8, progress=None)
        assert last["resumed"] and last["finished"] and last["done"] == 50
        assert last["batches_this_run"] == 4  # 26 items left: 8 + 8 + 8 + 2
        final = _current(store)
        assert {k: v[:3] for k, v in final.items()} == {i: (b, *truth["b"][i]) for i in truth["b"]}
        # finished batches were not scored again: their rows keep the version (scored_at) they got then
        assert all(final[i][3] == after_first[i][3] for i in done_first)
        assert all(final[i][3] == after_crash[i][3] for i in done_crash)
        assert store.count() == {"rows": 50, "unique_ids": 50}
        # a finished job is not resumed: the next run is a new job over a new window
        again = rescore(settings, WINDOW, batch_size=64, progress=None)
        assert not again["resumed"] and again["done"] == 50 and again["batches_this_run"] == 1
    finally:
        store.close()


def test_topic_filter_rescores_only_that_topic(store_url: str, versions: dict[str, Any], tmp_path: Path) -> None:
    a, b = versions["a"], versions["b"]
    store = open_store(store_url)
    try:
        store.ensure_schema()
        truth = _stored_by_a(store, versions, 40, "t")
        topic, n = Counter(t for _, t in truth["a"].values()).most_common(1)[0]
        assert n < 40
        summary = rescore(_settings(store_url, versions, tmp_path), WINDOW, topic=topic, batch_size=7, progress=None)
        assert summary["total"] == n and summary["done"] == n
        current = _current(store)
        assert {i for i, v in current.items() if v[0] == b} == {i for i, (_, t) in truth["a"].items() if t == topic}
        assert {v[0] for i, v in current.items() if truth["a"][i][1] != topic} == {a}
        assert compare_report(store, a, b)["items"] == n
    finally:
        store.close()


def _env(url: str, versions: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FINSENT_STORE": url,
        "FINSENT_REGISTRY": str(versions["registry"].root),
        "FINSENT_CACHE_DIR": str(tmp_path / "cache"),
        "FINSENT_METRICS_PORT": "0",
        "FINSENT_MODEL_VARIANT": "fp32",
    }


def _finsent(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "finsent", *args], env=env, capture_output=True, text=True, timeout=180
    )


def test_rescore_and_compare_commands(clickhouse_db_url: str, versions: dict[str, Any], tmp_path: Path) -> None:
    a, b = versions["a"], versions["b"]
    store = open_store(clickhouse_db_url)
    try:
        store.ensure_schema()
        _stored_by_a(store, versions, 30, "c")
        env = _env(clickhouse_db_url, versions, tmp_path)
        # a version the registry does not have: one line, exit 4
        bad = _finsent(env, "rescore", "--since", "4h", "--version", "v0099-00000000")
        assert bad.returncode == 4 and bad.stderr.strip().splitlines()[-1].startswith("finsent: error: no version")
        out = _finsent(env, "rescore", "--since", "4h", "--version", b, "--batch-size", "8", "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["done"] == 30
        assert "rescore: 30/30 items (100.0%)" in out.stderr  # the progress line
        assert {v[0] for v in _current(store).values()} == {b}
        cmp = _finsent(env, "query", "compare", "--versions", a, b, "--since", "4h", "--json")
        assert cmp.returncode == 0, cmp.stderr
        body = json.loads(cmp.stdout)
        assert body["items"] == 30 and sum(t["items"] for t in body["topics"]) == 30
        human = _finsent(env, "query", "compare", "--versions", a, b)
        assert human.returncode == 0 and "30 items compared" in human.stdout
        same = _finsent(env, "query", "compare", "--versions", a, a)
        assert same.returncode == 4 and "two different versions" in same.stderr
    finally:
        store.close()


def test_rescore_on_a_chdb_store_held_by_another_process(
    chdb_db_url: str, versions: dict[str, Any], tmp_path: Path
) -> None:
    """chdb is one process per data path: while this process (standing in for the worker) holds it, one line."""
    store = open_store(chdb_db_url)
    try:
        store.ensure_schema()
        out = _finsent(_env(chdb_db_url, versions, tmp_path), "rescore", "--since", "4h")
    finally:
        store.close()
    assert out.returncode == 8, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("finsent: error: rescore cannot open the store") and "stop the worker" in last


def test_target_model_without_a_registry_is_the_model_dir(tmp_path: Path) -> None:
    """No registry: FINSENT_MODEL_DIR is the target, and --version must name the version it holds."""
    from finsent.core.errors import ConfigError
    from finsent.models.testing import make_tiny_model
    from finsent.stream.rescore import target_model

    tiny = make_tiny_model(tmp_path / "tiny")
    settings = load_settings(registry="", model_dir=str(tiny), cache_dir=str(tmp_path / "cache"))
    held = json.loads((tiny / "labels.json").read_text())["model_version"]
    assert target_model(settings, None).version == held
    assert target_model(settings, held).version == held
    with pytest.raises(ConfigError, match=f"the model in FINSENT_MODEL_DIR is {held}"):
        target_model(settings, "v0007-00000000")


def test_rescore_beside_a_running_worker_on_a_server(
    kafka_bootstrap: str, clickhouse_db_url: str, unique_name: str, versions: dict[str, Any], tmp_path: Path
) -> None:
    """On clickhouse-server the worker keeps storing new items while rescore rewrites the stored ones."""
    from finsent.stream.service import WorkerThread
    from tests.stream_helpers import Feeder, stream_settings, wait_for

    a, b = versions["a"], versions["b"]
    s = stream_settings(
        kafka_bootstrap,
        clickhouse_db_url,
        unique_name,
        registry=str(versions["registry"].root),
        model_variant="fp32",
        cache_dir=str(tmp_path / "cache"),
        batch_within_s=0.05,
    )
    store, worker_store = open_store(clickhouse_db_url), open_store(clickhouse_db_url)
    try:
        store.ensure_schema()
        old = _stored_by_a(store, versions, 300, "old")  # what the worker had stored before
        feeder = Feeder(s, "new")
        with WorkerThread(s, classifier=versions["clf_a"], store=worker_store) as w:
            feeder.start()
            wait_for(lambda: w.scorer.stats.snapshot()["stored"] >= 20, 60, "the worker storing new items")
            before = w.scorer.stats.snapshot()["stored"]
            summary = rescore(s, WINDOW, batch_size=4, progress=None)  # 75 batches: long enough to overlap
            during = w.scorer.stats.snapshot()["stored"] - before
            produced = feeder.finish()
            wait_for(lambda: store.count()["rows"] >= 300 + len(produced), 60, "every new item stored")
        assert summary["done"] >= 300 and during > 0  # the worker kept storing while rescore ran
        counts = store.count()
        assert counts == {"rows": 300 + len(produced), "unique_ids": 300 + len(produced)}
        current = _current(store)
        assert all(current[i][0] == b for i in old["a"])  # every old item re-scored
        assert {current[i][0] for i in produced} <= {a, b}  # new ones: the worker's A, or B if the window caught them
    finally:
        worker_store.close()
        store.close()
