"""Turn a training run's best checkpoint into a model directory with measured numbers.

Steps: export to ONNX (checked against PyTorch), score PyTorch and every runtime variant on the
held-out **test** split, record label agreement of each variant with fp32, draw confusion
matrices, write ``metrics.json`` and the model card. ``finsent train`` runs this at the end;
``finsent train --export-only RUN_DIR`` re-runs it on an existing run.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from finsent.models.data import LabelledSet, Splits, make_splits
from finsent.models.modeldir import ModelInfo
from finsent.models.textprep import check_steps

log = logging.getLogger(__name__)
INFERENCE_MAX_LENGTH = 128


def _head(ds: LabelledSet, n: int) -> LabelledSet:
    return LabelledSet(ds.name, ds.task, ds.texts[:n], ds.labels[:n])


def encoder_layers(model_file: Path) -> int:
    """Encoder layers of an exported graph: one feed-forward down-projection per layer."""
    import onnx

    from finsent.models.variants import ffn_output_matmuls

    return len(ffn_output_matmuls(onnx.load(str(model_file))))


def teacher_summary(teacher_dir: Path, test: dict[str, LabelledSet], variants: tuple[str, ...]) -> dict[str, Any]:
    """What a distilled model's card says of its teacher: version, layers, and its scores on the student's
    test split, each runtime variant scored here (same texts, same code) rather than read from its card."""
    from finsent.models.evaluate import evaluate_set
    from finsent.models.modeldir import read_model_info
    from finsent.models.runtime import Classifier

    scores: dict[str, dict[str, Any]] = {}
    for variant in variants:
        clf = Classifier.load(teacher_dir, variant=variant)
        scores[variant] = {}
        for set_name, ds in test.items():
            r = evaluate_set(clf, ds)
            scores[variant][set_name] = {k: r[k] for k in ("n", "accuracy", "macro_f1")}
    return {
        "dir": str(teacher_dir),
        "model_version": read_model_info(teacher_dir).model_version,
        "layers": encoder_layers(teacher_dir / "model.onnx"),
        "test": scores,
    }


def finalize(
    run_dir: Path,
    model_dir: Path,
    name: str = "finsent-minilm",
    variants: tuple[str, ...] | None = None,
    limit: int = 0,
    int8_rows: tuple[str, ...] = (),
) -> dict:
    """Export ``run_dir/best`` into ``model_dir`` and score it; ``limit`` > 0 caps each test set (smoke runs).

    ``int8_rows``: initializers stored as int8 rows (the distilled student's word embeddings).
    """
    import torch

    from finsent.models.evaluate import evaluate_set
    from finsent.models.export import export_model_dir, write_json
    from finsent.models.modeling import load_checkpoint
    from finsent.models.report import confusion_png, model_card, text_report
    from finsent.models.runtime import Classifier
    from finsent.models.train import load_tokenizer, score_sets

    run_dir, model_dir = Path(run_dir), Path(model_dir)
    model, meta = load_checkpoint(run_dir / "best", attn_implementation="eager")
    cfg = meta["config"]
    steps = check_steps(cfg.get("preprocess", []))  # runs from before models.textprep used raw text
    tok = load_tokenizer(cfg.get("base_model"))
    splits: Splits = make_splits({k: Path(v) for k, v in cfg["data"].items()}, cfg["split_seed"])
    if limit:
        splits = Splits(splits.train, splits.val, {k: _head(v, limit) for k, v in splits.test.items()})
    enc_cfg = model.encoder.config
    stamp = datetime.now(UTC).strftime("%Y%m%d")
    base_name = cfg.get("base_model") or "sentence-transformers/all-MiniLM-L6-v2"
    if cfg.get("teacher"):  # a student: its "base" is the teacher it was distilled from, by version (no local path)
        from finsent.models.modeldir import read_model_info

        base_name = f"distilled from {read_model_info(Path(cfg['teacher'])).model_version}"
    max_length = min(INFERENCE_MAX_LENGTH, int(enc_cfg.max_position_embeddings) - 2)
    info = ModelInfo(
        f"{name}-{stamp}-auto",
        tuple(meta["sentiment"]),
        tuple(meta["topic"]),
        max_length,
        {
            "base_model": base_name,
            "num_heads": int(enc_cfg.num_attention_heads),
            "hidden_size": int(enc_cfg.hidden_size),
            "preprocess": list(steps),
        },
    )
    report = export_model_dir(model, tok, model_dir, info, int8_rows=int8_rows)
    log.info("exported %s (%.1f MB)", report.model_version, report.onnx_bytes / 1e6)

    summary = (
        json.loads((run_dir / "train_summary.json").read_text()) if (run_dir / "train_summary.json").exists() else {}
    )
    test: dict[str, dict[str, Any]] = {}
    preds: dict[str, dict[str, list[str]]] = {}
    t0 = time.monotonic()
    torch_scores = score_sets(model, load_tokenizer(cfg.get("base_model")), splits.test, max_length, steps)
    test["pytorch"] = {k: {kk: v[kk] for kk in ("n", "accuracy", "macro_f1")} for k, v in torch_scores.items()}
    log.info("pytorch test scores in %.0fs: %s", time.monotonic() - t0, test["pytorch"])
    if variants is None:
        variants = ("fp32", "int8", "fp16") if torch.cuda.is_available() else ("fp32", "int8")
    for variant in variants:
        clf = Classifier.load(model_dir, variant=variant)
        test[variant], preds[variant] = {}, {}
        for set_name, ds in splits.test.items():
            r = evaluate_set(clf, ds)
            preds[variant][set_name] = r.pop("pred")
            test[variant][set_name] = r
        log.info("%s test scores: %s", variant, {k: (v["accuracy"], v["macro_f1"]) for k, v in test[variant].items()})
    agreement = {}
    for variant in variants:
        if variant == "fp32":
            continue
        agree: dict[str, list[bool]] = {"sentiment": [], "topic": []}
        for set_name, ds in splits.test.items():
            agree[ds.task] += [a == b for a, b in zip(preds[variant][set_name], preds["fp32"][set_name], strict=True)]
        agreement[variant] = {task: sum(v) / max(1, len(v)) for task, v in agree.items()}
    reports = []
    for set_name, ds in splits.test.items():
        labels = info.sentiment if ds.task == "sentiment" else info.topic
        confusion_png(
            ds.labels,
            preds["fp32"][set_name],
            labels,
            f"{set_name} test ({ds.task}), fp32 ONNX",
            model_dir / f"confusion_{set_name}.png",
        )
        reports.append(
            f"== {set_name} ({ds.task}), fp32 ONNX, test split ==\n"
            + text_report(ds.labels, preds["fp32"][set_name], labels)
        )
    (run_dir / "classification_reports.txt").write_text("\n".join(reports), encoding="utf-8")
    sizes = {
        k: {
            "task": splits.train[k].task,
            "train": len(splits.train[k]),
            "val": len(splits.val[k]),
            "test": len(splits.test[k]),
        }
        for k in splits.train
    }
    card_meta = {
        "model_version": report.model_version,
        "base_model": base_name,
        "max_length": max_length,
        "onnx_opset": 17,
        "max_abs_diff": {"fp32_graph": report.max_abs_diff_fp32, "fp16_storage_graph": report.max_abs_diff_stored},
        "sizes": sizes,
        "config": cfg,
        "hardware": meta.get("hardware", "unknown"),
        "train_seconds": summary.get("train_seconds", 0.0),
        "steps": summary.get("steps", meta.get("step")),
        "best_step": meta.get("step"),
        "best_epoch": meta.get("epoch", 0.0),
        "test": test,
        "agreement": agreement,
        "reference_variant": "fp32",
        "history": json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").exists() else [],
        "layers": int(enc_cfg.num_hidden_layers),
        "int8_rows": list(int8_rows),
    }
    if cfg.get("teacher"):
        card_meta["teacher"] = teacher_summary(Path(cfg["teacher"]), splits.test, variants)
    write_json(model_dir / "metrics.json", card_meta)
    (model_dir / "README.md").write_text(model_card(card_meta), encoding="utf-8")
    print("\n".join(reports))
    return card_meta
