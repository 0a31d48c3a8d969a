"""``finsent bench model``: sentences per second on real text, every runtime in one run.

Texts are the seed CSVs (real tweets). For each batch size the whole text list is handed over
and processed in batches of that size after sorting by token length (what the runtime does when
the worker passes it a batch), except batch 1. PyTorch eager uses the same architecture and the
same length-sorted batches; without ``--checkpoint`` it runs the base encoder with untrained
heads, which costs exactly as much compute as the fine-tuned weights (speed does not depend on
weight values). Extra rows measure int8 at batch 32 *without* sorting, to show what sorting
buys, and with onnxruntime's pool threads spin-waiting (the old default), to show what that costs.
All rows come from one process so their ratios hold; other load on the machine is recorded.

No row uses the runtime's text cache: the timed passes repeat the same texts, which a cache
would answer without the model. The cache's hit rate on the seed texts (each text once, in file
order) is reported instead, with the runtime's own key.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import finsent.models
from finsent.bench.common import cpu_name
from finsent.core.argtypes import positive_float
from finsent.core.jsonout import add_json_option, emit_json, to_stdout
from finsent.models.textprep import prepare_all

log = logging.getLogger(__name__)
#: sentences/s that two cores can reach at best, from issue 15's FLOP count (MiniLM-L6, ~23 tokens): int8 range
INT8_CEILING = (600.0, 850.0)
SEED_DIR = Path(finsent.models.__file__).resolve().parent / "seed"


def seed_texts() -> list[str]:
    from finsent.models.data import read_labelled_csv

    texts: list[str] = []
    for name in ("sentiment.csv", "topic.csv"):
        texts += read_labelled_csv(SEED_DIR / name).texts
    return texts


def seed_cache_hit_rate(clf: object, size: int = 4096) -> float:
    """Share of the seed texts, in file order, that an LRU of ``size`` recent texts would answer."""
    from finsent.models.runtime import TextCache

    cache, stub = TextCache(size), object()
    for text in prepare_all(seed_texts(), clf.preprocess):  # type: ignore[attr-defined]
        key = clf.cache_key(text)  # type: ignore[attr-defined]
        if cache.get(key) is None:
            cache.put(key, stub)  # type: ignore[arg-type]
    return cache.hits / max(1, cache.hits + cache.misses)


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """int8 batch 32 (sorted) against PyTorch eager batch 32 and against the int8 ceiling."""

    def main_row(runtime: str) -> dict[str, Any] | None:
        for r in results:
            if (
                r["runtime"] == runtime
                and r["batch_size"] == 32
                and r["sorted"]
                and not r.get("spinning")
                and not r.get("calls")
                and not r.get("compare")
            ):
                return r
        return None

    def rate(runtime: str) -> float | None:
        r = main_row(runtime)
        return None if r is None else float(r["sentences_per_s"])

    int8, eager = rate("ort-int8"), rate("pytorch-eager")
    out: dict[str, Any] = {"int8_b32": int8, "eager_b32": eager}
    calls = [r for r in results if r.get("calls")]
    if calls:  # the worker's way: model_calls batches at once, the cores shared out among them
        out["int8_b32_calls"] = float(calls[0]["sentences_per_s"])
        out["calls"] = calls[0]["calls"]
    compare = [r for r in results if r.get("compare") and r["batch_size"] == 32]
    if compare and int8 is not None:  # --compare-model-dir: this model's int8 against the other's, same run
        out["compare_int8_b32"] = float(compare[0]["sentences_per_s"])
        out["int8_b32_vs_compare"] = round(int8 / compare[0]["sentences_per_s"], 3)
        mine = main_row("ort-int8") or {}
        if mine.get("cpu_ms_per_sentence") and compare[0].get("cpu_ms_per_sentence"):  # sentences per CPU-second
            out["int8_b32_cpu_vs_compare"] = round(compare[0]["cpu_ms_per_sentence"] / mine["cpu_ms_per_sentence"], 3)
    if int8 is not None:
        out["int8_vs_eager_b32"] = round(int8 / eager, 2) if eager else None
        out["int8_ceiling_fraction"] = [round(int8 / c, 2) for c in reversed(INT8_CEILING)]
    return out


def device_description() -> str:
    import onnxruntime as ort

    desc = f"CPU: {cpu_name()}, {os.cpu_count()} cores"
    if "CUDAExecutionProvider" in ort.get_available_providers():
        desc += "; GPU: CUDA available to onnxruntime"
    else:
        desc += "; no GPU"
    return desc


def _time_it(
    fn: Callable[[Sequence[str]], Any], texts: Sequence[str], batch: int, min_seconds: float
) -> tuple[float, float]:
    """(sentences/s, process CPU ms per sentence): repeat passes over ``texts`` (chunks of ``batch`` for batch 1)
    until ``min_seconds``. The CPU figure is what a busy shared machine distorts least (wall time there also
    counts other processes' turns); it covers every thread of this process, tokenising included."""
    fn(texts[: max(batch, 8)])  # warm-up
    done, start, cpu0 = 0, time.perf_counter(), time.process_time()
    while True:
        if batch == 1:
            for t in texts[:32]:
                fn([t])
            done += min(32, len(texts))
        else:
            fn(texts)
            done += len(texts)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed, (time.process_time() - cpu0) * 1000 / done


def paired_ratio(
    main: Callable[[Sequence[str]], Any], other: Callable[[Sequence[str]], Any], texts: Sequence[str], pairs: int
) -> dict[str, Any]:
    """``main``'s rate over ``other``'s from passes over ``texts`` taken in pairs, one pass of each back to back
    (order alternating: AB, BA, ...), each pair's ratio its own; the median and quartiles over the pairs.

    Why pairs: on a shared 2-core machine the load changes within seconds, and the interleaved rounds time
    each row for ``--seconds`` in turn, so a burst can land on one model's row and not the other's (the
    three-head / two-head ratio moved 0.76-0.93 between runs at load 4-6). Two passes back to back (~1 s)
    see nearly the same load, so the per-pair ratio keeps the model's cost and drops most of the machine's.
    ``wall``: other's seconds / main's per pair (main's sentences/s relative to other's); ``cpu``: the same with
    process CPU time.
    """
    main(texts[:32])
    other(texts[:32])
    wall: list[float] = []
    cpu: list[float] = []
    for k in range(pairs):
        took: dict[int, tuple[float, float]] = {}
        for which in (0, 1) if k % 2 == 0 else (1, 0):
            t0, c0 = time.perf_counter(), time.process_time()
            (main, other)[which](texts)
            took[which] = (time.perf_counter() - t0, time.process_time() - c0)
        wall.append(took[1][0] / took[0][0])
        if took[0][1] > 0:  # process CPU time has a coarse clock on some systems
            cpu.append(took[1][1] / took[0][1])

    def stats(xs: list[float]) -> dict[str, float] | None:
        if not xs:
            return None
        q1, med, q3 = np.percentile(xs, [25, 50, 75])
        return {"median": round(float(med), 3), "q1": round(float(q1), 3), "q3": round(float(q3), 3)}

    return {"pairs": pairs, "n_texts": len(texts), "wall": stats(wall), "cpu": stats(cpu)}


def _torch_predictor(
    checkpoint: Path | None, tokenizer_file: Path, max_length: int, threads: int, steps: tuple[str, ...] = ()
) -> Callable[[Sequence[str], int], Any]:
    import torch
    from tokenizers import Tokenizer

    from finsent.models.labels import SENTIMENT_LABELS, TOPIC_LABELS
    from finsent.models.modeling import MultiTaskClassifier, load_checkpoint, load_pretrained_encoder

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
        encs = tok.encode_batch(prepare_all(texts, steps))  # the same text preparation as the runtime
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
    min_seconds: float = 2.0,
    checkpoint: Path | None = None,
    include_torch: bool = True,
    threads: int = 0,
    repeats: int = 3,
    n_texts: int = 256,
    compare_dir: Path | None = None,
    pairs: int = 0,
) -> dict[str, Any]:
    """Every (runtime, batch size) row is timed ``repeats`` times, rounds interleaved across rows so
    that a burst of load from other processes hits all rows alike; the median is reported (and the best).
    ``compare_dir``: a second model directory whose int8 rows (each batch size) join the same interleaved rounds,
    e.g. the two-head model against the three-head one (summary ``int8_b32_vs_compare``); with ``pairs``, the
    two int8 models at batch 32 are also timed in back-to-back pairs of passes (:func:`paired_ratio`, summary
    ``int8_b32_vs_compare_paired``), after the rounds.
    """
    import onnxruntime as ort

    from finsent.core.settings import usable_cores
    from finsent.models.runtime import Classifier, predict_at_once

    texts = seed_texts()
    rng = np.random.default_rng(13)
    texts = [texts[i] for i in rng.permutation(len(texts))[:n_texts]]
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows: list[tuple[dict[str, Any], Callable[[Sequence[str]], Any], int]] = []
    hit_rate: float | None = None

    variants = [("ort-fp32", "fp32"), ("ort-int8", "int8")]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        variants.append(("ort-fp16", "fp16"))
    max_length, tokenizer_file, steps = 128, Path(), ()
    for runtime, variant in variants:
        for b in batch_sizes:
            clf = Classifier.load(model_dir, variant=variant, threads=threads, batch_size=b, text_cache_size=0)
            max_length, steps = clf.info.max_length, clf.preprocess
            tokenizer_file = clf.model_dir / "tokenizer.json"
            rows.append(
                ({"runtime": runtime, "provider": clf.provider, "batch_size": b, "sorted": b > 1}, clf.predict, b)
            )
        if variant == "int8" and 32 in batch_sizes:
            clf32 = Classifier.load(model_dir, variant=variant, threads=threads, batch_size=32, text_cache_size=0)

            def unsorted(ts: Sequence[str], clf: Classifier = clf32) -> None:
                for s in range(0, len(ts), 32):
                    clf.predict(ts[s : s + 32])

            rows.append(
                ({"runtime": runtime, "provider": clf32.provider, "batch_size": 32, "sorted": False}, unsorted, 32)
            )
            spin = Classifier.load(model_dir, variant=variant, threads=threads, batch_size=32, spinning=True)
            rows.append(
                (
                    {"runtime": runtime, "provider": spin.provider, "batch_size": 32, "sorted": True, "spinning": True},
                    spin.predict,
                    32,
                )
            )
            hit_rate = seed_cache_hit_rate(clf32)
            # the worker's default (Settings.model_calls = 2): two batches of 32 at once, half the cores each
            n_calls = 2
            per_call = max(1, (threads or usable_cores()) // n_calls)
            par = Classifier.load(model_dir, variant=variant, threads=per_call, batch_size=32, text_cache_size=0)

            def at_once(ts: Sequence[str], clf: Classifier = par, calls: int = n_calls) -> None:
                predict_at_once(clf, [ts[s : s + 32] for s in range(0, len(ts), 32)], calls)

            rows.append(
                (
                    {
                        "runtime": runtime,
                        "provider": par.provider,
                        "batch_size": 32,
                        "sorted": True,
                        "calls": n_calls,
                        "threads_per_call": per_call,
                    },
                    at_once,
                    32,
                )
            )
    if compare_dir is not None:
        for b in batch_sizes:
            other = Classifier.load(compare_dir, variant="int8", threads=threads, batch_size=b, text_cache_size=0)
            row = {"runtime": "ort-int8", "provider": other.provider, "batch_size": b, "sorted": b > 1}
            rows.append(({**row, "compare": other.version}, other.predict, b))
    skipped: list[str] = []
    if include_torch:
        try:
            import torch
        except ImportError:
            include_torch = False
            skipped.append("pytorch-eager: torch is not installed (pip install torch==2.13.0 for the eager rows)")
            log.warning("%s", skipped[-1])
    if include_torch:
        provider = "cuda" if torch.cuda.is_available() else "cpu"
        torch_run = _torch_predictor(checkpoint, tokenizer_file, max_length, threads, steps)
        for b in batch_sizes:
            rows.append(
                (
                    {"runtime": "pytorch-eager", "provider": provider, "batch_size": b, "sorted": b > 1},
                    lambda ts, b=b: torch_run(ts, b),
                    b,
                )
            )
    samples: list[list[float]] = [[] for _ in rows]
    cpu: list[list[float]] = [[] for _ in rows]
    for rep in range(repeats):
        for i, (row, fn, b) in enumerate(rows):
            sps, cpu_ms = _time_it(fn, texts, b, min_seconds)
            samples[i].append(sps)
            cpu[i].append(cpu_ms)
            log.info("round %d %s batch %d: %.1f sentences/s", rep + 1, row["runtime"], b, sps)
    results = []
    for (row, _, b), got, cpu_ms in zip(rows, samples, cpu, strict=True):
        out = {
            **row,
            "sentences_per_s": round(float(np.median(got)), 1),
            "best_sentences_per_s": round(max(got), 1),
            "cpu_ms_per_sentence": round(float(np.median(cpu_ms)), 3),
        }
        results.append(out)
        spin = " spinning" if out.get("spinning") else ""
        if out.get("compare"):
            spin = f" ({out['compare']})"
        if out.get("calls"):
            spin = f" {out['calls']} calls x {out['threads_per_call']} thread(s)"
        print(
            f"{out['runtime']:14s} {out['provider']:22s} batch {b:4d} sorted={str(out['sorted']):5s}{spin}: "
            f"median {out['sentences_per_s']:8.1f}  best {out['best_sentences_per_s']:8.1f} sentences/s, "
            f"{out['cpu_ms_per_sentence']:.2f} ms CPU each",
            flush=True,
        )
    summary = summarise(results)
    paired = None
    if compare_dir is not None and pairs > 0:
        mine = Classifier.load(model_dir, variant="int8", threads=threads, batch_size=32, text_cache_size=0)
        theirs = Classifier.load(compare_dir, variant="int8", threads=threads, batch_size=32, text_cache_size=0)
        paired = paired_ratio(mine.predict, theirs.predict, texts, pairs)
        summary["int8_b32_vs_compare_paired"] = paired["wall"]["median"]
        by_cpu = paired["cpu"] or {"median": float("nan"), "q1": float("nan"), "q3": float("nan")}
        summary["int8_b32_cpu_vs_compare_paired"] = paired["cpu"] and by_cpu["median"]
        print(
            f"ort-int8 batch 32, {pairs} back-to-back pairs against {theirs.version}: this model's rate "
            f"{paired['wall']['median']:.3f}x by wall time (quartiles {paired['wall']['q1']:.3f}-"
            f"{paired['wall']['q3']:.3f}), {by_cpu['median']:.3f}x by CPU ({by_cpu['q1']:.3f}-{by_cpu['q3']:.3f})",
            flush=True,
        )
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "device": device_description(),
        "n_texts": len(texts),
        "repeats": repeats,
        "load_average_1m": [load_before, load_after],
        "skipped": skipped,
        "seed_text_cache_hit_rate": hit_rate,
        "summary": summary,
        "paired": paired,
        "results": results,
    }


