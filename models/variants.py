"""Derive the runtime variants of a model from its stored ``model.onnx`` (no torch needed).

Why derive instead of committing every variant: the fp32 MiniLM graph is ~90 MB, int8 ~23 MB,
fp16 ~45 MB; the repository target is <= 50 MB in all. So the directory stores one graph with
float16 weights (``compact_weights``) and the runtime rebuilds, on first use, the variant it
needs and caches it in the user's cache directory (``$XDG_CACHE_HOME/finsent``, FINSENT_CACHE_DIR):

* ``fp32``: weights cast back to float32 (``expand_weights``), then the onnxruntime transformer
  optimiser (attention / LayerNorm / GELU fusion).
* ``int8``: dynamic quantisation of the plain fp32 graph, per-channel int8 weights (kept much closer
  to fp32 than per-tensor here), every MatMul but the first layer's feed-forward down-projection, for CPU.
* ``fp16``: the fp32 variant converted to float16 compute (inputs/outputs stay int64/float32), for GPU.

Every function writes to a temporary file and renames it into place, so two processes that
derive the same variant at once cannot leave a half-written file behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Collection
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from finsent.core.settings import default_cache_dir

log = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = ("fp32", "int8", "fp16")
#: Initializers smaller than this stay float32 in storage (biases, LayerNorm scales: tiny, precision-sensitive).
_COMPACT_MIN_ELEMENTS = 4096
_FP16_SUFFIX = "__fp16"
_INT8_SUFFIX = "__int8"
_SCALE_SUFFIX = "__scale"


def file_digest(path: Path, n: int = 12) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def _atomic_save(model: onnx.ModelProto, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dst.name + ".", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        onnx.save_model(model, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def compact_weights(src: Path, dst: Path, int8_rows: Collection[str] = ()) -> None:
    """Store large float32 initializers as float16 plus a Cast back to float32 inside the graph.

    The graph still computes in float32 (onnxruntime folds the casts at load), so this costs only
    the float16 rounding of the weights (~1e-3 relative), measured by the exporter.

    ``int8_rows``: 2-D initializers (the word-embedding table) stored as int8 with one float32 scale
    per row (symmetric, max |row| -> 127), dequantised in the graph by a Cast and a Mul that
    onnxruntime folds at load. The 30,522 x 384 table is half of a 3-layer student's weights; this
    halves it again (23 -> 12 MB) so every shipped model fits the repository's 80 MB together, at
    the cost of a rounding of at most 1/254 of each row's largest entry (the exporter measures the
    logits; the finaliser the accuracy of every variant).
    """
    model = onnx.load(str(src))
    graph = model.graph
    casts = []
    kept = []
    missing = set(int8_rows) - {i.name for i in graph.initializer}
    if missing:
        raise ValueError(f"{src}: no initializer named {', '.join(sorted(missing))} to store as int8 rows")
    for init in graph.initializer:
        if init.name in int8_rows:
            arr = numpy_helper.to_array(init).astype(np.float32)
            if arr.ndim != 2:
                raise ValueError(f"{src}: {init.name} is {arr.ndim}-D; int8 rows need a 2-D table")
            scale = np.abs(arr).max(axis=1, keepdims=True) / 127.0
            scale[scale == 0] = 1.0
            q = np.clip(np.rint(arr / scale), -127, 127).astype(np.int8)
            kept += [
                numpy_helper.from_array(q, name=init.name + _INT8_SUFFIX),
                numpy_helper.from_array(scale.astype(np.float32), name=init.name + _SCALE_SUFFIX),
            ]
            casts += [
                helper.make_node("Cast", [init.name + _INT8_SUFFIX], [init.name + "__int8f"], to=TensorProto.FLOAT,
                                 name="unpack_" + init.name),
                helper.make_node("Mul", [init.name + "__int8f", init.name + _SCALE_SUFFIX], [init.name],
                                 name="scale_" + init.name),
            ]
        elif init.data_type == TensorProto.FLOAT and int(np.prod(init.dims)) >= _COMPACT_MIN_ELEMENTS:
            arr = numpy_helper.to_array(init).astype(np.float16)
            half = numpy_helper.from_array(arr, name=init.name + _FP16_SUFFIX)
            kept.append(half)
            casts.append(
                helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT, name="unpack_" + init.name)
            )
        else:
            kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    model.metadata_props.append(onnx.StringStringEntryProto(key="finsent.weights", value="fp16-storage"))
    if int8_rows:
        model.metadata_props.append(onnx.StringStringEntryProto(key="finsent.int8_rows", value=",".join(int8_rows)))
    _atomic_save(model, dst)


def expand_weights(src: Path) -> onnx.ModelProto:
    """Undo :func:`compact_weights`: float16- and int8-row-stored initializers become float32 again,
    the unpacking nodes removed, every weight under its original name."""
    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    new_inits = []
    drop_nodes = []
    used_fp16 = set()
    int8_casts = {
        node.output[0]: node
        for node in graph.node
        if node.op_type == "Cast" and len(node.input) == 1 and node.input[0].endswith(_INT8_SUFFIX)
        and node.input[0] in inits
    }  # fmt: skip
    for node in graph.node:
        if node.op_type == "Mul" and node.input[0] in int8_casts and node.input[1].endswith(_SCALE_SUFFIX) \
                and node.input[1] in inits:
            cast = int8_casts[node.input[0]]
            q = numpy_helper.to_array(inits[cast.input[0]]).astype(np.float32)
            scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            new_inits.append(numpy_helper.from_array(q * scale, name=node.output[0]))
            drop_nodes += [cast, node]
            used_fp16 |= {cast.input[0], node.input[1]}
    for node in graph.node:
        if (
            node.op_type == "Cast"
            and len(node.input) == 1
            and node.input[0] in inits
            and inits[node.input[0]].data_type == TensorProto.FLOAT16
            and node.input[0].endswith(_FP16_SUFFIX)
        ):
            arr = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
            new_inits.append(numpy_helper.from_array(arr, name=node.output[0]))
            drop_nodes.append(node)
            used_fp16.add(node.input[0])
    keep_nodes = [n for n in graph.node if all(n is not d for d in drop_nodes)]
    del graph.node[:]
    graph.node.extend(keep_nodes)
    keep_inits = [i for i in graph.initializer if i.name not in used_fp16] + new_inits
    del graph.initializer[:]
    graph.initializer.extend(keep_inits)
    return model


def _optimize(model: onnx.ModelProto, num_heads: int, hidden_size: int, fp16: bool) -> onnx.ModelProto:
    """The onnxruntime transformer optimiser (fusions); falls back to the plain graph if it fails."""
    from onnxruntime.transformers.optimizer import optimize_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.onnx"
        onnx.save_model(model, str(path))
        try:
            opt = optimize_model(
                str(path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=1, use_gpu=fp16
            )
        except Exception as exc:  # noqa: BLE001 - an optimiser failure must not stop the model from loading
            log.warning("onnxruntime transformer optimiser failed (%s); using the unoptimised graph", exc)
            if fp16:
                from onnxruntime.transformers.onnx_model import OnnxModel

                plain = OnnxModel(onnx.load(str(path)))
                plain.convert_float_to_float16(keep_io_types=True)
                return plain.model
            return onnx.load(str(path))
        log.info("ORT fusions: %s", opt.get_fused_operator_statistics())
        if fp16:
            opt.convert_float_to_float16(keep_io_types=True)
        return opt.model


def derive_fp32(src: Path, dst: Path, num_heads: int = 0, hidden_size: int = 0) -> None:
    _atomic_save(_optimize(expand_weights(src), num_heads, hidden_size, fp16=False), dst)


def derive_fp16(src: Path, dst: Path, num_heads: int = 0, hidden_size: int = 0) -> None:
    _atomic_save(_optimize(expand_weights(src), num_heads, hidden_size, fp16=True), dst)


#: bump when derive_int8's recipe changes: it is part of the cached file's name, so no stale variant runs
INT8_RECIPE = 3
#: recipe 3 keeps only these encoder layers' feed-forward down-projections in fp32 (recipe 2 kept all six)
FP32_FFN_LAYERS: tuple[int, ...] = (0,)


def ffn_output_matmuls(model: onnx.ModelProto, layers: tuple[int, ...] | None = None) -> list[str]:
    """The feed-forward down-projections (``layer.N/output/dense``), of ``layers`` only when given."""
    names = [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and n.name.endswith("/output/dense/MatMul") and "/attention/" not in n.name
    ]
    if layers is None:
        return names
    return [n for n in names if any(f"layer.{k}/" in n for k in layers)]


def derive_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of the MatMul weights, per channel (measured: far closer to fp32 than
    per-tensor). It quantises the plain (unfused) fp32 graph -- the quantiser cannot type the outputs
    of the transformer optimiser's contrib ops -- and onnxruntime's own session-level fusions run at load.

    Only the first encoder layer's feed-forward down-projection stays fp32 (recipe 3): its input carries
    the large outlier activations that a per-tensor dynamic activation scale handles worst. Measured on
    the shipped model's test split, one MatMul left in fp32 at a time (bench/RESULTS.md, "Model"): layer 0
    alone brings FPB from -1.29 to 0.00 accuracy points against fp32 and TFNS from -0.73 to -0.31; leaving
    any other layer's in fp32 changes almost nothing. Recipe 2 kept all six in fp32 (a third of the
    encoder's multiply-adds) for no accuracy gain, and is ~1.4x slower in CPU time per sentence on a CPU
    with VNNI int8 instructions.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmpdir:
        plain = Path(tmpdir) / "plain.onnx"
        fp32_model = expand_weights(src)
        keep_fp32 = ffn_output_matmuls(fp32_model, FP32_FFN_LAYERS)
        onnx.save_model(fp32_model, str(plain))
        tmp = Path(tmpdir) / "int8.onnx"
        # onnxruntime's quantiser logs a "consider pre-processing" warning on the root logger; we measured
        # that quant_pre_process fails on this graph, so the advice is noise for finsent's users.
        quiet = _DropPreprocessAdvice()
        logging.getLogger().addFilter(quiet)
        try:
            quantize_dynamic(
                plain,
                tmp,
                per_channel=True,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul"],
                nodes_to_exclude=keep_fp32,
                extra_options={"DefaultTensorType": TensorProto.FLOAT},
            )
        finally:
            logging.getLogger().removeFilter(quiet)
        os.replace(tmp, dst)


class _DropPreprocessAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def is_compact(path: Path) -> bool:
    model = onnx.load(str(path), load_external_data=False)
    return any(p.key == "finsent.weights" and p.value == "fp16-storage" for p in model.metadata_props)


def cache_root(cache_dir: Path | None, digest: str) -> Path:
    """``<cache_dir>/models/<digest>``; ``cache_dir`` defaults to ``$XDG_CACHE_HOME/finsent`` (FINSENT_CACHE_DIR).

    Never inside the model directory: that is part of the installed package, which may be
    read-only, and ``pip uninstall`` would leave ~150 MB of derived files behind.
    """
    path = (cache_dir if cache_dir is not None else default_cache_dir()) / "models" / digest
    path.mkdir(parents=True, exist_ok=True)
    return path


def variant_path(
    cache_dir: Path | None, model_file: Path, variant: str, num_heads: int = 0, hidden_size: int = 0
) -> Path:
    """The ONNX file of ``variant``, deriving (and caching) it from ``model_file`` when absent."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}: choose one of auto, {', '.join(VARIANTS)}")
    digest = file_digest(model_file)
    root = cache_root(cache_dir, digest)
    tag = f"int8r{INT8_RECIPE}" if variant == "int8" else variant
    out = root / f"model.{tag}.{digest}.onnx"
    if not out.is_file():
        log.info("deriving the %s variant of %s into %s (once per model)", variant, model_file, root)
        if variant == "fp32":
            derive_fp32(model_file, out, num_heads, hidden_size)
        elif variant == "int8":
            derive_int8(model_file, out)
        else:
            derive_fp16(model_file, out, num_heads, hidden_size)
    return out
