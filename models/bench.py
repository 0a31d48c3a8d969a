"""``finsent bench model``: sentences per second on real text, every runtime in one run.

Texts are the seed CSVs (real tweets). For each batch size the whole text list is handed over
and processed in batches of that size after sorting by token length (what the runtime does when
the worker passes it a batch), except batch 1. PyTorch eager uses the same architecture and the
same length-sorted batches; without ``--checkpoint`` it runs the base encoder with untrained
heads, which costs exactly as much compute as the fine-tuned weights (speed does not depend on
weight values). One extra row measures int8 at batch 32 *without* sorting, to show what sorting
buys. All rows come from one process so their ratios hold; other load on the machine is recorded.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
SEED_DIR = Path(__file__).resolve().parent / "seed"


def seed_texts() -> list[str]:
    from models.data import read_labelled_csv

    texts: list[str] = []
    for name in ("sentiment.csv", "topic.csv"):
        texts += read_labelled_csv(SEED_DIR / name).texts
    return texts


def device_description() -> str:
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"CPU: {cpu}, {os.cpu_count()} cores"
    if "CUDAExecutionProvider" in ort.get_available_providers():
        desc += "; GPU: CUDA available to onnxruntime"
    else:
        desc += "; no GPU"
    return desc


def _time_it(fn: Callable[[Sequence[str]], Any], texts: Sequence[str], batch: int, min_seconds: float) -> float:
    """Sentences/s: repeat passes over ``texts`` (chunks of ``batch`` for batch 1) until ``min_seconds``."""
    fn(texts[: max(batch, 8)])  # warm-up
    done, start = 0, time.perf_counter()
    while True:
        if batch == 1:
            for t in texts[:64]:
                fn([t])
            done += min(64, len(texts))
        else:
            fn(texts)
            done += len(texts)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def _torch_predictor(
    checkpoint: Path | None, tokenizer_file: Path, max_length: int, threads: int
) -> Callable[[Sequence[str], int], Any]:
    import torch
    from tokenizers import Tokenizer

    from models.labels import SENTIMENT_LABELS, TOPIC_LABELS
    from models.modeling import MultiTaskClassifier, load_checkpoint, load_pretrained_encoder

    if threads:
        torch.set_num_threads(threads)
    if checkpoint is not None:
        model, _ = load_checkpoint(checkpoint, attn_implementation="sdpa")
    else:
        model = MultiTaskClassifier(load_pretrained_encoder(None, "sdpa"), len(SENTIMENT_LABELS), len(TOPIC_LABELS))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.eval().to(device)
    tok = Tokenizer.from_file(str(tokenizer_file))  # the model directory's own tokenizer, as the runtime uses
    tok.no_padding()
    tok.enable_truncation(max_length)

    def run(texts: Sequence[str], batch: int) -> None:
        encs = tok.encode_batch(list(texts))
        order = np.argsort([len(e.ids) for e in encs], kind="stable")
        with torch.inference_mode():
            for s in range(0, len(order), batch):
                idx = order[s : s + batch]
                width = max(len(encs[i].ids) for i in idx)
                ids = torch.zeros((len(idx), width), dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for r, i in enumerate(idx):
                    n = len(encs[i].ids)
                    ids[r, :n] = torch.tensor(encs[i].ids)
                    mask[r, :n] = 1
                sl, tl = model(ids.to(device), mask.to(device))
                torch.softmax(sl, -1).cpu(), torch.softmax(tl, -1).cpu()

    return run


def run_bench(
    model_dir: Path | None,
    batch_sizes: Sequence[int] = (1, 32, 128),
    min_seconds: float = 4.0,
    checkpoint: Path | None = None,
    include_torch: bool = True,
    threads: int = 0,
) -> dict[str, Any]:
    import onnxruntime as ort

    from models.runtime import Classifier

    texts = seed_texts()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results: list[dict[str, Any]] = []

    def record(runtime: str, provider: str, batch: int, sps: float, **extra: Any) -> None:
        row = {"runtime": runtime, "provider": provider, "batch_size": batch, "sentences_per_s": round(sps, 1), **extra}
        log.info("%s", row)
        print(f"{runtime:14s} {provider:22s} batch {batch:4d}: {sps:9.1f} sentences/s {extra or ''}", flush=True)
        results.append(row)

    variants = [("ort-fp32", "fp32", None), ("ort-int8", "int8", None)]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        variants.append(("ort-fp16", "fp16", None))
    max_length, tokenizer_file = 128, Path()
    for runtime, variant, _ in variants:
        clf = Classifier.load(model_dir, variant=variant, threads=threads)
        max_length = clf.info.max_length
        tokenizer_file = clf.model_dir / "tokenizer.json"
        for b in batch_sizes:
            clf.batch_size = b
            record(runtime, clf.provider, b, _time_it(clf.predict, texts, b, min_seconds), sorted=b > 1)
        if variant == "int8" and 32 in batch_sizes:
            clf.batch_size = 32

            def unsorted(ts: Sequence[str], clf: Classifier = clf) -> None:
                for s in range(0, len(ts), 32):
                    clf.predict(ts[s : s + 32])

            record(runtime, clf.provider, 32, _time_it(unsorted, texts, 32, min_seconds), sorted=False)
    if include_torch:
        import torch

        torch_cuda = torch.cuda.is_available()
        torch_run = _torch_predictor(checkpoint, tokenizer_file, max_length, threads)
        for b in batch_sizes:
            record(
                "pytorch-eager",
                "cuda" if torch_cuda else "cpu",
                b,
                _time_it(lambda ts, b=b: torch_run(ts, b), texts, b, min_seconds),
                sorted=b > 1,
            )
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "device": device_description(),
        "n_texts": len(texts),
        "load_average_1m": [load_before, load_after],
        "results": results,
    }