def run_model(args: argparse.Namespace, settings: Any) -> int:
    try:
        sizes = tuple(int(x) for x in args.batch_sizes.split(",") if x.strip())
        if not sizes or min(sizes) < 1:
            raise ValueError
    except ValueError:
        print("finsent bench model: --batch-sizes must be positive integers, e.g. 1,32,128", file=sys.stderr)
        return 2
    out = run_bench(
        args.model_dir or settings.model.model_dir,
        sizes,
        args.seconds,
        args.checkpoint,
        not args.no_torch,
        args.threads,
        repeats=max(1, args.repeats),
        compare_dir=args.compare_model_dir,
        pairs=max(0, args.pairs),
    )
    keys = ("device", "load_average_1m", "skipped", "seed_text_cache_hit_rate", "summary")
    if not to_stdout(args.json_out):
        print(json.dumps({k: out[k] for k in keys}))
    emit_json(args.json_out, out)
    return 0


def register(bench_sub: Any) -> None:
    b = bench_sub.add_parser(
        "model",
        help="classifier throughput (sentences/s): PyTorch eager vs ONNX fp32/int8 (+fp16 on CUDA)",
        description="Sentences/s on the seed texts at several batch sizes, all runtimes in one run.",
        epilog="examples:\n"
        "  finsent bench model                                  every runtime at batch 1, 32, 128 on all cores\n"
        "  finsent bench model --threads 2 --repeats 3 --json model.json\n"
        "  finsent bench model --no-torch --batch-sizes 32 --model-dir runs/finsent-minilm-l3/model\n"
        "  finsent bench model --no-torch --batch-sizes 32 --threads 1 --compare-model-dir TWO_HEAD_DIR --pairs 20",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("--model-dir", type=Path, help="model directory (default: the shipped model)")
    b.add_argument(
        "--checkpoint", type=Path, help="PyTorch checkpoint (RUN/best) for the eager row; default: base encoder"
    )
    b.add_argument("--batch-sizes", default="1,32,128", help="comma-separated batch sizes")
    b.add_argument("--seconds", type=positive_float, default=2.0, help="minimum timed seconds per measurement")
    b.add_argument("--repeats", type=int, default=3, help="measurements per row (interleaved); the median is reported")
    b.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager rows")
    b.add_argument(
        "--compare-model-dir",
        type=Path,
        help="a second model directory timed int8 in the same rounds (e.g. the two-head model vs the three-head)",
    )
    b.add_argument(
        "--pairs",
        type=int,
        default=20,
        help="with --compare-model-dir: back-to-back pairs of passes (both int8, batch 32) for a load-robust ratio "
        "(0: none)",
    )
    b.add_argument("--threads", type=int, default=0, help="threads for every runtime (0: all cores)")
    add_json_option(b, "the results", dest="json_out")
    b.set_defaults(func=run_model)
