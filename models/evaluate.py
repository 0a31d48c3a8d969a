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
    the trainer; tests/models/test_models_pipeline.py checks the two agree.
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
        per_class[lab] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1-score": round(f1, 4),
            "support": true_n[lab],
        }
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


# --- entities: FinEntity-format JSON -------------------------------------------------------------------------


def is_finentity_file(path: str | Path) -> bool:
    """A ``.json`` file holding a list of ``{"content", "annotations"}`` objects (FinEntity's format)."""
    p = Path(path)
    if p.suffix.lower() != ".json":
        return False
    try:
        with p.open("r", encoding="utf-8-sig") as fh:
            head = fh.read(4096).lstrip()
    except OSError:
        return False
    return head.startswith("[") and '"content"' in head


def read_finentity(path: str | Path) -> list[tuple[str, list[tuple[str, str]]]]:
    """``[(content, [(value, label), ...])]`` of a FinEntity-format file.

    FinEntity's ``start``/``end`` are shifted by a few characters on about 3% of spans while ``value`` is right,
    so spans are taken by their surface text (``value``), which is also what the metrics match on.
    """
    import json

    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{p}: not a readable JSON file ({exc})",
            hint='FinEntity format: [{"content": ..., "annotations": [{"value", "label"}]}]',
        ) from None
    if not isinstance(data, list):
        raise InputError(f"{p}: FinEntity format is a JSON list of paragraphs", hint="see finsent eval --help")
    out: list[tuple[str, list[tuple[str, str]]]] = []
    for i, para in enumerate(data):
        content = para.get("content") if isinstance(para, dict) else None
        anns = para.get("annotations", []) if isinstance(para, dict) else None
        if not isinstance(content, str) or not content.strip() or not isinstance(anns, list):
            raise InputError(
                f"{p}: paragraph {i} lacks a text 'content' or an 'annotations' list",
                hint='each item is {"content": str, "annotations": [{"value", "label", ...}]}',
            )
        spans = []
        for a in anns:
            if not isinstance(a, dict) or not isinstance(a.get("value"), str) or not isinstance(a.get("label"), str):
                raise InputError(
                    f"{p}: paragraph {i} has an annotation without a string value and label",
                    hint="each annotation needs value (the span text) and label (sentiment)",
                )
            spans.append((a["value"], a["label"].strip().lower()))
        out.append((content, spans))
    return out


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def predicted_spans(clf: Any, text: str, pred: Any) -> set[tuple[str, str]]:
    """``{(normalised surface, sentiment)}`` the model and linker give a text: every entity's kept mention, plus
    every other gazetteer occurrence of the same entity with that entity's sentiment."""
    from finsent.models.linking import normalise_name

    by_key = {m.entity_id or "~" + m.name: m for m in pred.entities}
    out = {(normalise_name(m.text), m.sentiment) for m in pred.entities}
    linker = getattr(clf, "linker", None)
    if linker is not None:
        for occ in linker.find(text):
            m = by_key.get(occ.entity_id)
            if m is not None:
                out.add((normalise_name(text[occ.start : occ.end]), m.sentiment))
    return out


def evaluate_finentity(clf: Any, path: str | Path) -> dict[str, Any]:
    """Span P/R/F1 and span+sentiment micro-F1 on a FinEntity-format file, matched per paragraph on the
    normalised surface text (:func:`finsent.models.linking.normalise_name`); plus ``linked``: the share of gold
    spans the linker maps to an entity id (a gazetteer match overlaps it, or the span itself links)."""
    from finsent.models.linking import normalise_name

    paras = read_finentity(path)
    if not paras:
        raise InputError(f"{path}: no paragraphs")
    preds = clf.predict([c for c, _ in paras])
    span = [0, 0, 0]
    full = [0, 0, 0]
    per_label: dict[str, list[int]] = {}
    gold_spans = linked = 0
    linker = getattr(clf, "linker", None)
    for (content, spans), pred in zip(paras, preds, strict=True):
        gold = {(normalise_name(v), lab) for v, lab in spans}
        got = predicted_spans(clf, content, pred)
        g_s, p_s = {s for s, _ in gold}, {s for s, _ in got}
        span[0] += len(g_s & p_s)
        span[1] += len(p_s - g_s)
        span[2] += len(g_s - p_s)
        full[0] += len(gold & got)
        full[1] += len(got - gold)
        full[2] += len(gold - got)
        for lab in {lab for _, lab in gold | got}:
            g_l = {x for x in gold if x[1] == lab}
            p_l = {x for x in got if x[1] == lab}
            c = per_label.setdefault(lab, [0, 0, 0])
            c[0] += len(g_l & p_l)
            c[1] += len(p_l - g_l)
            c[2] += len(g_l - p_l)
        if linker is not None:
            found = linker.find(content)
            for value, _ in spans:
                gold_spans += 1
                start = content.find(value)
                end = start + len(value)
                if start >= 0 and (
                    any(f.start < end and start < f.end for f in found)
                    or linker.link_span(content, start, end)[0] is not None
                ):
                    linked += 1
    out: dict[str, Any] = {
        "task": "entities",
        "n": len(paras),
        "gold_spans": sum(len(s) for _, s in paras),
        "span": _prf(*span),
        "span_sentiment": _prf(*full),
        "per_class": {lab: _prf(*c) for lab, c in sorted(per_label.items())},
    }
    if linker is not None:
        out["linked"] = round(linked / gold_spans, 4) if gold_spans else 0.0
    return out
