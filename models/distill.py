"""Distil a model directory (the teacher) into a smaller student that keeps some of its encoder layers.

Why: on a CPU the encoder layers are nearly all of an item's cost (the embedding lookup and the two
heads are ~1%), so a student with 3 of the teacher's 6 layers costs about half as much per item.
It starts from the teacher's own weights -- embeddings, the kept layers, both heads -- so it begins
near the teacher, and it learns from the teacher's soft labels on every training text next to the
gold labels. Both heads learn from every text: a Financial PhraseBank sentence teaches the topic head
what the teacher thinks its topic is, and a topic tweet teaches the sentiment head.

The teacher is a model directory (``model.onnx`` + tokenizer + labels), rebuilt in PyTorch by
:mod:`finsent.models.onnx_weights`; its logits on the training texts are computed once, before the
first step. The student's training loop is :func:`finsent.models.train.fit` with those logits, so
early stopping, the time-aware schedule and the best checkpoint work as in ``finsent train``; the
finaliser then exports and scores it like any other run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from finsent.models.train import TrainConfig, encode_examples, fit, hardware, load_tokenizer, logits_torch, start_run

log = logging.getLogger(__name__)

#: The word-embedding table, stored as int8 rows in the student's model.onnx (see variants.compact_weights).
WORD_EMBEDDINGS = "encoder.embeddings.word_embeddings.weight"
#: Which of a 6-layer teacher's layers a 3-layer student keeps by default (measured: bench/RESULTS.md).
DEFAULT_LAYERS: tuple[int, ...] = (0, 2, 4)
_LAYER_PREFIX = "encoder.encoder.layer."


def student_from_teacher(teacher: Any, layers: tuple[int, ...]) -> Any:
    """A :class:`~finsent.models.modeling.MultiTaskClassifier` with ``layers`` of the teacher's encoder."""
    import copy

    from finsent.models.modeling import MultiTaskClassifier, build_encoder

    n_teacher = int(teacher.encoder.config.num_hidden_layers)
    if not layers or sorted(set(layers)) != list(layers) or layers[-1] >= n_teacher or layers[0] < 0:
        raise ValueError(f"student layers {list(layers)}: give distinct increasing indices below {n_teacher}")
    config = copy.deepcopy(teacher.encoder.config)
    config.num_hidden_layers = len(layers)
    student = MultiTaskClassifier(
        build_encoder(config, "sdpa"), teacher.sentiment_head.out_features, teacher.topic_head.out_features
    )
    state = {}
    for name, tensor in teacher.state_dict().items():
        if name.startswith(("token_mix_weight", "token_proj.", "token_ctx.", "token_conv.", "token_out.")):
            continue  # a teacher's entity head reads layers a student lacks: the student has the two item heads
        if name.startswith(_LAYER_PREFIX):
            src, rest = name[len(_LAYER_PREFIX) :].split(".", 1)
            if int(src) not in layers:
                continue
            name = f"{_LAYER_PREFIX}{layers.index(int(src))}.{rest}"
        state[name] = tensor.clone()
    missing, unexpected = student.load_state_dict(state, strict=False)
    missing = [k for k in missing if ".pooler." not in k and not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise ValueError(f"teacher weights do not fit the student (missing {missing}, extra {unexpected})")
    return student


def teacher_logits(teacher: Any, examples: list, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's (sentiment, topic) logits for every example, in order."""
    return logits_torch(teacher, [x[0] for x in examples], batch_size)


def distill(cfg: TrainConfig) -> Path:
    """Train the student into ``cfg.out_dir`` (best checkpoint in ``best/``); returns the run directory."""
    from finsent.models.onnx_weights import load_from_onnx
    from finsent.models.textprep import check_steps

    if not cfg.teacher:
        raise ValueError("distillation needs cfg.teacher, a model directory")
    out, splits = start_run(cfg)
    teacher_dir = Path(cfg.teacher)
    teacher = load_from_onnx(teacher_dir, "sdpa")
    layers = tuple(cfg.student_layers) or DEFAULT_LAYERS
    cfg.student_layers = list(layers)
    cfg.base_model = str(teacher_dir)  # its tokenizer.json: the student reads text exactly as the teacher
    student = student_from_teacher(teacher, layers)
    log.info(
        "distilling %s (%d layers) into layers %s on %s",
        teacher_dir,
        teacher.encoder.config.num_hidden_layers,
        list(layers),
        hardware(),
    )
    train_sets = splits.train
    tok = load_tokenizer(cfg.base_model)
    examples = encode_examples(train_sets, tok, cfg.max_length, check_steps(cfg.preprocess))
    soft = teacher_logits(teacher, examples)
    log.info("teacher logits for %d training texts", len(examples))
    del teacher
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2), encoding="utf-8")
    fit(student, tok, train_sets, splits.val, cfg, out, soft=soft)
    return out
