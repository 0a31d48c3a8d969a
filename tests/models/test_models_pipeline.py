"""Data loading and splits, `finsent eval`, `finsent train` end to end (tiny base) and `finsent bench model`."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from finsent.cli import main
from finsent.core.errors import InputError, ModelError
from finsent.models.data import (
    SPLIT_SEED,
    LabelledSet,
    dedupe,
    detect_task,
    make_splits,
    norm_key,
    read_labelled_csv,
    split_set,
)
from finsent.models.evaluate import evaluate_files, score
from finsent.models.labels import SENTIMENT_LABELS, TOPIC_LABELS
from finsent.models.runtime import Classifier
from finsent.models.testing import make_tiny_base, make_tiny_model

SEED_DIR = Path(__file__).resolve().parents[2] / "models" / "seed"
WORDS = [
    "shares",
    "stock",
    "market",
    "price",
    "profit",
    "loss",
    "revenue",
    "earnings",
    "bank",
    "fed",
    "oil",
    "gold",
    "dollar",
    "bond",
    "yield",
    "dividend",
    "ipo",
]


def _write(path: Path, header: tuple[str, str], rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def _synthetic(kind: str, n_per_class: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    labels = SENTIMENT_LABELS if kind == "sentiment" else TOPIC_LABELS
    rows = []
    for lab in labels:
        for i in range(n_per_class):
            rows.append((f"{lab.split()[0].lower()} {' '.join(rng.choices(WORDS, k=6))} {i} {kind}", lab))
    rng.shuffle(rows)
    return rows


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


# --- data ----------------------------------------------------------------------------------------


def test_task_follows_from_columns(tmp_path: Path) -> None:
    assert detect_task(["text", "label"], tmp_path) == "sentiment"
    assert detect_task(["Text", "Topic"], tmp_path) == "topic"
    with pytest.raises(ValueError, match="expected text,label"):
        detect_task(["text", "score"], tmp_path)
    with pytest.raises(ValueError, match="no 'text' column"):
        detect_task(["body", "label"], tmp_path)


def test_read_csv_normalises_and_rejects_unknown_labels(tmp_path: Path) -> None:
    ds = read_labelled_csv(_write(tmp_path / "s.csv", ("text", "label"), [("up", "Positive"), ("", "neutral")]))
    assert (ds.task, ds.texts, ds.labels) == ("sentiment", ["up"], ["positive"])  # empty text row skipped
    bad = _write(tmp_path / "t.csv", ("text", "topic"), [("a", "Earnings"), ("b", "Sports")])
    with pytest.raises(ValueError, match=r"t.csv:3: topic 'Sports' is not one of"):
        read_labelled_csv(bad)
    with pytest.raises(InputError, match="does not exist.*text,label or text,topic"):
        read_labelled_csv(tmp_path / "missing.csv")


def test_split_is_deterministic_stratified_and_disjoint() -> None:
    rows = _synthetic("sentiment", 40, 1)
    ds = LabelledSet("s", "sentiment", [t for t, _ in rows], [y for _, y in rows])
    a = split_set(ds, SPLIT_SEED)
    b = split_set(ds, SPLIT_SEED)
    assert [p.texts for p in a] == [p.texts for p in b]
    train, val, test = a
    assert (len(train), len(val), len(test)) == (96, 12, 12)
    assert sorted(test.counts().values()) == [4, 4, 4]
    assert not set(train.texts) & set(test.texts) and not set(val.texts) & set(test.texts)
    assert split_set(ds, SPLIT_SEED + 1)[2].texts != test.texts


def test_dedupe_and_cross_set_leakage_removal(tmp_path: Path) -> None:
    sent = _synthetic("sentiment", 40, 2)
    topic = _synthetic("topic", 10, 3)
    # the same tweet in both sets (as happens between the two Twitter sets), plus an exact duplicate
    shared = [(f"Shared headline number {i}", "neutral") for i in range(30)]
    topic_shared = [(f"shared  headline NUMBER {i}", "Markets") for i in range(30)]
    paths = {
        "s": _write(tmp_path / "s.csv", ("text", "label"), sent + shared + shared[:5]),
        "t": _write(tmp_path / "t.csv", ("text", "topic"), topic + topic_shared),
    }
    assert len(dedupe(read_labelled_csv(paths["s"]))) == len(sent) + len(shared)
    splits = make_splits(paths)
    held = {norm_key(t) for part in (splits.val, splits.test) for ds in part.values() for t in ds.texts}
    for ds in splits.train.values():
        assert not {norm_key(t) for t in ds.texts} & held


# --- eval ----------------------------------------------------------------------------------------


def test_score_computes_accuracy_macro_f1_and_per_class() -> None:
    r = score(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b", "c"])
    assert r["n"] == 4 and r["accuracy"] == pytest.approx(0.75)
    # F1(a) = 2/3, F1(b) = 0.8; "c" is in neither truth nor prediction and does not count
    assert r["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert set(r["per_class"]) == {"a", "b"}
    assert r["per_class"]["b"]["support"] == 2 and r["per_class"]["a"]["recall"] == pytest.approx(0.5)


def test_evaluate_files_on_seed_data(tiny_dir: Path) -> None:
    out = evaluate_files(
        Classifier.load(tiny_dir, variant="fp32"), [SEED_DIR / "sentiment.csv", SEED_DIR / "topic.csv"]
    )
    assert out["model_version"].startswith("tiny-random-")
    tasks = [(r["task"], r["n"]) for r in out["results"]]
    assert tasks == [("sentiment", 300), ("topic", 400)]
    for r in out["results"]:
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["macro_f1"] <= 1
        assert sum(m["support"] for m in r["per_class"].values()) == r["n"]


def test_eval_command_writes_json(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval.json"
    rc = main(
        ["eval", str(SEED_DIR / "topic.csv"), "--model-dir", str(tiny_dir), "--variant", "fp32", "--json", str(out)]
    )
    assert rc == 0
    body = json.loads(out.read_text())
    assert set(body) >= {"model_version", "results"}
    assert body["results"][0]["path"].endswith("topic.csv") and body["results"][0]["task"] == "topic"
    assert "accuracy=" in capsys.readouterr().out


def test_eval_command_bad_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _write(tmp_path / "bad.csv", ("text", "score"), [("x", "1")])
    assert main(["eval", str(bad), "--model-dir", str(make_tiny_model(tmp_path / "m"))]) == InputError.exit_code
    assert "expected text,label" in capsys.readouterr().err
    assert main(["eval", str(SEED_DIR / "topic.csv"), "--model-dir", str(tmp_path / "none")]) == ModelError.exit_code
    err = capsys.readouterr().err
    assert "does not exist" in err and err.count("\n") == 1


# --- train end to end ------------------------------------------------------------------------------


def test_train_exports_a_loadable_model_with_card_and_metrics(tmp_path: Path) -> None:
    base = make_tiny_base(tmp_path / "base")
    fpb = _write(tmp_path / "fpb.csv", ("text", "label"), _synthetic("sentiment", 30, 4))
    tfns = _write(tmp_path / "tfns.csv", ("text", "label"), _synthetic("sentiment", 30, 5))
    topic = _write(tmp_path / "topic.csv", ("text", "topic"), _synthetic("topic", 12, 6))
    run, model_out = tmp_path / "run", tmp_path / "model"
    rc = main(
        [
            "train", "--fpb", str(fpb), "--tfns", str(tfns), "--topic", str(topic), "--base-model", str(base),
            "--out", str(run), "--model-out", str(model_out), "--epochs", "2", "--batch-size", "16",
            "--eval-every", "1", "--budget-minutes", "5", "--threads", "1",
        ]
    )  # fmt: skip
    assert rc == 0
    history = json.loads((run / "history.json").read_text())
    assert history and all("val_mean_macro_f1" in h for h in history)
    assert (run / "best" / "model.pt").is_file()
    assert "macro avg" in (run / "classification_reports.txt").read_text()
    for name in ("model.onnx", "tokenizer.json", "labels.json", "README.md", "metrics.json",
                 "confusion_fpb.png", "confusion_tfns.png", "confusion_topic.png"):  # fmt: skip
        assert (model_out / name).is_file(), name
    assert (model_out / "confusion_topic.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((model_out / "metrics.json").read_text())
    assert set(metrics["test"]) == {"pytorch", "fp32", "int8"}
    assert metrics["test"]["fp32"]["topic"]["n"] == 24
    # the ONNX graph scores like the PyTorch model it came from
    for name in ("fpb", "tfns", "topic"):
        assert metrics["test"]["fp32"][name]["accuracy"] == pytest.approx(metrics["test"]["pytorch"][name]["accuracy"])
    card = (model_out / "README.md").read_text()
    assert "CC BY-NC-SA 3.0" in card and "| topic | int8 |" in card
    clf = Classifier.load(model_out)
    assert clf.version == metrics["model_version"]
    assert clf.preprocess == ("strip_urls",)  # trained without links, so served without them
    assert len(clf.predict(["oil falls"])) == 1

    # continue from the checkpoint (what a retrain on new data does): starts from its weights, not the base
    run2, model2 = tmp_path / "run2", tmp_path / "model2"
    rc = main(
        [
            "train", "--fpb", str(fpb), "--tfns", str(tfns), "--topic", str(topic), "--init-from", str(run / "best"),
            "--out", str(run2), "--model-out", str(model2), "--epochs", "1", "--batch-size", "16",
            "--eval-every", "1", "--budget-minutes", "5", "--threads", "1", "--keep-urls",
        ]
    )  # fmt: skip
    assert rc == 0
    cfg2 = json.loads((run2 / "config.json").read_text())
    assert cfg2["init_from"] == str(run / "best") and cfg2["base_model"] == str(base) and cfg2["preprocess"] == []
    assert Classifier.load(model2).preprocess == ()


def test_train_without_data_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    assert "missing data file" in capsys.readouterr().err


# --- bench ---------------------------------------------------------------------------------------


def test_bench_model_reports_every_runtime_and_batch_size(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    rc = main(
        ["bench", "model", "--model-dir", str(tiny_dir), "--batch-sizes", "1,32", "--seconds", "0.05", "--repeats", "1",
         "--no-torch", "--json", str(out)]
    )  # fmt: skip
    assert rc == 0
    body = json.loads(out.read_text())
    assert body["device"].startswith("CPU")
    rows = {(r["runtime"], r["batch_size"], r.get("sorted")) for r in body["results"]}
    assert rows == {
        ("ort-fp32", 1, False), ("ort-fp32", 32, True), ("ort-int8", 1, False), ("ort-int8", 32, True),
        ("ort-int8", 32, False),
    }  # fmt: skip
    assert all(r["sentences_per_s"] > 0 and r["provider"] == "CPUExecutionProvider" for r in body["results"])


def test_bench_pytorch_rows_use_the_checkpoint(tmp_path: Path) -> None:
    import torch

    from finsent.bench.model import run_bench
    from finsent.models.modeling import MultiTaskClassifier, build_encoder, save_checkpoint
    from finsent.models.testing import _tiny_config

    model = MultiTaskClassifier(build_encoder(_tiny_config()), len(SENTIMENT_LABELS), len(TOPIC_LABELS))
    torch.manual_seed(0)
    save_checkpoint(model, tmp_path / "ckpt", {"sentiment": list(SENTIMENT_LABELS), "topic": list(TOPIC_LABELS)})
    out = run_bench(make_tiny_model(tmp_path / "m"), (4,), 0.05, checkpoint=tmp_path / "ckpt", threads=1)
    assert [r["runtime"] for r in out["results"]] == ["ort-fp32", "ort-int8", "pytorch-eager"]


def test_bench_rejects_bad_batch_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "model", "--batch-sizes", "0,x"]) == 2
    assert "positive integers" in capsys.readouterr().err


def test_eval_metrics_need_no_sklearn_and_agree_with_it() -> None:
    import random
    import sys

    from finsent.models.evaluate import score

    labels = ["negative", "neutral", "positive", "never"]
    rng = random.Random(3)
    truth = [rng.choice(labels[:3]) for _ in range(500)]
    pred = [t if rng.random() < 0.7 else rng.choice(labels) for t in truth]
    blocked = sys.modules.get("sklearn", None)
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # any import of it now fails
    try:
        ours = score(truth, pred, labels)
    finally:
        if blocked is None:
            del sys.modules["sklearn"]
        else:
            sys.modules["sklearn"] = blocked
    from sklearn.metrics import accuracy_score, classification_report, f1_score

    present = [lab for lab in labels if lab in set(truth) | set(pred)]
    assert ours["accuracy"] == pytest.approx(accuracy_score(truth, pred))
    assert ours["macro_f1"] == pytest.approx(f1_score(truth, pred, labels=present, average="macro", zero_division=0))
    ref = classification_report(truth, pred, labels=present, output_dict=True, zero_division=0)
    for lab in present:
        assert ours["per_class"][lab]["f1-score"] == pytest.approx(ref[lab]["f1-score"], abs=1e-4)
        assert ours["per_class"][lab]["support"] == ref[lab]["support"]


def test_bench_model_without_torch_skips_the_eager_rows_and_says_so(tiny_dir: Path, monkeypatch) -> None:
    import sys

    from finsent.bench.model import run_bench

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails, as on the runtime install
    out = run_bench(tiny_dir, (4,), 0.02, threads=1, repeats=1)
    assert [r["runtime"] for r in out["results"]] == ["ort-fp32", "ort-int8"]
    assert out["skipped"] and "torch is not installed" in out["skipped"][0]
