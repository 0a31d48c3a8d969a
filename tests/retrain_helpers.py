"""Shared by the registry, retrain and MLflow tests: synthetic labelled CSVs the tiny model can learn."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from finsent.models.labels import SENTIMENT_LABELS, TOPIC_LABELS

WORDS = ["shares", "stock", "market", "price", "profit", "revenue", "bank", "oil", "gold", "dollar", "bond", "yield"]
# words of the tiny model's vocabulary that make each sentiment class learnable in a few steps
CUES = {"negative": "falls drop loss weak", "neutral": "the a of in", "positive": "jump rise beat strong"}


def synthetic_rows(task: str, n_per_class: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    labels = SENTIMENT_LABELS if task == "sentiment" else TOPIC_LABELS
    rows = []
    for lab in labels:
        cue = CUES.get(lab, lab.split()[0].lower())
        for i in range(n_per_class):
            rows.append((f"{cue} {' '.join(rng.choices(WORDS, k=4))} {task} {i}", lab))
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, task: str, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label" if task == "sentiment" else "topic"])
        w.writerows(rows)
    return path


def synthetic_sets(folder: Path) -> list[Path]:
    """A sentiment CSV (60 per class) and a topic CSV (15 per class) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        write_csv(folder / "sent.csv", "sentiment", synthetic_rows("sentiment", 60, 1)),
        write_csv(folder / "topic.csv", "topic", synthetic_rows("topic", 15, 2)),
    ]
