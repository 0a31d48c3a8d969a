"""The model-directory format, shared by the exporter (writes it) and the runtime (reads it).

A model directory holds::

    model.onnx       one graph: inputs input_ids, attention_mask [batch, seq] int64;
                     outputs sentiment_logits [batch, S], topic_logits [batch, T] float32.
                     Weights are stored as float16 and cast to float32 inside the graph
                     ("fp16 storage") so the shipped model is half the size; the runtime
                     derives the fp32 / int8 / fp16 variants from it at first load (cached).
    tokenizer.json   a Hugging Face ``tokenizers`` file (WordPiece, [CLS] ... [SEP]).
    labels.json      {"format": 1, "model_version", "max_length", "sentiment": [...], "topic": [...]}
    README.md        the model card (data, licences, metrics, training time, hardware).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finsent.core.errors import ModelError

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
LABELS_FILE = "labels.json"
CARD_FILE = "README.md"
CACHE_DIR = "cache"
FORMAT_VERSION = 1
REQUIRED_FILES: tuple[str, ...] = (MODEL_FILE, TOKENIZER_FILE, LABELS_FILE)

INPUT_NAMES: tuple[str, ...] = ("input_ids", "attention_mask")
OUTPUT_NAMES: tuple[str, ...] = ("sentiment_logits", "topic_logits")


@dataclass(frozen=True)
class ModelInfo:
    """The parsed ``labels.json``: label order of both heads, the version string, the token limit."""

    model_version: str
    sentiment: tuple[str, ...]
    topic: tuple[str, ...]
    max_length: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        body = {
            "format": FORMAT_VERSION,
            "model_version": self.model_version,
            "max_length": self.max_length,
            "sentiment": list(self.sentiment),
            "topic": list(self.topic),
            **self.extra,
        }
        return json.dumps(body, indent=2, ensure_ascii=False) + "\n"


def check_model_dir(model_dir: Path) -> None:
    """Raise :class:`ModelError` naming the first missing file and what to do about it."""
    if not model_dir.is_dir():
        raise ModelError(
            f"model directory {model_dir} does not exist: pass a directory written by `finsent train` "
            "(or omit --model / FINSENT_MODEL_DIR to use the shipped model)"
        )
    for name in REQUIRED_FILES:
        if not (model_dir / name).is_file():
            raise ModelError(
                f"model directory {model_dir} is missing {name}: a model directory needs "
                f"{', '.join(REQUIRED_FILES)}; re-export it with `finsent train --export-only CHECKPOINT` "
                "or restore the file (git checkout models/shipped for the shipped model)"
            )


def read_model_info(model_dir: Path) -> ModelInfo:
    """Parse and validate ``labels.json`` (ValueError with the reason when it is malformed)."""
    path = model_dir / LABELS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); re-export the model") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    fmt = data.get("format", FORMAT_VERSION)
    if fmt != FORMAT_VERSION:
        raise ValueError(f"{path} has format {fmt!r}; this finsent reads format {FORMAT_VERSION}")
    out: dict[str, Any] = {}
    for key in ("sentiment", "topic"):
        labels = data.get(key)
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
            raise ValueError(f"{path}: {key!r} must be a non-empty list of label names")
        if len(set(labels)) != len(labels):
            raise ValueError(f"{path}: {key!r} has duplicate labels")
        out[key] = tuple(labels)
    version = data.get("model_version")
    if not isinstance(version, str) or not version.strip():
        raise ValueError(f"{path}: 'model_version' must be a non-empty string")
    max_length = data.get("max_length", 128)
    if not isinstance(max_length, int) or isinstance(max_length, bool) or not 8 <= max_length <= 4096:
        raise ValueError(f"{path}: 'max_length' must be an integer in 8..4096")
    known = {"format", "model_version", "max_length", "sentiment", "topic"}
    return ModelInfo(
        model_version=version.strip(),
        sentiment=out["sentiment"],
        topic=out["topic"],
        max_length=max_length,
        extra={k: v for k, v in data.items() if k not in known},
    )
