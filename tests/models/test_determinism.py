"""The default variant scores a text the same whatever else is in its batch (issue 24).

Redeliveries, rescores and backtests must reproduce: the same text gets the same labels and
probabilities (to 1e-4) alone, in batches of 32 and in shuffled batches, and at any padded length.
The int8 recipe that used one dynamic activation scale per batch tensor failed this (0.8% of sentiment
and 3-4% of topic labels changed on 2,000 tweets); per-row scales (``models.variants.quantize_rows``) pass.
Both the tiny test model and the shipped model are checked with the CPU default (``auto`` = int8).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import onnx
import pytest

from finsent.models.data import read_labelled_csv
from finsent.models.runtime import Classifier, Prediction
from finsent.models.testing import _WORDS, make_tiny_model

TOL = 1e-4
SEED_DIR = Path(__file__).resolve().parents[2] / "models" / "seed"


def _tiny_texts(n: int = 160) -> list[str]:
    """Texts of 1 to 50 words (so batches mix short and long texts and pad the short ones)."""
    rng = random.Random(5)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 50))) for _ in range(n)]


def _seed_texts(n: int = 200) -> list[str]:
    texts = read_labelled_csv(SEED_DIR / "sentiment.csv").texts + read_labelled_csv(SEED_DIR / "topic.csv").texts
    return random.Random(11).sample(texts, n)


def _in_batches(clf: Classifier, texts: list[str], order: list[int], size: int = 32) -> list[Prediction]:
    got: list[Prediction | None] = [None] * len(texts)
    for start in range(0, len(order), size):
        part = order[start : start + size]
        for i, p in zip(part, clf.predict([texts[i] for i in part]), strict=True):
            got[i] = p
    assert all(p is not None for p in got)
    return got  # type: ignore[return-value]


def _differences(ref: list[Prediction], got: list[Prediction], texts: list[str]) -> list[str]:
    bad = []
    for text, a, b in zip(texts, ref, got, strict=True):
        dp = max(abs(a.sentiment_probs[k] - b.sentiment_probs[k]) for k in a.sentiment_probs)
        if a.sentiment != b.sentiment or a.topic != b.topic or dp > TOL or abs(a.topic_prob - b.topic_prob) > TOL:
            bad.append(f"{text[:60]!r}: {a.sentiment}/{a.topic} -> {b.sentiment}/{b.topic}, |dp| {dp:.2e}")
    return bad


def _check_batch_independence(clf: Classifier, texts: list[str]) -> None:
    alone = [clf.predict([t])[0] for t in texts]
    orders = {"file order": list(range(len(texts)))}
    for seed in (1, 2):
        order = list(range(len(texts)))
        random.Random(seed).shuffle(order)
        orders[f"shuffled (seed {seed})"] = order
    for name, order in orders.items():
        bad = _differences(alone, _in_batches(clf, texts, order), texts)
        assert not bad, f"{len(bad)} of {len(texts)} texts scored differently in batches of 32, {name}: {bad[:5]}"
    whole = clf.predict(texts)  # one call: the runtime's own length-sorted cuts
    bad = _differences(alone, whole, texts)
    assert not bad, f"{len(bad)} texts scored differently in one call of {len(texts)}: {bad[:5]}"


def _check_padding_independence(clf: Classifier, texts: list[str]) -> None:
    """Run the graph itself on each text unpadded, padded by one column and padded to the model's
    ``max_length`` (what a long text in its batch does): the logits must agree."""
    session, tok = clf._session, clf._tokenizer  # the loaded variant's own session and tokenizer
    for text in texts:
        ids = tok.encode(text).ids
        pads = (0, 1, max(2, clf.info.max_length - len(ids)))
        outs = []
        for pad in pads:
            feed = {
                "input_ids": np.array([ids + [clf._pad_id] * pad], dtype=np.int64),
                "attention_mask": np.array([[1] * len(ids) + [0] * pad], dtype=np.int64),
            }
            outs.append(session.run(["sentiment_logits", "topic_logits"], feed))
        for pad, (s, t) in zip(pads[1:], outs[1:], strict=True):
            assert np.abs(s - outs[0][0]).max() < TOL, f"{text[:60]!r}: sentiment logits move with {pad} pads"
            assert np.abs(t - outs[0][1]).max() < TOL, f"{text[:60]!r}: topic logits move with {pad} pads"


@pytest.fixture(scope="module")
def tiny_default(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    d = make_tiny_model(tmp_path_factory.mktemp("tiny"))
    return Classifier.load(d, cache_dir=tmp_path_factory.mktemp("cache"), entities=False)


@pytest.fixture(scope="module")
def shipped_default() -> Classifier:
    return Classifier.load(entities=False)  # the shipped model, the CPU default variant


def test_tiny_default_variant_is_the_deterministic_int8(tiny_default: Classifier) -> None:
    assert tiny_default.variant == ("fp16" if tiny_default.provider == "CUDAExecutionProvider" else "int8")


def test_tiny_model_scores_do_not_depend_on_the_batch(tiny_default: Classifier) -> None:
    _check_batch_independence(tiny_default, _tiny_texts())


def test_tiny_model_scores_do_not_depend_on_padding(tiny_default: Classifier) -> None:
    _check_padding_independence(tiny_default, _tiny_texts(20))


def test_shipped_model_scores_do_not_depend_on_the_batch(shipped_default: Classifier) -> None:
    _check_batch_independence(shipped_default, _seed_texts())


def test_shipped_model_scores_do_not_depend_on_padding(shipped_default: Classifier) -> None:
    _check_padding_independence(shipped_default, _seed_texts(20))


def test_shipped_model_entities_do_not_depend_on_the_batch() -> None:
    """The entity head's spans and per-entity probabilities too (the shipped model has one: token_logits)."""
    clf = Classifier.load()
    texts = _seed_texts(96)
    alone = [clf.predict([t])[0] for t in texts]
    order = list(range(len(texts)))
    random.Random(3).shuffle(order)
    batched = _in_batches(clf, texts, order)
    assert any(m.entity_id is None for p in alone for m in p.entities), "no model-only span: is the head there?"
    for text, a, b in zip(texts, alone, batched, strict=True):
        assert [(m.start, m.end, m.sentiment, m.entity_id) for m in a.entities] == [
            (m.start, m.end, m.sentiment, m.entity_id) for m in b.entities
        ], text
        for x, y in zip(a.entities, b.entities, strict=True):
            assert max(abs(x.sentiment_probs[k] - y.sentiment_probs[k]) for k in x.sentiment_probs) < TOL, text


