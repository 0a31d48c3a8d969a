"""The frozen evaluation set of a registry: fixed when the registry gets it, never trained on.

Two parts:

* **A slice of every training set**, written once into ``ROOT/frozen/<set>.csv`` with a manifest
  (``manifest.json``: sets, sizes, fingerprint, when). The slice is the stratified 10% *test* split
  of :func:`finsent.models.data.make_splits` (fixed seed 13). Why that split rather than a fresh
  one: it is the one split the shipped model never saw in training (``finsent train`` held it
  out), so the first gate, shipped model against its first retrain, compares the two fairly. A
  fresh hash-selected slice would hold texts the shipped model was trained on and flatter it.
  Once written, the files are what is evaluated; the split is never recomputed, so later changes
  to the CSVs cannot move texts into or out of it.
* **A fixed 20% of all human labels**, chosen by a stable hash of the label's key (the item id, or
  the text for labels of text not in the store), so the labels added later split the same way and
  a label never moves between training and evaluation.

Every text in either part is removed from every training set (by the same normalised key that
:mod:`finsent.models.data` de-duplicates with), whichever set it comes from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from finsent.models.data import LabelledSet, norm_key, read_labelled_csv, write_csv

MANIFEST = "manifest.json"
LABEL_FRACTION = 0.2
_LABEL_SALT = "finsent-frozen-labels:"
LABEL_SETS = {"sentiment": "labels_sentiment", "topic": "labels_topic"}


@dataclass(frozen=True)
class HumanLabel:
    """One human correction as retraining sees it: the key it is hashed by, the text, the task, the label."""

    key: str
    text: str
    task: str  # "sentiment" | "topic"
    label: str


def label_is_frozen(key: str, fraction: float = LABEL_FRACTION) -> bool:
    """True for the fixed ``fraction`` of label keys that belong to the frozen set (stable across runs)."""
    digest = hashlib.sha256((_LABEL_SALT + key).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_labels(labels: Iterable[HumanLabel]) -> tuple[list[HumanLabel], list[HumanLabel]]:
    """(for training, frozen) by :func:`label_is_frozen`."""
    train: list[HumanLabel] = []
    frozen: list[HumanLabel] = []
    for lab in labels:
        (frozen if label_is_frozen(lab.key) else train).append(lab)
    return train, frozen


def labels_as_sets(labels: Sequence[HumanLabel]) -> dict[str, LabelledSet]:
    """Human labels as one LabelledSet per task (``labels_sentiment``, ``labels_topic``), empty ones left out."""
    out: dict[str, LabelledSet] = {}
    for task, name in LABEL_SETS.items():
        rows = [lab for lab in labels if lab.task == task]
        if rows:
            out[name] = LabelledSet(name, task, [r.text for r in rows], [r.label for r in rows])
    return out


def fingerprint(sets: dict[str, LabelledSet]) -> str:
    """sha256 (16 hex) of the sets' names, texts and labels, order-independent within a set."""
    h = hashlib.sha256()
    for name in sorted(sets):
        ds = sets[name]
        h.update(f"\x00set:{name}:{ds.task}\x00".encode())
        for line in sorted(f"{norm_key(t)}\t{y}" for t, y in zip(ds.texts, ds.labels, strict=True)):
            h.update(line.encode("utf-8") + b"\n")
    return h.hexdigest()[:16]


def keys_of(sets: Iterable[LabelledSet]) -> set[str]:
    return {norm_key(t) for ds in sets for t in ds.texts}


def exclude(ds: LabelledSet, keys: set[str]) -> LabelledSet:
    """``ds`` without the texts whose normalised key is in ``keys``."""
    keep = [i for i, t in enumerate(ds.texts) if norm_key(t) not in keys]
    return LabelledSet(ds.name, ds.task, [ds.texts[i] for i in keep], [ds.labels[i] for i in keep])


def read_frozen(frozen_dir: Path) -> tuple[dict[str, LabelledSet], dict] | None:
    """The stored frozen slices and their manifest, or None when the registry has none yet."""
    manifest_path = frozen_dir / MANIFEST
    if not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    sets = {name: read_labelled_csv(frozen_dir / f"{name}.csv", name) for name in manifest["sets"]}
    return sets, manifest


def write_frozen(frozen_dir: Path, sets: dict[str, LabelledSet], source: dict[str, str], created_at: str) -> dict:
    """Write the slices and manifest into ``frozen_dir`` in one rename (call under the registry lock)."""
    tmp = frozen_dir.parent / f".frozen-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        for name, ds in sets.items():
            write_csv(tmp / f"{name}.csv", ds)
        manifest = {
            "created_at": created_at,
            "rule": "stratified 10% test split of finsent.models.data.make_splits (seed 13) of each training set; "
            f"plus the human labels whose sha256('{_LABEL_SALT}' + key) falls in the lowest {LABEL_FRACTION:.0%}",
            "sets": {n: {"task": ds.task, "n": len(ds), "source": source.get(n, "")} for n, ds in sets.items()},
            "fingerprint": fingerprint(sets),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.rename(tmp, frozen_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
