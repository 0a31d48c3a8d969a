"""Score a model on labelled CSVs: accuracy, macro-F1 and a per-class report per file.

``finsent eval`` calls :func:`evaluate_files`; the trainer uses :func:`score` for the model card
and the variant comparison. Scoring goes through the runtime :class:`~models.runtime.Classifier`,
i.e. the exact ONNX graph and tokenizer that production uses, not PyTorch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finsent.core.errors import InputError
from finsent.models.data import LabelledSet, read_labelled_csv


def score(truth: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support, without scikit-learn.

    The definitions are scikit-learn's (``zero_division=0``; macro over the labels present in the
    truth or the predictions), so ``finsent eval`` works on the runtime install and agrees with
    the trainer; tests/test_models_pipeline.py checks the two agree.
    """
    if len(truth) != len(pred):
        raise ValueError(f"{len(truth)} true labels but {len(pred)} predictions")
    seen = set(truth) | set(pred)
    present = [lab for lab in labels if lab in seen]
    true_n = Counter(truth)
    pred_n = Counter(pred)
    hits = Counter(t for t, p in zip(truth, pred, strict=True) if t == p)
    per_class: dict[str, dict[str, float | int]] = {}
    f1s: list[float] = []
    for lab in present:
        precision = hits[lab] / pred_n[lab] if pred_n[lab] else 0.0
        recall = hits[lab] / true_n[lab] if true_n[lab] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s.append(f1)
        per_class[lab] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1-score": round(f1, 4),
                          "support": true_n[lab]}
    return {
        "n": len(truth),
        "accuracy": sum(hits.values()) / len(truth) if truth else 0.0,
        "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0,
        "per_class": per_class,
    }


def predict_labels(clf: Any, ds: LabelledSet) -> list[str]:
    preds = clf.predict(ds.texts)
    return [p.sentiment if ds.task == "sentiment" else p.topic for p in preds]


def evaluate_set(clf: Any, ds: LabelledSet) -> dict[str, Any]:
    labels = clf.sentiment_labels if ds.task == "sentiment" else clf.topic_labels
    unknown = sorted(set(ds.labels) - set(labels))
    if unknown:
        raise ValueError(f"{ds.name}: labels {unknown} are not among the model's {ds.task} labels")
    pred = predict_labels(clf, ds)
    return {"task": ds.task, **score(ds.labels, pred, labels), "pred": pred}


def evaluate_files(clf: Any, paths: Sequence[str | Path]) -> dict[str, Any]:
    """The ``finsent eval`` JSON: ``{"model_version", "results": [{path, task, n, accuracy, macro_f1, per_class}]}``."""
    results = []
    for path in paths:
        ds = read_labelled_csv(path)
        if not len(ds):
            raise InputError(f"{path}: no rows with text")
        r = evaluate_set(clf, ds)
        r.pop("pred")
        results.append({"path": str(path), **r})
    return {"model_version": clf.version, "variant": clf.variant, "provider": clf.provider, "results": results}
