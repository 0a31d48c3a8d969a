"""The entity head (issue 24): FinEntity realignment, BIO tags <-> character spans, the three-head graph
through the shipping exporter and runtime, and old two-head models still loading.

The wiring uses tiny random models; spans are forced by setting the token head's bias, so what is checked is
the plumbing (offsets back onto the caller's text through link stripping, non-ASCII, emoji and truncation),
not the trained head's quality (bench/RESULTS.md, "Entity head").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from finsent.models.entity_head import (
    IGNORE,
    TAGS,
    TOKEN_OUTPUT,
    EntityParagraph,
    decode_spans,
    finentity_split,
    map_spans,
    prepare_with_map,
    read_finentity_spans,
    realign,
    span_f1,
    span_f1_per_class,
    token_tags,
)
from finsent.models.runtime import Classifier
from finsent.models.testing import TINY_MAX_LENGTH, make_tiny_model, tiny_tokenizer
from finsent.models.textprep import strip_urls

# --- data ------------------------------------------------------------------------------------------------


def test_realign_moves_a_shifted_span_onto_its_value() -> None:
    text = "Acme rose while Widget Corp fell and Acme hired."
    assert realign(text, "Widget Corp", 16) == 16  # already right
    assert realign(text, "Widget Corp", 13) == 16  # shifted by 3
    assert realign(text, "Acme", 30) == 37  # the nearest of two occurrences
    assert realign(text, "Zeta", 5) == -1


def test_read_finentity_realigns_and_counts(tmp_path: Path) -> None:
    text = "Acme rose while Widget Corp fell."
    data = [
        {
            "content": text,
            "annotations": [
                {"start": 0, "end": 4, "value": "Acme", "label": "Positive"},
                {"start": 14, "end": 25, "value": "Widget Corp", "label": "Negative"},  # shifted by 2
                {"start": 0, "end": 4, "value": "Nowhere", "label": "Neutral"},  # not in the text
            ],
        }
    ]
    path = tmp_path / "fe.json"
    path.write_text(json.dumps(data))
    paras, stats = read_finentity_spans(path)
    assert paras[0].spans == ((0, 4, "positive"), (16, 27, "negative"))
    assert stats == {"spans": 3, "shifted": 1, "dropped": 1, "overlapping": 0}


def test_split_is_fixed_and_disjoint() -> None:
    paras = [EntityParagraph(f"text {i}", ()) for i in range(50)]
    a_train, a_test = finentity_split(paras)
    b_train, b_test = finentity_split(paras)
    assert [p.text for p in a_test] == [p.text for p in b_test] and len(a_test) == 10
    assert not {p.text for p in a_train} & {p.text for p in a_test}


# --- tags <-> spans ----------------------------------------------------------------------------------------

TEXTS = [
    "acme shares rise but widget corp falls",
    "Société Générale rises 5% 🚀 after Crédit Agricole deal",
    "  oil   up\t\tgold down  https://t.co/AbC123 and bonds https://example.com/x?y=1 rise ",
]


@pytest.mark.parametrize("text", TEXTS)
def test_gold_tags_decode_back_to_the_same_spans(text: str) -> None:
    """Oracle logits from the gold tags give back exactly the gold character spans, emoji and accents included."""
    tok = tiny_tokenizer()
    words = [(m.start(), m.end()) for m in __import__("re").finditer(r"\S+", text)]
    gold = [(words[0][0], words[0][1], "positive"), (words[-2][0], words[-1][1], "negative")]
    enc = tok.encode(text)
    tags = token_tags(enc.offsets, gold, enc.special_tokens_mask)
    assert tags[0] == IGNORE and tags[-1] == IGNORE  # [CLS], [SEP]
    logits = np.full((len(tags), len(TAGS)), -9.0, dtype=np.float32)
    for i, t in enumerate(tags):
        logits[i, max(t, 0)] = 9.0
    spans = decode_spans(logits, enc.offsets, enc.special_tokens_mask, text)
    assert [(s, e, lab) for s, e, lab, _ in spans] == gold
    assert all(abs(sum(p.values()) - 1) < 1e-5 for *_, p in spans)


def _logits_for(tags: list[str]) -> np.ndarray:
    logits = np.full((len(tags), len(TAGS)), -9.0, dtype=np.float32)
    for i, t in enumerate(tags):
        logits[i, TAGS.index(t)] = 9.0
    return logits


def test_spans_never_start_or_end_inside_a_word() -> None:
    """A word is tagged by the mean of its pieces: a span covers whole words ("xyzw", not "xy"), a word most of
    whose pieces say O gives no span ("q|r|s|t" with one B piece), and punctuation keeps its own tag ("abc's"
    gives "abc")."""
    tok = tiny_tokenizer()
    text = "xyzw jumps, abc's qrst"
    enc = tok.encode(text)
    pieces = [text[a:b] for a, b in enc.offsets]
    assert pieces == ["", *"xyzw", "jumps", ",", *"abc", "'", "s", *"qrst", ""]  # the tiny vocabulary's pieces
    tags = ["O"] * len(pieces)
    tags[1:4] = ["B-POS", "I-POS", "B-POS"]  # "x|y|z|w": three of four pieces inside an entity, the last O
    tags[7:10] = ["B-NEG", "I-NEG", "I-NEG"]  # "abc", then "'" and "s" are O
    tags[15] = "B-NEU"  # "q|r|s|t": only a later piece said B
    spans = decode_spans(_logits_for(tags), enc.offsets, enc.special_tokens_mask, text)
    assert [(text[s:e], lab) for s, e, lab, _ in spans] == [("xyzw", "positive"), ("abc", "negative")]


def _logits_from_probs(rows: list[dict[str, float]]) -> np.ndarray:
    """Logits whose softmax is each row's tag probabilities (unnamed tags share what is left)."""
    out = np.empty((len(rows), len(TAGS)), dtype=np.float32)
    for i, row in enumerate(rows):
        rest = max(1.0 - sum(row.values()), 1e-6) / (len(TAGS) - len(row))
        out[i] = np.log([row.get(t, rest) for t in TAGS])
    return out


