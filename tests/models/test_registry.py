"""The model registry: the read contract the worker's hot reload relies on, aliases, rollback, the
``finsent models`` commands with the store mirror, the frozen set and the gate, and crash safety with
real processes (two registering at once; one killed with SIGKILL in the middle of a registration)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from finsent.cli import main
from finsent.core.errors import InputError
from finsent.models.data import norm_key
from finsent.models.frozen import HumanLabel, fingerprint, label_is_frozen, read_frozen, split_labels
from finsent.models.gate import decide
from finsent.models.modeldir import LABELS_FILE, MODEL_FILE
from finsent.models.registry import META_FILE, STAGING_DIR, Registry
from finsent.models.retrain import training_data
from finsent.models.runtime import Classifier
from finsent.models.testing import make_tiny_model
from finsent.models.variants import file_digest
from tests.retrain_helpers import synthetic_sets, write_csv

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


def _complete(reg: Registry) -> None:
    """Every directory under versions/ is a whole version: the invariant crashes must not break."""
    for child in reg.versions_dir.iterdir() if reg.versions_dir.is_dir() else ():
        meta = json.loads((child / META_FILE).read_text())
        assert meta["version"] == child.name
        labels = json.loads((child / LABELS_FILE).read_text())
        assert labels["model_version"] == child.name
        assert child.name.endswith(file_digest(child / MODEL_FILE, 8))
        assert file_digest(child / MODEL_FILE, 16) == meta["model_digest"]
    if reg.aliases_path.exists():
        json.loads(reg.aliases_path.read_text())


# --- the read contract ---------------------------------------------------------------------------


def test_read_side_contract_and_loaded_version_is_the_registry_version(tiny: Path, tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    assert reg.resolve("production") is None and reg.versions() == [] and not reg.root.exists()
    v1 = reg.register(tiny, aliases=("production",))
    v2 = reg.register(tiny, parent=v1.version, data_fingerprint="abc")
    # the first registration keeps the model's own name (what a worker running the directory reports); the same
    # weights registered again are numbered
    exported = json.loads((tiny / LABELS_FILE).read_text())["model_version"]
    assert v1.version == exported and v2.version.startswith("v0002-") and (v1.number, v2.number) == (1, 2)
    assert reg.get("v0001").version == reg.get("v1").version == v1.version and reg.get("v0002").version == v2.version
    assert [mv.version for mv in reg.versions()] == [v1.version, v2.version]
    prod = reg.resolve("production")
    assert prod is not None and prod.version == v1.version and prod.path == reg.versions_dir / v1.version
    assert reg.resolve("candidate") is None
    assert reg.get(v2.version).meta["parent"] == v1.version and reg.get(v2.version).meta["data_fingerprint"] == "abc"
    for key in ("version", "parent", "created_at", "data_fingerprint", "gate", "source"):
        assert key in v2.meta
    clf = Classifier.load(prod.path, variant="fp32", cache_dir=tmp_path / "cache")
    assert clf.version == prod.version
    assert json.loads((prod.path / LABELS_FILE).read_text())["export_version"] == exported
    with pytest.raises(InputError, match="no version v0009-00000000"):
        reg.get("v0009-00000000")
    with pytest.raises(InputError, match="not a registry version name"):
        reg.get("../etc")
    assert list((reg.root / STAGING_DIR).iterdir()) == []
    assert [p.name for p in reg.root.iterdir() if p.name.startswith(".aliases")] == []  # no temp file left


def test_rollback_walks_back_through_promotions(tiny: Path, tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    a, b, c = (reg.register(tiny) for _ in range(3))
    for mv in (a, b, c):
        reg.set_alias("production", mv.version, by="t", action="promote")
    assert reg.rollback() == (c.version, b.version)
    assert reg.rollback() == (b.version, a.version)  # not back to c
    with pytest.raises(InputError, match="no earlier production"):
        reg.rollback()
    assert reg.resolve("production").version == a.version
    history = reg.aliases()["history"]
    assert [h["action"] for h in history] == ["promote"] * 3 + ["rollback"] * 2
    assert all(h["at"] and h["by"] for h in history)


# --- the CLI and the store mirror ----------------------------------------------------------------


def test_models_commands_and_the_model_versions_mirror(
    tiny: Path, tmp_path: Path, chdb_db_url: str, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("FINSENT_REGISTRY", str(tmp_path / "reg"))
    monkeypatch.setenv("FINSENT_STORE", chdb_db_url)
    monkeypatch.setenv("FINSENT_MODEL_DIR", str(tiny))  # the served model: the registry's first version
    assert main(["models", "register", str(tiny)]) == 0  # the same model: registered once
    assert "as production (first version)" in capsys.readouterr().out
    assert main(["models", "register", str(tiny)]) == 0
    reg = Registry(tmp_path / "reg")
    v1, v2 = (mv.version for mv in reg.versions())
    rejected = reg.register(
        tiny,
        parent=v2,
        source="retrain",
        gate={
            "decision": "reject",
            "reasons": ["sent: macro-F1 0.5 vs production 0.6 (-0.1) is worse"],
            "sets": {},
            "thresholds": {"tolerance": 0.005, "min_gain": 0.0, "int8_max_drop": 0.005},
        },
        aliases=("candidate",),
    )
    capsys.readouterr()

    assert main(["models", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["production"] == v1 and listed["candidate"] == rejected.version
    assert [r["version"] for r in listed["versions"]] == [v1, v2, rejected.version]
    assert listed["versions"][2]["gate"] == "reject" and listed["versions"][2]["parent"] == v2
    assert main(["models", "list"]) == 0
    assert "production" in capsys.readouterr().out
    assert main(["models", "show", rejected.version]) == 0
    shown = capsys.readouterr().out
    assert "gate decision: reject" in shown and "worse" in shown

    assert main(["models", "promote", v2]) == 0
    assert f"{v1} -> {v2}" in capsys.readouterr().out
    assert main(["models", "promote", rejected.version]) == 4  # the gate said no
    err = capsys.readouterr().err
    assert "rejected by the promotion gate" in err and "--force" in err and "Traceback" not in err
    assert reg.resolve("production").version == v2
    assert main(["models", "promote", rejected.version, "--force"]) == 0
    assert "forced past the gate" in capsys.readouterr().out
    assert main(["models", "rollback"]) == 0
    assert reg.resolve("production").version == v2
    assert main(["models", "show", "v0042-deadbeef"]) == 4
    capsys.readouterr()

    from finsent.stream.store import open_store

    store = open_store(chdb_db_url)
    try:
        rows = {r["version"]: r for r in store.model_versions()}  # type: ignore[attr-defined]
    finally:
        store.close()
    assert set(rows) == {v1, v2, rejected.version}
    assert rows[v2]["aliases"] == ["production"] and rows[rejected.version]["aliases"] == ["candidate"]
    assert rows[v1]["aliases"] == [] and rows[rejected.version]["gate_decision"] == "reject"
    assert rows[rejected.version]["parent"] == v2 and json.loads(rows[rejected.version]["gate"])["decision"] == "reject"


@pytest.mark.parametrize("engine", ["clickhouse", "chdb"])
def test_model_versions_mirror_on_both_engines(engine: str, tiny: Path, tmp_path: Path, request) -> None:
    from finsent.cli.registry import mirror_rows
    from finsent.stream.store import open_store

    reg = Registry(tmp_path / "reg")
    v1 = reg.register(tiny, aliases=("production",))
    v2 = reg.register(tiny, parent=v1.version, gate={"decision": "reject", "reasons": ["x"]}, aliases=("candidate",))
    store = open_store(request.getfixturevalue(f"{engine}_db_url"))
    try:
        store.ensure_schema()
        assert store.sync_model_versions(mirror_rows(reg)) == 2  # type: ignore[attr-defined]
        reg.set_alias("production", v2.version)
        store.sync_model_versions(mirror_rows(reg))  # type: ignore[attr-defined]
        rows = store.model_versions()  # type: ignore[attr-defined]
    finally:
        store.close()
    assert [r["version"] for r in rows] == [v1.version, v2.version]  # one row per version, the newest sync
    assert rows[0]["aliases"] == [] and rows[1]["aliases"] == ["production", "candidate"]
    assert rows[1]["parent"] == v1.version and rows[1]["gate_decision"] == "reject"
    assert rows[0]["created_at"].year >= 2026 and rows[1]["registry"] == str(reg.root)


def test_an_unreachable_store_does_not_block_a_registry_change(tiny: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FINSENT_REGISTRY", str(tmp_path / "reg"))
    monkeypatch.setenv("FINSENT_STORE", "clickhouse://default@127.0.0.1:1/finsent")  # nothing listens on port 1
    monkeypatch.delenv("FINSENT_MODEL_DIR", raising=False)
    assert main(["models", "register", str(tiny)]) == 0
    captured = capsys.readouterr()
    assert "model_versions table was not updated" in captured.err and "Traceback" not in captured.err
    # an empty registry starts from the shipped model (production); the registered one waits for a promote
    reg = Registry(tmp_path / "reg")
    first, second = reg.versions()
    assert first.meta["export_version"].startswith("finsent-minilm-") and reg.resolve("production") == first
    assert second.meta["export_version"].startswith("tiny-random-") and reg.resolve("candidate") is None


# --- frozen set and gate -------------------------------------------------------------------------


def test_label_split_is_stable_about_a_fifth_and_independent_of_other_labels() -> None:
    keys = [f"item-{i}" for i in range(5000)]
    share = sum(label_is_frozen(k) for k in keys) / len(keys)
    assert 0.18 < share < 0.22
    labels = [HumanLabel(k, f"text {k}", "sentiment", "negative") for k in keys[:300]]
    train, frozen = split_labels(labels)
    # adding labels later never moves an existing one between training and evaluation
    train2, frozen2 = split_labels(labels + [HumanLabel(f"new-{i}", "x", "topic", "Macro") for i in range(300)])
    assert set(frozen) <= set(frozen2) and set(train) <= set(train2)
    assert {lab.key for lab in frozen} == {k for k in keys[:300] if label_is_frozen(k)}


def test_training_data_never_contains_a_frozen_text(tmp_path: Path) -> None:
    sent, topic = synthetic_sets(tmp_path / "data")
    # a second sentiment set that repeats some topic texts (the Twitter sets share tweets)
    topic_rows = [line.split(",", 1) for line in topic.read_text().splitlines()[1:]]
    dup = write_csv(tmp_path / "data" / "dup.csv", "sentiment", [(t, "neutral") for t, _ in topic_rows[:200]])
    data = {"sent": str(sent), "topic": str(topic), "dup": str(dup)}
    labels = [HumanLabel(f"id{i}", f"labelled text number {i}", "sentiment", "positive") for i in range(200)]
    labels += [HumanLabel("t0", topic_rows[0][0], "topic", "Macro")]  # a label on a text of a set
    reg = Registry(tmp_path / "reg")
    td = training_data(reg, data, labels)
    frozen_keys = {norm_key(t) for ds in td.frozen.values() for t in ds.texts}
    train_keys = {norm_key(t) for ds in td.train.values() for t in ds.texts}
    assert frozen_keys and not frozen_keys & train_keys
    assert not frozen_keys & {norm_key(t) for ds in td.val.values() for t in ds.texts}
    assert "labels_sentiment" in td.frozen and "labels_sentiment" in td.train
    assert len(td.frozen["labels_sentiment"]) == sum(label_is_frozen(f"id{i}") for i in range(200))
    stored, manifest = read_frozen(reg.frozen_dir)
    assert manifest["fingerprint"] == fingerprint(stored) and set(stored) == {"sent", "topic", "dup"}
    # stratified: every sentiment class is in the frozen slice of the sentiment set
    assert set(stored["sent"].labels) == {"negative", "neutral", "positive"}
    # fixed: new rows in a CSV later do not change the frozen set
    write_csv(sent, "sentiment", [(f"brand new row {i}", "negative") for i in range(100)])
    td2 = training_data(reg, data, labels)
    assert td2.frozen_fingerprint == td.frozen_fingerprint


def _scores(**f1: float) -> dict:
    return {k: {"task": "sentiment", "n": 100, "accuracy": v, "macro_f1": v} for k, v in f1.items()}


def test_gate_rules() -> None:
    kw = {"tolerance": 0.005, "min_gain": 0.0, "int8_max_drop": 0.005}
    prod = _scores(fpb=0.80, tfns=0.80)
    ok = decide(prod, _scores(fpb=0.81, tfns=0.797), _scores(fpb=0.81, tfns=0.795), **kw)
    assert ok["decision"] == "promote" and ok["sets"]["fpb"]["delta"] == pytest.approx(0.01)
    worse = decide(prod, _scores(fpb=0.85, tfns=0.79), _scores(fpb=0.85, tfns=0.79), **kw)
    assert worse["decision"] == "reject" and any("tfns" in r and "tolerance" in r for r in worse["reasons"])
    same = decide(prod, prod, prod, **kw)
    assert same["decision"] == "reject" and any("no frozen set" in r for r in same["reasons"])
    int8 = decide(prod, _scores(fpb=0.82, tfns=0.82), _scores(fpb=0.81, tfns=0.82), **kw)
    assert int8["decision"] == "reject" and any("int8" in r for r in int8["reasons"])
    first = decide(None, _scores(fpb=0.5), _scores(fpb=0.5), **kw)
    assert first["decision"] == "promote"


def test_onnx_weights_rebuild_the_torch_model_exactly(tiny: Path) -> None:
    import torch

    from finsent.models.export import _encode
    from finsent.models.onnx_weights import load_from_onnx
    from finsent.models.testing import tiny_tokenizer

    model = load_from_onnx(tiny)
    clf = Classifier.load(tiny, variant="fp32")
    feed = _encode(tiny_tokenizer(), ["oil prices jump", "the bank cut rates after a weak quarter"], 64)
    onnx_out = clf._session.run(None, feed)  # type: ignore[attr-defined]
    with torch.no_grad():
        torch_out = model(torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"]))
    for a, b in zip(onnx_out, torch_out, strict=True):
        assert np.abs(a - b.numpy()).max() < 1e-3


# --- real processes: concurrent registrations, SIGKILL mid-write ------------------------------------

_REGISTER_LOOP = """
import sys
from finsent.models.registry import Registry
reg = Registry(sys.argv[1])
for i in range(int(sys.argv[3])):
    print("start", flush=True)
    mv = reg.register(sys.argv[2], aliases=("candidate",), by=sys.argv[4])
    print("done", mv.version, flush=True)
