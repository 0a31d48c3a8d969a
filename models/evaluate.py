"""Score a model on labelled CSVs: accuracy, macro-F1 and a per-class report per file.

``finsent eval`` calls :func:`evaluate_files`; the trainer uses :func:`score` for the model card
and the variant comparison. Scoring goes through the runtime :class:`~models.runtime.Classifier`,
i.e. the exact ONNX graph and tokenizer that production uses, not PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finsent.core.errors import InputError
from finsent.models.data import LabelledSet, read_labelled_csv


def score(truth: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """accuracy, macro-F1 over ``labels`` and sklearn's per-class precision/recall/F1/support."""
    from sklearn.metrics import accuracy_score, classification_report, f1_score

    present = [lab for lab in labels if lab in set(truth) or lab in set(pred)]
    report = classification_report(truth, pred, labels=present, output_dict=True, zero_division=0)
    per_class = {
        lab: {k: (int(v) if k == "support" else round(float(v), 4)) for k, v in report[lab].items()} for lab in present
    }
    return {
        "n": len(truth),
        "accuracy": float(accuracy_score(truth, pred)),
        "macro_f1": float(f1_score(truth, pred, labels=present, average="macro", zero_division=0)),
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