def test_an_entity_split_between_polarities_is_still_found() -> None:
    """O 0.40 against B-NEG 0.35 and B-POS 0.25: the word is most likely an entity (0.60), which the greedy
    per-tag argmax (O) missed; its sentiment is the polarity with the most mass."""
    tok = tiny_tokenizer()
    text = "acme rises"
    enc = tok.encode(text)
    words = [i for i, (a, b) in enumerate(enc.offsets) if b > a]
    rows = [{"O": 0.97} for _ in enc.offsets]
    for i in words[:4]:  # "a|c|m|e"
        rows[i] = {"O": 0.40, "B-NEG": 0.35, "B-POS": 0.24}
    spans = decode_spans(_logits_from_probs(rows), enc.offsets, enc.special_tokens_mask, text)
    assert [(text[s:e], lab) for s, e, lab, _ in spans] == [("acme", "negative")]
    assert spans[0][3]["negative"] == pytest.approx((0.35 + 0.0025) / 0.60, abs=1e-4)  # I-NEG shares the 0.01 left


def test_an_inside_tag_needs_a_begin_tag_before_it() -> None:
    """BIO is decoded as a whole sequence (Viterbi, no I after O): an I-POS word after O becomes a B when B is
    likely enough ("jumps" 0.5 I / 0.3 B), is O when B is not ("qrst" 0.6 I / 0.02 B); and a strong I after
    a word that leans O pulls that word into the span ("xyzw" O 0.5 / B 0.45, then "jumps" I 0.9)."""
    tok = tiny_tokenizer()
    text = "xyzw jumps, abc's qrst"
    enc = tok.encode(text)
    rows = [{"O": 0.97} for _ in enc.offsets]
    for i in range(1, 5):  # "x|y|z|w"
        rows[i] = {"O": 0.5, "B-NEG": 0.45, "I-NEG": 0.01}
    rows[5] = {"I-NEG": 0.9, "O": 0.05}  # "jumps"
    rows[7:10] = [{"O": 0.2, "I-POS": 0.5, "B-POS": 0.3}] * 3  # "abc"
    rows[12:16] = [{"O": 0.38, "I-POS": 0.6, "B-POS": 0.005}] * 4  # "qrst"
    spans = decode_spans(_logits_from_probs(rows), enc.offsets, enc.special_tokens_mask, text)
    assert [(text[s:e], lab) for s, e, lab, _ in spans] == [("xyzw jumps", "negative"), ("abc", "positive")]