"""


def _spawn(reg: Path, model: Path, n: int, who: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _REGISTER_LOOP, str(reg), str(model), str(n), who],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def test_two_processes_registering_at_once_get_distinct_complete_versions(tiny: Path, tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    procs = [_spawn(reg.root, tiny, 4, f"p{i}") for i in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    made = [line.split()[1] for out in outs for line in out.splitlines() if line.startswith("done")]
    assert len(made) == 8 and len(set(made)) == 8
    assert sorted(reg.get(v).number for v in made) == list(range(1, 9))
    _complete(reg)
    history = reg.aliases()["history"]
    assert len(history) == 8 and {h["by"] for h in history} == {"p0", "p1"}
    assert reg.resolve("candidate").version in made


def test_sigkill_during_registration_never_leaves_a_broken_version(tiny: Path, tmp_path: Path) -> None:
    big = tmp_path / "big"
    make_tiny_model(big)
    (big / "padding.bin").write_bytes(os.urandom(40 << 20))  # makes the copy the long part of a registration
    reg = Registry(tmp_path / "reg")
    leftovers = 0
    for attempt in range(4):
        proc = _spawn(reg.root, big, 50, "victim")
        assert proc.stdout is not None
        starts = 0
        while starts < attempt + 1:  # the kill lands inside the (attempt+1)-th registration
            line = proc.stdout.readline()
            assert line, "the registering process died on its own"
            starts += line.startswith("start")
        time.sleep(0.01 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        _complete(reg)
        staging = reg.root / STAGING_DIR
        leftovers += len(list(staging.iterdir())) if staging.is_dir() else 0
    assert leftovers, "no kill landed in the middle of a write; the test did not test anything"
    # the next writer clears what the dead ones left, and the lock they held is free
    mv = reg.register(tiny)
    assert mv is not None and list((reg.root / STAGING_DIR).iterdir()) == []
    _complete(reg)
    numbers = [v.number for v in reg.versions()]
    assert numbers == sorted(set(numbers))


def test_validation_cap_samples_the_whole_set_not_its_head() -> None:
    from finsent.models.data import LabelledSet
    from finsent.models.retrain import _cap

    labels = [lab for lab in ("a", "b", "c", "d") for _ in range(500)]  # a file sorted by label
    ds = LabelledSet("s", "topic", [f"t{i}" for i in range(len(labels))], labels)
    capped = _cap(ds, 100)
    assert len(capped) == 100 and set(capped.labels) == {"a", "b", "c", "d"}
    assert _cap(ds, 100) == capped  # fixed
