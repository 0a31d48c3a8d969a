"""Export a trained :class:`~models.modeling.MultiTaskClassifier` to a model directory.

One ONNX graph with both heads' logits out (and ``token_logits`` [batch, sequence, tags] for a model
with an entity head, :mod:`finsent.models.entity_head`) and dynamic batch/sequence axes, written with the
legacy TorchScript exporter (``dynamo=False``: it handled this model where the dynamo path and
``quant_pre_process`` did not). The exported graph is run through onnxruntime on real text and
compared with PyTorch; the maximum absolute logit difference (fp32 graph and fp16-storage graph)
is returned and written into ``labels.json`` so the model card can quote it.

``make_tiny_model`` (tests) and ``finsent train`` both come through :func:`export_model_dir`,
so the tests exercise the shipping code path.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finsent.models.entity_head import TOKEN_OUTPUT
from finsent.models.modeldir import (
    CARD_FILE,
    INPUT_NAMES,
    LABELS_FILE,
    MODEL_FILE,
    OUTPUT_NAMES,
    TOKENIZER_FILE,
    ModelInfo,
)
from finsent.models.variants import compact_weights, file_digest

log = logging.getLogger(__name__)

OPSET = 17
_CHECK_TEXTS = (
    "Shares of Acme jump 12% after earnings beat estimates",
    "The central bank raised interest rates by 50 basis points.",
    "$XYZ falls after the company cut its dividend",
    "Oil prices steady",
)


@dataclass(frozen=True)
class ExportReport:
    model_dir: Path
    model_version: str
    max_abs_diff_fp32: float
    max_abs_diff_stored: float
    onnx_bytes: int


def _encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    tok = tokenizer
    tok.enable_truncation(max_length)
    tok.no_padding()
    encs = tok.encode_batch(list(texts))
    width = max(len(e.ids) for e in encs)
    pad_id = tok.token_to_id("[PAD]") or 0
    ids = np.full((len(encs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(encs), width), dtype=np.int64)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def output_names(model: Any) -> tuple[str, ...]:
    """The graph's outputs: both item heads' logits, plus ``token_logits`` for a model with an entity head."""
    return (*OUTPUT_NAMES, TOKEN_OUTPUT) if getattr(model, "token_head", None) is not None else OUTPUT_NAMES


def export_onnx(model: Any, path: Path, example: dict[str, np.ndarray]) -> None:
    """torch -> ONNX (legacy exporter, opset 17, dynamic batch and sequence axes)."""
    import torch

    model.eval()
    args = (torch.from_numpy(example["input_ids"]), torch.from_numpy(example["attention_mask"]))
    names = output_names(model)
    dynamic = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    dynamic.update({name: {0: "batch"} for name in OUTPUT_NAMES})
    if TOKEN_OUTPUT in names:
        dynamic[TOKEN_OUTPUT] = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=list(names),
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _max_diff(onnx_path: Path, feed: dict[str, np.ndarray], reference: Sequence[np.ndarray]) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    names = (*OUTPUT_NAMES, TOKEN_OUTPUT)[: len(reference)]
    outs = sess.run(list(names), feed)
    return float(max(np.abs(o - r).max() for o, r in zip(outs, reference, strict=True)))


def export_model_dir(
    model: Any,
    tokenizer: Any,
    out_dir: Path,
    info: ModelInfo,
    card: str | None = None,
    check_texts: Sequence[str] = _CHECK_TEXTS,
    extra_files: dict[str, Path] | None = None,
    int8_rows: tuple[str, ...] = (),
) -> ExportReport:
    """Write ``model.onnx`` (fp16 storage), ``tokenizer.json``, ``labels.json`` and the card into ``out_dir``.

    ``tokenizer`` is a ``tokenizers.Tokenizer``. ``info.model_version`` gets the first 8 hex chars of
    the ONNX file's digest appended when it ends with ``-auto``, so two different weight files never
    share a version string. Any derived variants cached in ``out_dir/cache`` are removed.
    ``int8_rows``: initializers stored as int8 rows (see :func:`~finsent.models.variants.compact_weights`).
    """
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(info.sentiment) != model.sentiment_head.out_features or len(info.topic) != model.topic_head.out_features:
        raise ValueError("labels do not match the model's heads: check the label lists passed to the exporter")
    feed = _encode(tokenizer, check_texts, info.max_length)
    model.eval()
    with torch.no_grad():
        ref = [t.numpy() for t in model(torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"]))]
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        export_onnx(model, raw, feed)
        diff_fp32 = _max_diff(raw, feed, ref)
        compact_weights(raw, out_dir / MODEL_FILE, int8_rows)
    diff_stored = _max_diff(out_dir / MODEL_FILE, feed, ref)
    log.info("ONNX vs PyTorch max |logit diff|: fp32 graph %.2e, fp16-storage graph %.2e", diff_fp32, diff_stored)
    version = info.model_version
    if version.endswith("-auto"):
        version = version[: -len("auto")] + file_digest(out_dir / MODEL_FILE, 8)
    extra = dict(info.extra)
    if getattr(model, "token_head", None) is not None:
        from finsent.models.entity_head import TAGS

        if model.token_head.out_features != len(TAGS):
            raise ValueError(f"token head has {model.token_head.out_features} outputs; TAGS has {len(TAGS)}")
        extra.update({"token_tags": list(TAGS), **model.token_config()})
    extra.update(
        {
            "onnx_opset": OPSET,
            "weights": "fp16-storage" + (f", int8 rows: {', '.join(int8_rows)}" if int8_rows else ""),
            "max_abs_diff_vs_torch": {"fp32_graph": diff_fp32, "fp16_storage_graph": diff_stored},
        }
    )
    final = ModelInfo(version, info.sentiment, info.topic, info.max_length, extra)
    tokenizer.no_truncation()
    tokenizer.save(str(out_dir / TOKENIZER_FILE))
    (out_dir / LABELS_FILE).write_text(final.to_json(), encoding="utf-8")
    if card is not None:
        (out_dir / CARD_FILE).write_text(card, encoding="utf-8")
    for name, src in (extra_files or {}).items():
        shutil.copyfile(src, out_dir / name)
    shutil.rmtree(out_dir / "cache", ignore_errors=True)
    return ExportReport(out_dir, version, diff_fp32, diff_stored, (out_dir / MODEL_FILE).stat().st_size)


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