def test_span_f1_matches_on_normalised_surface_and_sentiment() -> None:
    gold = [EntityParagraph("Acme Inc. rose, Widget fell", ((0, 9, "positive"), (16, 22, "negative")))]
    pred = [[(0, 4, "positive", {}), (16, 22, "neutral", {})]]  # "Acme" == "Acme Inc." once normalised
    r = span_f1(gold, pred)
    assert r["span"]["f1"] == 1.0
    assert r["span_sentiment"]["tp"] == 1 and r["span_sentiment"]["fp"] == 1 and r["span_sentiment"]["fn"] == 1


def test_per_class_figures_split_the_span_sentiment_counts_by_sentiment() -> None:
    gold = [
        EntityParagraph("Acme Inc. rose, Widget fell", ((0, 9, "positive"), (16, 22, "negative"))),
        EntityParagraph("Gizmo held", ((0, 5, "neutral"),)),
    ]
    pred = [[(0, 4, "positive", {}), (16, 22, "neutral", {})], [(6, 10, "negative", {})]]
    per = span_f1_per_class(gold, pred)
    assert per["positive"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "tp": 1, "fp": 0, "fn": 0, "support": 1}
    assert (per["negative"]["tp"], per["negative"]["fp"], per["negative"]["fn"]) == (0, 1, 1)  # "held" is no entity
    assert (per["neutral"]["tp"], per["neutral"]["fp"], per["neutral"]["fn"]) == (0, 1, 1)  # Widget's wrong polarity
    micro = span_f1(gold, pred)["span_sentiment"]
    for k in ("tp", "fp", "fn"):
        assert sum(c[k] for c in per.values()) == micro[k]


@pytest.mark.parametrize("text", [*TEXTS, "https://t.co/x", "plain text", "a  b", "x https://t.co/y"])
def test_prepare_with_map_is_the_runtime_preparation_and_maps_back(text: str) -> None:
    prepared, where = prepare_with_map(text, ("strip_urls",))
    assert prepared == strip_urls(text)
    assert len(where) == len(prepared) + 1
    for i, ch in enumerate(prepared):
        assert (
            ch == text[where[i]]
            or (ch == " " and text[where[i]].isspace())
            or text[where[i] :].startswith(("http", "www"))
        ), (i, ch)
    for m in __import__("re").finditer(r"[A-Za-z]+", prepared):
        ((s, e, *_),) = map_spans([(m.start(), m.end(), "neutral", {})], where)
        assert text[s:e] == m.group()


# --- the three-head graph through exporter and runtime ---------------------------------------------------


