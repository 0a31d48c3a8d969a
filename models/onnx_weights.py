"""Rebuild the PyTorch model from a model directory's ONNX graph, so a registry version can be fine-tuned.

Why: a registry version is exactly what runs (``model.onnx`` + tokenizer + labels), not a PyTorch
checkpoint; keeping a 90 MB fp32 checkpoint next to every 45 MB version would triple the registry,
and the shipped model has no checkpoint at all. The exporter keeps every parameter in the graph:
most under their PyTorch names (fp16-stored ones with a ``__fp16`` suffix, cast back in the graph),
the Linear weights of the encoder as transposed ``onnx::MatMul_*`` initialisers. Those are named by
following each MatMul to the Add that adds its bias (whose initialiser keeps the PyTorch name).
The encoder config (sizes, layer count) is read off the initialiser shapes plus ``num_heads`` from
``labels.json``. The fp16 storage costs nothing measurable: the rebuilt model's logits match the
graph's (checked by :func:`load_from_onnx`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from finsent.models.modeldir import MODEL_FILE, read_model_info

_FP16 = "__fp16"
_LAYER_RE = re.compile(r"^encoder\.encoder\.layer\.(\d+)\.")


_LINEAR = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


def onnx_state_dict(model_file: Path) -> dict[str, np.ndarray]:
    """PyTorch parameter name -> float32 array, for every parameter the graph holds.

    Names come from the graph's structure, not only from initialiser names, because the exporter
    merges initialisers with equal values (a fresh model's zero biases all become one tensor named
    after the first of them): the encoder's weight MatMuls appear in execution order, six per layer
    (query, key, value, attention output, intermediate, output), each followed by the Add of its
    bias, and its LayerNormalization nodes in order (embeddings, then two per layer).
    """
    from onnx import numpy_helper

    from finsent.models.variants import expand_weights

    graph = expand_weights(model_file).graph  # float16- and int8-row-stored weights back to float32
    arrays = {init.name: numpy_helper.to_array(init).astype(np.float32) for init in graph.initializer}
    # a tensor's initialiser through Cast nodes (fp16 storage casts back to float32 in the graph)
    source: dict[str, str] = {name: name for name in arrays}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        if node.op_type in ("Cast", "Identity") and node.input and node.input[0] in source:
            source[node.output[0]] = source[node.input[0]]
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out: dict[str, np.ndarray] = {n.removesuffix(_FP16): a for n, a in arrays.items() if not n.startswith("onnx::")}
    matmuls = [
        node for node in graph.node
        if node.op_type == "MatMul" and any(source.get(i, "").startswith("onnx::") for i in node.input)
    ]  # fmt: skip
    # an entity head's tag layer (models.entity_head) is a MatMul outside the encoder, named after its module
    for node in [m for m in matmuls if m.name.startswith(("/token_out/", "/token_proj/", "/token_ctx/"))]:
        matmuls.remove(node)
        weight = next(source[i] for i in node.input if source.get(i, "").startswith("onnx::"))
        out[node.name.split("/")[1] + ".weight"] = arrays[weight].T.copy()
    if not matmuls or len(matmuls) % len(_LINEAR):
        raise ValueError(f"{model_file}: {len(matmuls)} weight MatMuls; expected {len(_LINEAR)} per encoder layer")
    layers = len(matmuls) // len(_LINEAR)
    for j, node in enumerate(matmuls):
        prefix = f"encoder.encoder.layer.{j // len(_LINEAR)}.{_LINEAR[j % len(_LINEAR)]}"
        weight = next(source[i] for i in node.input if source.get(i, "").startswith("onnx::"))
        add = next((c for c in consumers.get(node.output[0], []) if c.op_type == "Add"), None)
        bias = next((source[i] for i in add.input if i in source), None) if add is not None else None
        if bias is None:
            raise ValueError(f"{model_file}: no bias Add follows the MatMul of {prefix}")
        out[prefix + ".weight"] = arrays[weight].T.copy()
        out[prefix + ".bias"] = arrays[bias]
    norms = [node for node in graph.node if node.op_type == "LayerNormalization"]
    names = ["encoder.embeddings.LayerNorm"] + [
        f"encoder.encoder.layer.{i}.{part}"
        for i in range(layers)
        for part in ("attention.output.LayerNorm", "output.LayerNorm")
    ]
    if len(norms) != len(names):
        raise ValueError(f"{model_file}: {len(norms)} LayerNormalization nodes; expected {len(names)}")
    for node, prefix in zip(norms, names, strict=True):
        out[prefix + ".weight"] = arrays[source[node.input[1]]]
        out[prefix + ".bias"] = arrays[source[node.input[2]]]
    return out


def encoder_config(state: dict[str, np.ndarray], num_heads: int) -> Any:
    """A BertConfig with the sizes the weights imply (MiniLM and the tiny test model are BERT-style)."""
    from transformers import BertConfig

    vocab, hidden = state["encoder.embeddings.word_embeddings.weight"].shape
    layers = 1 + max(int(m.group(1)) for k in state if (m := _LAYER_RE.match(k)))
    return BertConfig(
        vocab_size=int(vocab),
        hidden_size=int(hidden),
        num_hidden_layers=layers,
        num_attention_heads=num_heads,
        intermediate_size=int(state["encoder.encoder.layer.0.intermediate.dense.weight"].shape[0]),
        max_position_embeddings=int(state["encoder.embeddings.position_embeddings.weight"].shape[0]),
        type_vocab_size=int(state["encoder.embeddings.token_type_embeddings.weight"].shape[0]),
    )


def load_from_onnx(model_dir: Path, attn_implementation: str = "sdpa") -> Any:
    """The :class:`~finsent.models.modeling.MultiTaskClassifier` whose export is ``model_dir`` (eval mode)."""
    import torch

    from finsent.models.modeling import MultiTaskClassifier, build_encoder, token_kwargs

    info = read_model_info(model_dir)
    state = onnx_state_dict(model_dir / MODEL_FILE)
    heads = int(info.extra.get("num_heads") or 0)
    if not heads:
        raise ValueError(f"{model_dir}: labels.json lacks num_heads; cannot rebuild the encoder")
    config = encoder_config(state, heads)
    model = MultiTaskClassifier(
        build_encoder(config, attn_implementation), len(info.sentiment), len(info.topic), **token_kwargs(info.extra)
    )  # a three-head version keeps its entity head
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # the pooler is unused (mean pooling), so it is not in the graph; buffers are not parameters
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids")) and ".pooler." not in k]
    if missing or unexpected:
        raise ValueError(f"{model_dir}: graph weights do not fit the model (missing {missing}, extra {unexpected})")
    model.eval()
    return model
