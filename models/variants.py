"""Derive the runtime variants of a model from its stored ``model.onnx`` (no torch needed).

Why derive instead of committing every variant: the fp32 MiniLM graph is ~90 MB, int8 ~23 MB,
fp16 ~45 MB; the repository target is <= 50 MB in all. So the directory stores one graph with
float16 weights (``compact_weights``) and the runtime rebuilds, on first use, the variant it
needs and caches it in the user's cache directory (``$XDG_CACHE_HOME/finsent``, FINSENT_CACHE_DIR):

* ``fp32``: weights cast back to float32 (``expand_weights``), then the onnxruntime transformer
  optimiser (attention / LayerNorm / GELU fusion).
* ``int8``: every weight MatMul of the plain fp32 graph in int8, per-channel weights and **per-row**
  activation scales (:func:`quantize_rows`), so a text scores the same whatever else is in its batch; CPU.
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
                helper.make_node(
                    "Cast",
                    [init.name + _INT8_SUFFIX],
                    [init.name + "__int8f"],
                    to=TensorProto.FLOAT,
                    name="unpack_" + init.name,
                ),
                helper.make_node(
                    "Mul", [init.name + "__int8f", init.name + _SCALE_SUFFIX], [init.name], name="scale_" + init.name
                ),
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
        if (
            node.op_type == "Mul"
            and node.input[0] in int8_casts
            and node.input[1].endswith(_SCALE_SUFFIX)
            and node.input[1] in inits
        ):
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


#: bump when derive_int8's recipe changes: it is part of the cached file's name, so no stale variant runs.
#: Recipe 4 (per-row activation scales) replaced recipe 3 (one dynamic scale per batch tensor), whose
#: scores depended on the rest of the batch; a cache still holding ``model.int8r3.*`` files is never read.
#: Recipe 5 splits a MatMul over a Concat into one MatMul per concatenated input (:func:`split_concat_matmuls`):
#: the entity head's six layers are quantised per row each (five of them already were) instead of as one
#: 2,304-wide tensor; item outputs are unchanged, token logits move by the finer quantisation.
INT8_RECIPE = 5
#: encoder layers whose feed-forward down-projection stays fp32 (recipe 3 kept layer 0; recipe 4 needs none)
FP32_FFN_LAYERS: tuple[int, ...] = ()
#: suffix of the MatMulInteger node that replaces a weight MatMul (the original node's name + this)
ROWQ_SUFFIX = "/rowq"


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


def quantize_rows(model: onnx.ModelProto, exclude: Collection[str] = ()) -> onnx.ModelProto:
    """Replace every weight MatMul (``X[..., K] @ W[K, N]``, W an initializer) by an int8 one whose
    activation scale is computed **per row** (per token), in place; returns ``model``.

    Why per row: onnxruntime's dynamic quantisation (``DynamicQuantizeLinear``) takes one scale over the
    whole ``[batch, sequence, K]`` tensor, so a text's int8 inputs, and so its labels, depended on the
    longest-magnitude token of whatever else was in its batch, pad tokens included (measured on the shipped
    model: 0.8% of sentiment and 3.3-3.9% of topic labels of 2,000 tweets changed between scoring alone and in
    shuffled batches of 32, |dp| up to 0.49). With a scale per token, a token's int8 values depend only on its
    own activations, which the attention mask already keeps free of the batch and of padding, and the int32
    products are exact: alone, in any batch and at any padded length the same text gets the same logits
    (up to float rounding, ~1e-7).

    Per weight MatMul: weights int8 symmetric per output column (``ws = max|W[:, n]| / 127``). Per input
    tensor (shared by the query/key/value projections, quantised once): ``X`` is viewed as ``[M, K]``,
    ``s = max(max|X[m, :]|, 1e-12) / 127`` per row, ``QuantizeLinear(X, s, 128)`` (round half to even,
    int8 values -127..127 stored as uint8 + 128, the layout onnxruntime's u8s8 VNNI kernels take), then
    ``MatMulInteger(Xq, Wq, 128)`` in int32 and ``float(acc) * s[m] * ws[n]``. onnxruntime's per-tensor
    fused kernels (DynamicQuantizeMatMul, MatMulIntegerToFloat) take only a scalar activation scale, so
    the scaling is separate nodes.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    # the exporter writes a weight that two layers share (an entity branch's copied layer) once, the second use
    # through an Identity node: read such weights straight from the initializer so both uses are quantised
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in inits}
    if alias:
        for n in graph.node:
            for k, name in enumerate(n.input):
                if name in alias:
                    n.input[k] = alias[name]
        kept_nodes = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
        if any(o.name in alias for o in graph.output):
            kept_nodes = list(graph.node)  # a graph output must keep its producer
        del graph.node[:]
        graph.node.extend(kept_nodes)
    consts = [
        numpy_helper.from_array(np.array(128, np.uint8), "rowq/zero_point"),
        numpy_helper.from_array(np.array(1e-12, np.float32), "rowq/eps"),
        numpy_helper.from_array(np.array(1 / 127, np.float32), "rowq/inv127"),
        numpy_helper.from_array(np.array([-1], np.int64), "rowq/minus1"),
        numpy_helper.from_array(np.array([0], np.int64), "rowq/zero"),
        numpy_helper.from_array(np.array([1], np.int64), "rowq/one"),
    ]
    new_inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    replaced: set[str] = set()
    quantised: dict[str, str] = {}  # input tensor -> prefix of its per-row quantised form

    def node(op: str, inputs: list[str], output: str, **attrs: object) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [output], name=output, **attrs)

    for n in graph.node:
        weight = inits.get(n.input[1]) if n.op_type == "MatMul" and len(n.input) == 2 else None
        if weight is None or len(weight.dims) != 2 or weight.data_type != TensorProto.FLOAT or n.name in exclude:
            nodes.append(n)
            continue
        w = numpy_helper.to_array(weight).astype(np.float32)
        k, width = w.shape
        ws = np.abs(w).max(axis=0) / 127.0
        ws[ws == 0] = 1.0
        wq = np.clip(np.rint(w / ws), -127, 127).astype(np.int8)
        p = (n.name or n.output[0]) + ROWQ_SUFFIX
        new_inits += [
            numpy_helper.from_array(wq, p + "/weight_int8"),
            numpy_helper.from_array(ws.astype(np.float32), p + "/weight_scale"),
            numpy_helper.from_array(np.array([k], np.int64), p + "/K"),
        ]
        replaced.add(weight.name)
        x = n.input[0]
        if x not in quantised:
            q = quantised[x] = f"{x}/rowq{len(quantised)}"
            nodes += [
                node("Concat", ["rowq/minus1", p + "/K"], q + "/shape2d", axis=0),
                node("Reshape", [x, q + "/shape2d"], q + "/x2d"),
                node("Abs", [q + "/x2d"], q + "/abs"),
                node("ReduceMax", [q + "/abs"], q + "/amax", axes=[1], keepdims=1),
                node("Max", [q + "/amax", "rowq/eps"], q + "/amax_eps"),
                node("Mul", [q + "/amax_eps", "rowq/inv127"], q + "/scale2d"),
                node("Reshape", [q + "/scale2d", "rowq/minus1"], q + "/scale"),
                node("Shape", [q + "/scale"], q + "/rows"),
                node("Expand", ["rowq/zero_point", q + "/rows"], q + "/zero_points"),
                node("QuantizeLinear", [q + "/x2d", q + "/scale", q + "/zero_points"], q + "/xq2d", axis=0),
                node("Shape", [x], q + "/xshape"),
                node("Reshape", [q + "/xq2d", q + "/xshape"], q + "/xq"),
                node("Slice", [q + "/xshape", "rowq/zero", "rowq/minus1"], q + "/lead"),
                node("Concat", [q + "/lead", "rowq/one"], q + "/scale_shape", axis=0),
                node("Reshape", [q + "/scale2d", q + "/scale_shape"], q + "/xscale"),
            ]
        q = quantised[x]
        nodes += [
            node("MatMulInteger", [q + "/xq", p + "/weight_int8", "rowq/zero_point"], p),
            node("Cast", [p], p + "/float", to=TensorProto.FLOAT),
            node("Mul", [p + "/float", q + "/xscale"], p + "/row_scaled"),
            helper.make_node("Mul", [p + "/row_scaled", p + "/weight_scale"], [n.output[0]], name=p + "/out"),
        ]
    if replaced:
        new_inits = consts + new_inits
    del graph.node[:]
    graph.node.extend(nodes)
    still_used = {name for n in nodes for name in n.input}  # e.g. a weight shared with a node left in fp32
    kept = [i for i in graph.initializer if i.name not in replaced or i.name in still_used] + new_inits
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