def _three_head(out: Path, tag: str = "B-NEG", layers: tuple[int, ...] = (1, -1)) -> Path:
    """A tiny three-head model whose token head says ``tag`` for every token (bias), exported for real."""
    import torch

    from finsent.models.export import export_model_dir
    from finsent.models.labels import SENTIMENT_LABELS, TOPIC_LABELS
    from finsent.models.modeldir import ModelInfo
    from finsent.models.modeling import MultiTaskClassifier, build_encoder
    from finsent.models.testing import _tiny_config

    torch.manual_seed(0)
    model = MultiTaskClassifier(
        build_encoder(_tiny_config()),
        len(SENTIMENT_LABELS),
        len(TOPIC_LABELS),
        dropout=0.0,
        n_token_tags=len(TAGS),
        token_layers=layers,
        token_hidden=16,
    )
    with torch.no_grad():
        model.token_conv.weight.zero_()
        model.token_head.weight.zero_()
        model.token_head.bias.fill_(-5.0)
        model.token_head.bias[TAGS.index(tag)] = 5.0
    info = ModelInfo(
        "tiny-ent-auto",
        SENTIMENT_LABELS,
        TOPIC_LABELS,
        TINY_MAX_LENGTH,
        {"base_model": "random (tests only)", "num_heads": 2, "hidden_size": 32, "preprocess": ["strip_urls"]},
    )
    export_model_dir(model, tiny_tokenizer(), out, info, card="# tiny three-head model\n")
    return out


@pytest.fixture(scope="module")
def three_head_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _three_head(tmp_path_factory.mktemp("ent"))


