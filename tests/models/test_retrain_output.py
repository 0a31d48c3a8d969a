"""What :func:`finsent.models.retrain.retrain` says and returns, line by line and key by key, on the tiny model
(``max_steps`` 0 and a few steps). A characterisation test (issue 23): retrain was split into one helper per step,
and any change to its progress lines, its ``--json`` result, the metrics it registers or where it works must
show up here. The numbers themselves are the gate's and evaluate's (tested with them)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from finsent.models.gate import summary_lines
from finsent.models.registry import Registry
from finsent.models.retrain import RetrainOptions, retrain
from finsent.models.testing import make_tiny_model
from finsent.models.train import hardware
from tests.models.test_retrain_entities import _opts
from tests.retrain_helpers import synthetic_sets

RESULT_KEYS = {
    "version",
    "parent",
    "promoted",
    "gate",
    "metrics",
    "minutes",
    "steps",
    "frozen_fingerprint",
    "data_fingerprint",
    "entities",
}
TRAIN_KEYS = {"sizes", "val_sizes", "device", "hardware", "start", "config", "steps", "train_seconds"}


def _run_opts(tmp_path: Path, **kw) -> RetrainOptions:
    """test_retrain_entities' options (tiny, fast, one thread) on a fresh tiny two-head production, no entity data."""
    initial = str(make_tiny_model(tmp_path / "tiny"))
    return _opts(tmp_path, synthetic_sets(tmp_path / "data"), initial_model=initial, entities="", **kw)


def test_max_steps_0_says_each_step_and_registers_the_start_weights(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    reg = Registry(tmp_path / "reg")
    lines: list[str] = []
    r = retrain(reg, _run_opts(tmp_path, max_steps=0), progress=lines.append)
    prod, cand = r["parent"], r["version"]
    assert set(r) == RESULT_KEYS and (r["steps"], r["promoted"], r["entities"]) == (0, False, None)
    assert lines == [
        f"registry {reg.root}: registered {prod} (initial ({tmp_path / 'tiny'})) as production",
        f"training sets (frozen texts removed): sent 144, topic 239; frozen set {r['frozen_fingerprint']}: "
        "sent 18, topic 30",
        f"fine-tuning from {prod} on cpu ({hardware()})",
        "--max-steps 0: no training, the start model is exported as it is",
        f"exported {cand}; scoring the frozen set",
        *[line.replace("**", "") for line in summary_lines(r["gate"])],
        f"registered {cand} as candidate (production stays {prod})",
    ]
    # the start weights, exported: production's name hash, and the same scores as production on every set
    assert cand.rsplit("-", 1)[1] == prod.rsplit("-", 1)[1]
    assert set(r["metrics"]) == {"sent", "topic"}
    for row in r["metrics"].values():
        assert set(row) == {"candidate", "production", "candidate_int8", "candidate_accuracy"}
        assert row["candidate"] == row["production"]
    mv = reg.get(cand)
    m = mv.metrics()
    assert set(m) == {"frozen", "entities", "frozen_fingerprint", "train", "human_labels", "max_abs_diff_vs_torch"}
    assert set(m["train"]) == TRAIN_KEYS and m["train"]["start"] == prod and m["train"]["steps"] == 0
    assert m["train"]["sizes"] == {"sent": 144, "topic": 239} and m["train"]["val_sizes"] == {"sent": 18, "topic": 31}
    cfg = m["train"]["config"]
    assert (cfg["lr"], cfg["head_lr"], cfg["max_length"], cfg["max_steps"], cfg["base_model"]) == (
        1e-3,
        1e-2,
        64,
        0,
        None,
    )
    assert set(m["frozen"]) == {"candidate_fp32", "candidate_int8", "production_fp32"}
    assert m["human_labels"] == {"total": 0, "frozen": 0} and m["entities"] is None
    assert mv.meta["parent"] == prod and mv.meta["source"] == "retrain"
    assert mv.meta["data_fingerprint"] == r["data_fingerprint"] and mv.meta["gate"] == r["gate"]
    assert reg.resolve("candidate").version == cand and reg.resolve("production").version == prod
    assert list((tmp_path / "tmp").glob("finsent-retrain-*")) == []  # the temporary work directory is removed


def test_a_trained_candidate_keeps_its_work_dir_when_asked(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    lines: list[str] = []
    work = tmp_path / "work"
    r = retrain(reg, _run_opts(tmp_path, max_steps=3, work_dir=str(work)), progress=lines.append)
    assert r["steps"] == 3 and "--max-steps 0: no training, the start model is exported as it is" not in lines
    assert lines[3] == f"exported {r['version']}; scoring the frozen set"
    assert (work / "run" / "best").is_dir() and (work / "model" / "model.onnx").is_file()
    train = reg.get(r["version"]).metrics()["train"]
    assert train["config"]["out_dir"] == str(work / "run") and train["config"]["max_steps"] == 3
    assert set(train) >= TRAIN_KEYS and train["steps"] == 3
