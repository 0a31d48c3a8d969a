"""``finsent retrain`` end to end on the tiny model, through the CLI, with a real (embedded) store:
human labels in, a candidate that learned promoted, a candidate trained on corrupted labels rejected by
the gate, promote refused for it, rollback, and the ``model_versions`` mirror."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finsent.cli import main
from finsent.core.store import Label
from finsent.models.frozen import label_is_frozen
from finsent.models.registry import Registry
from finsent.models.testing import make_tiny_model
from tests.retrain_helpers import synthetic_rows, synthetic_sets, write_csv

ROTATE = {"negative": "positive", "neutral": "negative", "positive": "neutral"}
FAST = ["--epochs", "5", "--batch-size", "16", "--lr", "1e-3", "--threads", "1"]


def test_retrain_promotes_a_better_candidate_rejects_a_worse_one_and_rolls_back(
    tmp_path: Path, chdb_db_url: str, monkeypatch, capsys
) -> None:
    tiny = make_tiny_model(tmp_path / "tiny")
    sent, topic = synthetic_sets(tmp_path / "data")
    monkeypatch.setenv("FINSENT_REGISTRY", str(tmp_path / "reg"))
    monkeypatch.setenv("FINSENT_STORE", chdb_db_url)
    monkeypatch.setenv("FINSENT_MODEL_DIR", str(tiny))
    monkeypatch.setenv("FINSENT_CACHE_DIR", str(tmp_path / "cache"))

    from finsent.stream.store import open_store

    store = open_store(chdb_db_url)
    try:
        store.ensure_schema()
        human = synthetic_rows("sentiment", 20, 7)
        store.insert_labels(
            [
                Label(f"h{i}", "sentiment", lab, text=f"human {text}", by="analyst")
                for i, (text, lab) in enumerate(human)
            ]
        )
    finally:
        store.close()

    out1 = tmp_path / "r1.json"
    assert main(["retrain", "--data", str(sent), str(topic), "--max-steps", "30", *FAST, "--json", str(out1)]) == 0
    r1 = json.loads(out1.read_text())
    assert set(r1) >= {"version", "parent", "promoted", "gate", "metrics", "minutes"}
    assert r1["promoted"] is True and r1["gate"]["decision"] == "promote"
    # one name per weights (issue 25): the first version keeps the served model's own name, the retrained one its
    # export name; both numbered in order
    numbered = Registry(tmp_path / "reg")
    assert (numbered.get(r1["parent"]).number, numbered.get(r1["version"]).number) == (1, 2)
    assert r1["version"].startswith("finsent-retrain-") and numbered.get("v0002").version == r1["version"]
    assert set(r1["metrics"]) == {"sent", "topic", "labels_sentiment"}
    assert r1["metrics"]["sent"]["candidate"] > r1["metrics"]["sent"]["production"]
    reg = Registry(tmp_path / "reg")
    assert reg.resolve("production").version == r1["version"] == reg.resolve("candidate").version
    v2 = reg.get(r1["version"])
    assert v2.meta["gate"]["decision"] == "promote" and v2.meta["parent"] == r1["parent"]
    assert v2.meta["data_fingerprint"] == r1["data_fingerprint"]
    card = (v2.path / "README.md").read_text()
    assert "gate decision: **promote**" in card and "| sent | sentiment |" in card
    human_stats = v2.metrics()["human_labels"]
    assert human_stats == {"total": len(human), "frozen": sum(label_is_frozen(f"h{i}") for i in range(len(human)))}
    printed = capsys.readouterr().out
    assert "gate decision: promote" in printed and "promoted to production" in printed

    # corrupted labels (every sentiment rotated): the candidate gets worse on the frozen set and is rejected
    bad = write_csv(
        tmp_path / "data" / "sent_bad.csv", "sentiment", [(t, ROTATE[y]) for t, y in synthetic_rows("sentiment", 60, 1)]
    )
    out2 = tmp_path / "r2.json"
    assert (
        main(
            ["retrain", "--data", str(bad), str(topic), "--max-steps", "30", *FAST, "--no-labels", "--json", str(out2)]
        )
        == 0
    )
    r2 = json.loads(out2.read_text())
    assert r2["promoted"] is False and r2["gate"]["decision"] == "reject" and r2["parent"] == r1["version"]
    assert any("sent:" in reason and "tolerance" in reason for reason in r2["gate"]["reasons"])
    assert r2["frozen_fingerprint"] != r1["frozen_fingerprint"]  # no human labels this time: a different share
    assert reg.resolve("production").version == r1["version"] and reg.resolve("candidate").version == r2["version"]
    assert "rejected by the gate" in capsys.readouterr().out

    assert main(["models", "promote", r2["version"]]) == 4
    assert "rejected by the promotion gate" in capsys.readouterr().err
    assert main(["models", "rollback"]) == 0
    assert reg.resolve("production").version == r1["parent"]

    store = open_store(chdb_db_url)
    try:
        rows = {r["version"]: r for r in store.model_versions()}  # type: ignore[attr-defined]
    finally:
        store.close()
    assert rows[r1["parent"]]["aliases"] == ["production"] and rows[r2["version"]]["aliases"] == ["candidate"]
    assert rows[r1["version"]]["gate_decision"] == "promote" and rows[r2["version"]]["gate_decision"] == "reject"


def test_retrain_with_missing_data_is_one_line(tmp_path: Path, chdb_db_url: str, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FINSENT_REGISTRY", str(tmp_path / "reg"))
    monkeypatch.setenv("FINSENT_STORE", chdb_db_url)
    monkeypatch.setenv("FINSENT_MODEL_DIR", str(make_tiny_model(tmp_path / "tiny")))
    assert main(["retrain", "--data", str(tmp_path / "nope.csv"), "--no-labels"]) == 4
    err = capsys.readouterr().err
    assert "nope.csv does not exist" in err and "Traceback" not in err


@pytest.mark.parametrize("flag", ["--max-steps", "--max-minutes"])
def test_retrain_rejects_bad_budgets(flag: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["retrain", flag, "-1"])
    assert flag in capsys.readouterr().err


def test_retrain_from_base_starts_from_the_encoder_not_production(
    tmp_path: Path, chdb_db_url: str, monkeypatch
) -> None:
    from finsent.models.testing import make_tiny_base

    base = make_tiny_base(tmp_path / "base")
    sent, topic = synthetic_sets(tmp_path / "data")
    monkeypatch.setenv("FINSENT_REGISTRY", str(tmp_path / "reg"))
    monkeypatch.setenv("FINSENT_STORE", chdb_db_url)
    monkeypatch.setenv("FINSENT_MODEL_DIR", str(make_tiny_model(tmp_path / "tiny")))
    monkeypatch.setenv("FINSENT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "retrain",
                "--from-base",
                "--base-model",
                str(base),
                "--data",
                str(sent),
                str(topic),
                "--max-steps",
                "5",
                *FAST,
                "--no-labels",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    mv = Registry(tmp_path / "reg").get(r["version"])
    assert mv.metrics()["train"]["start"] == "base encoder" and r["steps"] == 5
    # judged against production all the same
    assert mv.number == 2 and Registry(tmp_path / "reg").get("v0001").version == r["parent"]
    assert json.loads((mv.path / "labels.json").read_text())["base_model"] == str(base)


def test_two_retrains_at_once_on_an_empty_registry(tmp_path: Path) -> None:
    """Real processes: exactly one first version and one frozen set, two distinct complete candidates."""
    import os
    import subprocess
    import sys

    sent, topic = synthetic_sets(tmp_path / "data")
    env = {
        **os.environ,
        "FINSENT_REGISTRY": str(tmp_path / "reg"),
        "FINSENT_CACHE_DIR": str(tmp_path / "cache"),
        "FINSENT_MODEL_DIR": str(make_tiny_model(tmp_path / "tiny")),
        "FINSENT_LOG_LEVEL": "WARNING",
        # one chdb path per process: the second retrain's mirror update finds it in use, warns, and carries on
        "FINSENT_STORE": f"chdb://{tmp_path / 'chdb'}",
    }
    cmd = [
        sys.executable,
        "-m",
        "finsent",
        "retrain",
        "--data",
        str(sent),
        str(topic),
        "--max-steps",
        "0",
        "--no-labels",
        "--json",
    ]
    procs = [
        subprocess.Popen(
            [*cmd, str(tmp_path / f"r{i}.json")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for i in range(2)
    ]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    results = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(2)]
    reg = Registry(tmp_path / "reg")
    versions = [mv.version for mv in reg.versions()]
    assert len(versions) == 3 and [mv.number for mv in reg.versions()] == [1, 2, 3]
    assert sorted(r["version"] for r in results) == versions[1:]
    assert {r["parent"] for r in results} == {versions[0]}
    assert results[0]["frozen_fingerprint"] == results[1]["frozen_fingerprint"]
    assert reg.resolve("production").version == versions[0]  # both are production's own weights: rejected
    assert not list((reg.root / ".staging").iterdir())