def _concat_graph(shared_reader: bool = False) -> onnx.ModelProto:
    """a [2, 3, 4] and b [2, 3, 3] concatenated (axis -1) into a MatMul with a [7, 5] weight; ``a`` also feeds a
    MatMul of its own (as a layer output feeds the next layer's projections); ``shared_reader``: the Concat's
    output is a graph output too."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((7, 5)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "wa"),
    ]
    nodes = [
        helper.make_node("MatMul", ["a", "wa"], ["ya"], name="a_proj"),
        helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=-1),
        helper.make_node("MatMul", ["cat", "w"], ["y"], name="head"),
    ]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("ya", "y")]
    if shared_reader:
        outputs.append(helper.make_tensor_value_info("cat", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", "seq", 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", "seq", 3]),
        ],
        outputs,
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["ya", "y"], feed)


def test_int8_recipe_splits_a_matmul_over_a_concat_and_quantises_each_input_once() -> None:
    """Recipe 5: Concat -> MatMul becomes one MatMul per input (the same fp32 maths), and in int8 an input that
    another MatMul already reads is quantised once for both (the entity head's layers 1-5)."""
    from finsent.models.variants import quantize_rows, split_concat_matmuls

    rng = np.random.default_rng(1)
    feed = {
        "a": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "b": rng.standard_normal((2, 3, 3)).astype(np.float32),
    }
    plain = _concat_graph()
    ref = _run(plain, feed)
    split = onnx.ModelProto()
    split.CopyFrom(plain)
    assert split_concat_matmuls(split) == 1
    assert "Concat" not in {n.op_type for n in split.graph.node}
    assert not any(i.name == "w" for i in split.graph.initializer)  # stored as its two row blocks only
    got = _run(split, feed)
    assert np.allclose(got[1], ref[1], atol=1e-5) and np.array_equal(got[0], ref[0])

    quantize_rows(split)
    ops = [n.op_type for n in split.graph.node]
    assert ops.count("MatMulInteger") == 3 and ops.count("QuantizeLinear") == 2, ops  # a once (two readers), b once
    q = _run(split, feed)
    assert np.abs(q[1] - ref[1]).max() < 0.05 * np.abs(ref[1]).max()
    # per row: a row's int8 result does not depend on the other rows (here: on the rest of the batch)
    alone = _run(split, {k: v[:1] for k, v in feed.items()})
    assert np.array_equal(alone[1], q[1][:1])


def test_int8_recipe_leaves_a_concat_that_something_else_reads() -> None:
    from finsent.models.variants import split_concat_matmuls

    model = _concat_graph(shared_reader=True)
    assert split_concat_matmuls(model) == 0
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Concat", "MatMul"]


def test_shipped_int8_graph_has_no_concat_before_the_token_head() -> None:
    """The shipped three-head model's int8 variant: the token projection reads the six layers one by one."""
    from finsent.models.variants import INT8_RECIPE, variant_path

    clf = Classifier.load(entities=False)
    path = variant_path(None, clf.model_dir / "model.onnx", "int8")
    assert f"int8r{INT8_RECIPE}" in path.name
    graph = onnx.load(str(path), load_external_data=False).graph
    parts = [n for n in graph.node if n.op_type == "MatMulInteger" and "/token_proj/" in n.name]
    assert len(parts) == 6, [n.name for n in parts]
    producers = {o: n.op_type for n in graph.node for o in n.output}
    assert all(producers.get(n.input[0]) != "Concat" for n in graph.node if n.op_type == "MatMulInteger")