def test_export_writes_token_logits_and_tags(three_head_dir: Path) -> None:
    import onnx

    graph = onnx.load(str(three_head_dir / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["sentiment_logits", "topic_logits", TOKEN_OUTPUT]
    labels = json.loads((three_head_dir / "labels.json").read_text())
    assert labels["token_tags"] == list(TAGS) and labels["token_layers"] == [1, -1] and labels["token_hidden"] == 16


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_runtime_spans_point_into_the_callers_text(three_head_dir: Path, tmp_path: Path, variant: str) -> None:
    """Every word becomes a negative model span; offsets index the text as given (links, spaces, accents, emoji)."""
    clf = Classifier.load(three_head_dir, variant=variant, cache_dir=tmp_path)
    assert TOKEN_OUTPUT in clf._outputs
    for text, pred in zip(TEXTS, clf.predict(TEXTS), strict=True):
        assert pred.entities, text
        for m in pred.entities:
            assert text[m.start : m.end] == m.text and m.text.strip() == m.text and "http" not in m.text
            if m.entity_id is None:  # unlinked: the model's own span and sentiment
                assert m.sentiment == "negative" and m.sentiment_probs["negative"] > 0.99


def test_titles_shift_spans_into_the_scored_text(three_head_dir: Path, tmp_path: Path) -> None:
    clf = Classifier.load(three_head_dir, variant="fp32", cache_dir=tmp_path)
    (pred,) = clf.predict(["gold falls"], titles=["oil rises"])
    scored = "oil rises\n\ngold falls"
    assert {scored[m.start : m.end] for m in pred.entities} >= {"oil", "gold"}


def test_truncated_text_has_spans_only_inside_the_token_window(three_head_dir: Path, tmp_path: Path) -> None:
    clf = Classifier.load(three_head_dir, variant="fp32", cache_dir=tmp_path)
    text = " ".join(f"w{i}" for i in range(200))  # far beyond the tiny model's 64 tokens
    (pred,) = clf.predict([text])
    assert pred.truncated
    assert pred.entities and max(m.end for m in pred.entities) < len(text) // 2
    assert all(text[m.start : m.end] == m.text for m in pred.entities)


def test_no_entity_tag_gives_no_model_spans(tmp_path: Path) -> None:
    d = _three_head(tmp_path / "o", tag="O", layers=(-1,))
    clf = Classifier.load(d, variant="fp32", cache_dir=tmp_path / "c")
    (pred,) = clf.predict(["widget corp falls after oil drops"])
    assert all(m.entity_id is not None for m in pred.entities)  # only gazetteer matches remain, if any


def test_three_head_int8_is_batch_independent_spans_included(three_head_dir: Path, tmp_path: Path) -> None:
    clf = Classifier.load(three_head_dir, variant="int8", cache_dir=tmp_path)
    texts = TEXTS * 4 + ["oil " * n for n in range(1, 12)]
    alone = [clf.predict([t])[0] for t in texts]
    together = clf.predict(texts)
    for a, b in zip(alone, together, strict=True):
        key = [(m.start, m.end, m.sentiment) for m in a.entities]
        assert key == [(m.start, m.end, m.sentiment) for m in b.entities]
        assert max(abs(a.sentiment_probs[k] - b.sentiment_probs[k]) for k in a.sentiment_probs) < 1e-4


def test_two_head_models_still_load_and_score(tmp_path: Path) -> None:
    d = make_tiny_model(tmp_path / "two")
    clf = Classifier.load(d, variant="fp32", cache_dir=tmp_path / "c")
    assert TOKEN_OUTPUT not in clf._outputs and clf.token_tags == ()
    (pred,) = clf.predict(["widget corp falls"])
    assert pred.sentiment in ("negative", "neutral", "positive")
    assert all(m.entity_id is not None for m in pred.entities)  # gazetteer only: no model spans


def test_train_entity_head_keeps_the_item_heads_exactly(tmp_path: Path) -> None:
    """The shipping training path on the tiny model: a three-head directory whose item outputs equal the parent's."""
    from finsent.models.train import EntityConfig, train_entity_head

    rows = []
    for i in range(12):
        text = f"widget corp shares rise {i} while acme falls after the deal"
        rows.append(
            {
                "content": text,
                "annotations": [
                    {"start": 0, "end": 11, "value": "widget corp", "label": "Positive"},
                    {"start": text.index("acme") + 1, "end": 0, "value": "acme", "label": "Negative"},  # shifted start
                ],
            }
        )
    data = tmp_path / "fe.json"
    data.write_text(json.dumps(rows))
    parent = make_tiny_model(tmp_path / "parent")
    out = tmp_path / "three"
    m = train_entity_head(
        EntityConfig(
            str(parent), str(out), str(data), token_layers=(1, -1), token_proj=16, token_hidden=16, epochs=3, lr=1e-2
        )
    )
    assert m["finentity"]["stats"]["shifted"] == 12 and m["finentity"]["held_out"] == 2
    assert {"span", "span_sentiment"} <= set(m["held_out"]) and len(m["history"]) == 3
    texts = ["widget corp shares rise", "acme falls after the deal", "oil up"]
    a = Classifier.load(parent, variant="fp32", cache_dir=tmp_path / "c", entities=False).predict(texts)
    b = Classifier.load(out, variant="fp32", cache_dir=tmp_path / "c", entities=False).predict(texts)
    for x, y in zip(a, b, strict=True):
        assert (x.sentiment, x.topic) == (y.sentiment, y.topic)
        assert max(abs(x.sentiment_probs[k] - y.sentiment_probs[k]) for k in x.sentiment_probs) < 1e-4
    from finsent.models.onnx_weights import load_from_onnx

    rebuilt = load_from_onnx(out)  # a registry version with an entity head can be rebuilt for retraining
    assert rebuilt.token_head is not None and rebuilt.token_config()["token_proj"] == 16


def _widget_finentity(tmp_path: Path) -> Path:
    """Ten FinEntity-format paragraphs, each with one positive "widget corp" span."""
    rows = [
        {
            "content": f"widget corp rose {i} and acme fell",
            "annotations": [{"start": 0, "value": "widget corp", "label": "positive"}],
        }
        for i in range(10)
    ]
    data = tmp_path / "fe.json"
    data.write_text(json.dumps(rows))
    return data


def test_mix_and_context_heads_export_and_rebuild_from_the_graph(tmp_path: Path) -> None:
    """A scalar-mix head with the text's pooled context round-trips: the graph's token logits equal PyTorch's, and
    the weights read back from the graph (retraining rebuilds from it) are the trained ones."""
    import torch

    from finsent.models.onnx_weights import load_from_onnx
    from finsent.models.train import EntityConfig, train_entity_head

    data = _widget_finentity(tmp_path)
    out = tmp_path / "mix"
    cfg = EntityConfig(
        str(make_tiny_model(tmp_path / "parent")), str(out), str(data), token_layers=(0, 1, -1), token_proj=8,
        token_hidden=8, token_mix=True, token_context=True, epochs=3, lr=1e-2, swa_epochs=2,
    )  # fmt: skip
    m = train_entity_head(cfg)
    assert m["history"][-1]["epoch"] == "mean of the last 2"
    labels = json.loads((out / "labels.json").read_text())
    assert labels["token_mix"] is True and labels["token_context"] is True
    rebuilt = load_from_onnx(out)
    assert rebuilt.token_mix_weight is not None and rebuilt.token_ctx is not None
    assert not torch.allclose(rebuilt.token_mix_weight, torch.full((3,), 1 / 3))  # trained, and read back
    ids = torch.tensor([[2, 7, 9, 11, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        want = rebuilt(ids, mask)[2].numpy()
    sess = __import__("onnxruntime").InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run([TOKEN_OUTPUT], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    assert np.abs(got - want)[0, :5].max() < 1e-2  # fp16-stored weights
    # a head retrained on this three-head model: one "-ent-" in its name, and the encoder's parent kept
    again_dir = tmp_path / "again"
    again = train_entity_head(EntityConfig(str(out), str(again_dir), str(data), token_layers=(1, -1), epochs=1))
    assert again["model_version"].count("-ent-") == 1 and again["parent"] == labels["entity_head"]["parent"]
    assert json.loads((again_dir / "labels.json").read_text())["entity_head"]["replaces"] == labels["model_version"]


# --- the CRF option: learned tag transitions ------------------------------------------------------------


def _transitions(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0, 1.5, (len(TAGS) + 2, len(TAGS))).astype(np.float32)


def test_crf_path_is_the_best_scoring_tag_sequence() -> None:
    """The numpy Viterbi against every one of the 7^4 paths, scored as the CRF trains them."""
    import itertools

    from finsent.models.entity_head import _crf_path

    rng = np.random.default_rng(3)
    n = len(TAGS)
    for _ in range(20):
        emit, tr = rng.normal(0, 2, (4, n)).astype(np.float32), _transitions(rng)

        def score(p: tuple[int, ...], emit: np.ndarray = emit, tr: np.ndarray = tr) -> float:
            s = tr[n, p[0]] + tr[n + 1, p[-1]] + sum(emit[t, p[t]] for t in range(len(p)))
            return float(s + sum(tr[p[t - 1], p[t]] for t in range(1, len(p))))

        best = max(itertools.product(range(n), repeat=4), key=score)
        assert tuple(_crf_path(emit, tr).tolist()) == best


def test_learned_transitions_decide_the_spans() -> None:
    """The same logits read two ways: without transitions (every head before the CRF option) as always; with an
    O -> I-POS transition of -inf-like cost, the I-POS word after O is no span start (a B there is too unlikely)."""
    tok = tiny_tokenizer()
    text = "xyzw jumps, abc's qrst"
    enc = tok.encode(text)
    rows = [{"O": 0.97} for _ in enc.offsets]
    rows[12:16] = [{"O": 0.38, "I-POS": 0.6, "B-POS": 0.005}] * 4  # "qrst"
    logits = _logits_from_probs(rows)
    free = np.zeros((len(TAGS) + 2, len(TAGS)), dtype=np.float32)
    got = decode_spans(logits, enc.offsets, enc.special_tokens_mask, text, free)
    assert [(text[s:e], lab) for s, e, lab, _ in got] == [("qrst", "positive")]  # I without B: lenient start
    strict = free.copy()
    strict[0, TAGS.index("I-POS")] = -50.0
    assert decode_spans(logits, enc.offsets, enc.special_tokens_mask, text, strict) == []
    assert decode_spans(logits, enc.offsets, enc.special_tokens_mask, text) == []  # today's BIO rule, unchanged


def test_crf_no_span_shortcut_is_exact() -> None:
    """Texts the shortcut answers with "no span" (each O logit more than twice the largest transition gain above
    the others) are exactly those the full Viterbi reads as all O, also just past the bound."""
    from finsent.models.entity_head import _crf_path

    rng = np.random.default_rng(5)
    tok = tiny_tokenizer()
    text = "widget corp shares rise while acme falls"
    enc = tok.encode(text)
    keep = [i for i, sp in enumerate(enc.special_tokens_mask) if not sp]
    for _ in range(50):
        tr = _transitions(rng)
        n = len(TAGS)
        gain = max(0.0, tr[:n].max() - tr[0, 0], tr[n].max() - tr[n, 0], tr[n + 1].max() - tr[n + 1, 0])
        logits = rng.normal(0, 1, (len(enc.ids), n)).astype(np.float32)
        logits[:, 0] = logits[:, 1:].max(axis=1) + 2 * gain + 1e-3
        assert decode_spans(logits, enc.offsets, enc.special_tokens_mask, text, tr) == []
        assert not _crf_path(logits[keep], tr).any()  # one piece per word here: the full path agrees


def test_transitions_round_trip_through_labels_json() -> None:
    from finsent.models.entity_head import TRANSITIONS_KEY, transitions_from_meta, transitions_to_meta

    tr = _transitions(np.random.default_rng(1))
    meta = json.loads(json.dumps({TRANSITIONS_KEY: transitions_to_meta(tr)}))
    assert np.array_equal(transitions_from_meta(meta), tr)
    assert transitions_from_meta({}) is None
    from finsent.core.errors import ModelError

    with pytest.raises(ModelError, match="re-export"):
        transitions_from_meta({TRANSITIONS_KEY: {"trans": [[0.0]], "start": [0.0], "end": [0.0]}})


def test_crf_head_trains_exports_and_the_runtime_decodes_with_its_transitions(tmp_path: Path) -> None:
    """token_crf: the learned transitions land in labels.json, the runtime reads them and its spans are
    decode_spans' with them; a head retrained without the CRF drops them (they belonged to the old head)."""
    from finsent.models.entity_head import TRANSITIONS_KEY, transitions_from_meta
    from finsent.models.train import EntityConfig, train_entity_head

    data = _widget_finentity(tmp_path)
    out = tmp_path / "crf"
    cfg = EntityConfig(
        str(make_tiny_model(tmp_path / "parent")), str(out), str(data), token_layers=(1, -1), token_proj=8,
        token_hidden=8, epochs=15, lr=3e-2, swa_epochs=2, token_crf=True,
    )  # fmt: skip
    train_entity_head(cfg)
    labels = json.loads((out / "labels.json").read_text())
    tr = transitions_from_meta(labels)
    assert tr is not None and np.abs(tr).max() > 0  # learned, not the zeros it started from
    clf = Classifier.load(out, variant="fp32", cache_dir=tmp_path / "c", entities=False)
    assert np.array_equal(clf._transitions, tr)
    texts = [f"widget corp rose {i} and acme fell" for i in range(3)] + ["oil and acme"]
    encs = [clf._tokenizer.encode(t) for t in texts]
    found = 0
    for text, enc, pred in zip(texts, encs, clf._score(texts), strict=True):  # the runtime's own spans
        ids = np.array([enc.ids])
        logits = clf._session.run([TOKEN_OUTPUT], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0]
        want = decode_spans(logits, enc.offsets, enc.special_tokens_mask, text, tr)
        assert [s[:3] for s in pred.entities] == [s[:3] for s in want]
        found += len(want)
    assert found  # the trained head finds spans, so the comparison is not vacuous
    again = tmp_path / "again"
    train_entity_head(EntityConfig(str(out), str(again), str(data), token_layers=(1, -1), epochs=1))
    assert TRANSITIONS_KEY not in json.loads((again / "labels.json").read_text())
