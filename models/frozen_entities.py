"""The entity head's part of a registry's frozen evaluation set: FinEntity paragraphs, fixed once.

Why a second frozen set: the gate judges a retrained candidate on texts neither model trained on, and the
entity head (issue 24) has its own data and metric (span+sentiment micro-F1). The paragraphs are the fixed
20% hold-out of :func:`finsent.models.entity_head.finentity_split` (seed 13): the one part of FinEntity the
shipped entity head never saw, so the first gate compares the shipped model with its first retrain fairly
(the reason :mod:`finsent.models.frozen` takes the item sets' test split).

Layout: ``ROOT/frozen-entities/finentity.json`` (FinEntity format, spans already realigned to their
``value``) and ``manifest.json`` (source, rule, paragraph and span counts, fingerprint, when). It is written
once, in one rename under the registry lock, by the first retrain that has entity data; from then on the
file is what is evaluated and its texts are removed from entity training. A registry made before the entity
head simply gets it on its next such retrain.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finsent.models.data import default_data_dir, norm_key
from finsent.models.entity_head import EntityParagraph, finentity_split, read_finentity_spans

FROZEN_ENTITIES_DIR = "frozen-entities"
FROZEN_FILE = "finentity.json"
MANIFEST = "manifest.json"


def default_entity_data() -> Path | None:
    """FinEntity under the data directory (``$FINSENT_DATA_DIR`` or ``../shared/data``), if it is there."""
    path = default_data_dir() / "finentity" / "train.json"
    return path if path.is_file() else None


def to_finentity_json(paragraphs: Sequence[EntityParagraph]) -> list[dict[str, Any]]:
    """Paragraphs back to FinEntity's format (what ``finsent eval`` and :func:`read_finentity_spans` read)."""
    return [
        {
            "content": p.text,
            "annotations": [
                {"start": s, "end": e, "value": p.text[s:e], "label": label.capitalize()} for s, e, label in p.spans
            ],
        }
        for p in paragraphs
    ]


def entity_fingerprint(paragraphs: Sequence[EntityParagraph]) -> str:
    """sha256 (16 hex) of the paragraphs and their spans, order-independent."""
    h = hashlib.sha256()
    for line in sorted(json.dumps([p.text, list(p.spans)], ensure_ascii=False) for p in paragraphs):
        h.update(line.encode("utf-8") + b"\n")
    return h.hexdigest()[:16]


def read_frozen_entities(frozen_dir: Path) -> tuple[list[EntityParagraph], dict[str, Any]] | None:
    """The stored paragraphs and their manifest, or None when the registry has none yet."""
    if not (frozen_dir / MANIFEST).is_file():
        return None
    manifest = json.loads((frozen_dir / MANIFEST).read_text(encoding="utf-8"))
    paragraphs, _stats = read_finentity_spans(frozen_dir / FROZEN_FILE)
    return paragraphs, manifest


def write_frozen_entities(
    frozen_dir: Path, paragraphs: Sequence[EntityParagraph], source: str, created_at: str
) -> dict[str, Any]:
    """Write the paragraphs and the manifest in one rename (call under the registry lock)."""
    tmp = frozen_dir.parent / f".frozen-entities-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        body = json.dumps(to_finentity_json(paragraphs), ensure_ascii=False, indent=1) + "\n"
        (tmp / FROZEN_FILE).write_text(body, encoding="utf-8")
        manifest = {
            "created_at": created_at,
            "source": source,
            "rule": "the 20% hold-out of finsent.models.entity_head.finentity_split (seed 13), spans realigned",
            "paragraphs": len(paragraphs),
            "spans": sum(len(p.spans) for p in paragraphs),
            "metric": "span+sentiment micro-F1 on the normalised surface text (entity_head.span_f1)",
            "fingerprint": entity_fingerprint(paragraphs),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.rename(tmp, frozen_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def split_entity_data(
    all_paragraphs: Sequence[EntityParagraph], frozen: Sequence[EntityParagraph]
) -> list[EntityParagraph]:
    """The paragraphs to train on: every one whose text is not in the frozen set (by normalised text)."""
    held = {norm_key(p.text) for p in frozen}
    return [p for p in all_paragraphs if norm_key(p.text) not in held]


def held_out(path: str | Path) -> list[EntityParagraph]:
    """The fixed hold-out of a FinEntity file: what a new registry freezes."""
    paragraphs, _stats = read_finentity_spans(path)
    return finentity_split(paragraphs)[1]


def entity_f1(
    model_dir: Path, variant: str, paragraphs: Sequence[EntityParagraph], cache_dir: str | None
) -> float | None:
    """Span+sentiment micro-F1 of a model directory's entity head on ``paragraphs`` through the runtime (the
    token head's own spans, before linking); None for a model without an entity head."""
    from finsent.models.entity_head import TOKEN_OUTPUT, span_f1
    from finsent.models.runtime import Classifier

    clf = Classifier.load(model_dir, variant=variant, cache_dir=cache_dir, entities=False)
    if TOKEN_OUTPUT not in clf._outputs:
        return None
    return float(span_f1(list(paragraphs), model_spans(clf, paragraphs))["span_sentiment"]["f1"])


def model_spans(clf: Any, paragraphs: Sequence[EntityParagraph]) -> list[list[Any]]:
    """The entity head's spans on each paragraph, on the original text (the runtime's mapping back)."""
    from finsent.models.entity_head import map_spans, prepare_with_map

    prepared = [prepare_with_map(p.text, clf.preprocess) for p in paragraphs]
    scored = clf._score([text for text, _ in prepared])  # one call: the runtime's own batches
    return [map_spans(list(pred.entities), where) for pred, (_, where) in zip(scored, prepared, strict=True)]
