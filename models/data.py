"""Labelled CSVs in, fixed-seed stratified splits out.

A CSV's task follows from its columns: ``text,label`` is sentiment (negative/neutral/positive),
``text,topic`` is topic. Any file of that shape works, so users can train and evaluate on their
own data; the defaults point at the three public sets under ``../shared/data``.

Splits: each set is de-duplicated, then split 80/10/10 (train / validation for early stopping /
test for the reported numbers), stratified by label with a fixed seed. Because the two Twitter
sets can contain the same tweet, every text that lands in any validation or test split is also
removed from every training split, so no test text is seen in training under either task.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from finsent.core.errors import InputError
from finsent.models.labels import SENTIMENT_LABELS, TOPIC_LABELS

SPLIT_SEED = 13
DEFAULT_SETS: dict[str, str] = {
    "fpb": "financial_phrasebank/train.csv",
    "tfns": "twitter_financial_news/train.csv",
    "topic": "twitter_financial_news_topic/train.csv",
}
SET_LICENCES: dict[str, str] = {
    "fpb": "Financial PhraseBank v1.0 (Malo et al. 2014), CC BY-NC-SA 3.0 (non-commercial)",
    "tfns": "Twitter Financial News Sentiment (zeroshot), MIT",
    "topic": "Twitter Financial News Topic (zeroshot), MIT",
}


@dataclass(frozen=True)
class LabelledSet:
    name: str
    task: str  # "sentiment" | "topic"
    texts: list[str]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def counts(self) -> Counter[str]:
        return Counter(self.labels)


def default_data_dir() -> Path:
    """``$FINSENT_DATA_DIR`` or ``../shared/data`` next to the repository checkout."""
    env = os.environ.get("FINSENT_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def detect_task(columns: Iterable[str], path: Path) -> str:
    cols = [c.strip().lower() for c in columns]
    if "text" not in cols:
        raise InputError(f"{path}: no 'text' column (columns: {', '.join(cols)}); expected text,label or text,topic")
    if "label" in cols:
        return "sentiment"
    if "topic" in cols:
        return "topic"
    raise InputError(f"{path}: columns {', '.join(cols)}: expected text,label (sentiment) or text,topic (topic)")


def read_labelled_csv(path: str | os.PathLike[str], name: str | None = None) -> LabelledSet:
    """Read a CSV with a header; rows with empty text are skipped, unknown labels are an error."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist: give a CSV with columns text,label or text,topic")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        task = detect_task(reader.fieldnames or [], path)
        key = "label" if task == "sentiment" else "topic"
        allowed = set(SENTIMENT_LABELS if task == "sentiment" else TOPIC_LABELS)
        texts: list[str] = []
        labels: list[str] = []
        fields = {f.strip().lower(): f for f in reader.fieldnames or []}
        for lineno, row in enumerate(reader, start=2):
            text = (row.get(fields["text"]) or "").strip()
            label = (row.get(fields[key]) or "").strip()
            if not text:
                continue
            if task == "sentiment":
                label = label.lower()
            if label not in allowed:
                raise InputError(f"{path}:{lineno}: {key} {label!r} is not one of {sorted(allowed)}")
            texts.append(text)
            labels.append(label)
    return LabelledSet(name or path.stem, task, texts, labels)


def dedupe(ds: LabelledSet) -> LabelledSet:
    """Drop repeated texts (keeps the first label): duplicates would straddle the split."""
    seen: set[str] = set()
    texts, labels = [], []
    for t, y in zip(ds.texts, ds.labels, strict=True):
        k = norm_key(t)
        if k in seen:
            continue
        seen.add(k)
        texts.append(t)
        labels.append(y)
    return LabelledSet(ds.name, ds.task, texts, labels)


def norm_key(text: str) -> str:
    return " ".join(text.lower().split())


def _subset(ds: LabelledSet, idx: Iterable[int]) -> LabelledSet:
    idx = list(idx)
    return LabelledSet(ds.name, ds.task, [ds.texts[i] for i in idx], [ds.labels[i] for i in idx])


def split_set(ds: LabelledSet, seed: int = SPLIT_SEED, val: float = 0.1, test: float = 0.1):
    """Stratified train/val/test split with a fixed seed: ``(train, val, test)``.

    A set with a class of one member cannot be stratified; it is split the same way without it.
    """
    from sklearn.model_selection import train_test_split

    def cut(idx: list[int], size: float) -> tuple[list[int], list[int]]:
        try:
            return train_test_split(idx, test_size=size, random_state=seed, stratify=[ds.labels[i] for i in idx])
        except ValueError:  # a class with a single member (small user or seed sets): the same cut, unstratified
            return train_test_split(idx, test_size=size, random_state=seed)

    rest, test_idx = cut(list(range(len(ds))), test)
    train_idx, val_idx = cut(rest, val / (1 - test))
    return _subset(ds, sorted(train_idx)), _subset(ds, sorted(val_idx)), _subset(ds, sorted(test_idx))


@dataclass(frozen=True)
class Splits:
    train: dict[str, LabelledSet]
    val: dict[str, LabelledSet]
    test: dict[str, LabelledSet]


def make_splits(paths: dict[str, Path], seed: int = SPLIT_SEED) -> Splits:
    """Split every set, then remove any val/test text from all training splits (cross-set leakage)."""
    train, val, test = {}, {}, {}
    for name, path in paths.items():
        ds = dedupe(read_labelled_csv(path, name))
        train[name], val[name], test[name] = split_set(ds, seed)
    held = {norm_key(t) for part in (val, test) for ds in part.values() for t in ds.texts}
    for name, ds in train.items():
        keep = [i for i, t in enumerate(ds.texts) if norm_key(t) not in held]
        train[name] = _subset(ds, keep)
    return Splits(train, val, test)


def default_paths(data_dir: Path | None = None) -> dict[str, Path]:
    base = data_dir or default_data_dir()
    return {name: base / rel for name, rel in DEFAULT_SETS.items()}


def write_csv(path: Path, ds: LabelledSet) -> None:
    key = "label" if ds.task == "sentiment" else "topic"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", key])
        for t, y in zip(ds.texts, ds.labels, strict=True):
            w.writerow([t, y])