#: suffix of the per-input MatMuls that replace a MatMul over a Concat (the original node's name + this + index)
SPLIT_SUFFIX = "/part"


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """Each tensor's (rank, static last dimension) where shape inference knows them."""
    inferred = onnx.shape_inference.infer_shapes(model)
    out: dict[str, tuple[int, int]] = {}
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = v.type.tensor_type.shape.dim
        if dims and dims[-1].HasField("dim_value"):
            out[v.name] = (len(dims), int(dims[-1].dim_value))
    for init in model.graph.initializer:
        if init.dims:
            out[init.name] = (len(init.dims), int(init.dims[-1]))
    return out


def split_concat_matmuls(model: onnx.ModelProto) -> int:
    """Rewrite ``Concat([h_1..h_n], axis=-1) @ W`` (W an initializer, the Concat read by nothing else) as
    ``h_1 @ W_1 + ... + h_n @ W_n`` with W's row blocks, in place; returns how many MatMuls were split.

    Why: the entity head reads the concatenation of six encoder layers (2,304 wide). Quantised per row as one
    tensor, the Concat (a 2,304-wide copy) and its quantisation (Abs, ReduceMax, QuantizeLinear over it) cost
    about as much as the rest of the head (bench/RESULTS.md). Split, each layer output is quantised per row on
    its own, and :func:`quantize_rows` quantises a tensor once for all its readers: layers 1-5 already are, for
    the next layer's query/key/value projections, so only the last layer's output is quantised anew and the
    Concat is gone. The same maths in fp32; in int8 each layer gets its own per-row scale instead of one shared
    over the six (finer, and still a function of the token's own activations only, so deterministic).
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, int] = {}
    for n in graph.node:
        for name in n.input:
            readers[name] = readers.get(name, 0) + 1
    for o in graph.output:
        readers[o.name] = readers.get(o.name, 0) + 1
    shapes: dict[str, tuple[int, int]] | None = None
    nodes: list[onnx.NodeProto] = []
    dropped: set[str] = set()  # Concat outputs whose Concat goes
    replaced: set[str] = set()  # weights now stored as row blocks
    new_inits: list[onnx.TensorProto] = []
    split = 0
    for n in graph.node:
        weight = inits.get(n.input[1]) if n.op_type == "MatMul" and len(n.input) == 2 else None
        cat = producer.get(n.input[0]) if weight is not None else None
        if (
            cat is None
            or cat.op_type != "Concat"
            or len(cat.input) < 2
            or readers.get(cat.output[0], 0) != 1
            or len(weight.dims) != 2
            or weight.data_type != TensorProto.FLOAT
        ):
            nodes.append(n)
            continue
        if shapes is None:
            shapes = _shapes(model)
        known = [shapes.get(x) for x in cat.input]
        axis = next((a.i for a in cat.attribute if a.name == "axis"), None)
        widths = [s[1] for s in known if s is not None]
        if (
            len(widths) != len(known)
            or sum(widths) != weight.dims[0]
            or any(axis not in (-1, s[0] - 1) for s in known if s is not None)
        ):  # not a concatenation along the MatMul's reduced axis that shape inference can size: leave it
            nodes.append(n)
            continue
        w = numpy_helper.to_array(weight)
        base = n.name or n.output[0]
        parts: list[str] = []
        row = 0
        for k, (x, width) in enumerate(zip(cat.input, widths, strict=True)):
            name = f"{base}{SPLIT_SUFFIX}{k}"
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray(w[row : row + width]), name + "/weight"))
            row += width
            nodes.append(helper.make_node("MatMul", [x, name + "/weight"], [name], name=name))
            parts.append(name)
        total = parts[0]
        for k, part in enumerate(parts[1:], start=1):
            out = n.output[0] if k == len(parts) - 1 else f"{base}{SPLIT_SUFFIX}sum{k}"
            nodes.append(helper.make_node("Add", [total, part], [out], name=f"{base}{SPLIT_SUFFIX}sum{k}"))
            total = out
        dropped.add(cat.output[0])
        replaced.add(weight.name)
        split += 1
    if not split:
        return 0
    nodes = [n for n in nodes if not (n.op_type == "Concat" and n.output[0] in dropped)]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for n in nodes for name in n.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name not in replaced or i.name in used] + new_inits
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return split


def derive_int8(src: Path, dst: Path) -> None:
    """The int8 CPU variant (recipe 5): every weight MatMul of the plain (unfused) fp32 graph in int8 with
    per-channel weight scales and per-row activation scales (:func:`quantize_rows`), a MatMul over a Concat
    first split into one per concatenated input (:func:`split_concat_matmuls`, the entity head's layers);
    onnxruntime's own session-level fusions run at load.

    Deterministic by construction: a text gets the same labels and probabilities (to ~1e-7) alone, in any
    batch and at any padded length. Measured on the shipped model (bench/RESULTS.md, "Deterministic int8"):
    0 label changes on 2,000 tweets scored alone and in two shuffled orders of batches of 32 (recipe 3,
    per-tensor dynamic scales: 14-16 sentiment and 65-77 topic labels), and test accuracy within 0.26
    points of fp32 on every set with no layer left in fp32 (a per-token scale absorbs the outlier tokens
    that made recipe 3 keep layer 0's feed-forward down-projection in fp32).
    """
    model = expand_weights(src)
    split_concat_matmuls(model)
    _atomic_save(quantize_rows(model, ffn_output_matmuls(model, FP32_FFN_LAYERS)), dst)


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
