"""``finsent retrain`` and the gate with the entity head (issue 24), on tiny models.

A three-head production is retrained with its entity head (trained with the item heads on FinEntity-format
data whose hold-out is frozen in the registry and never trained on), the gate judges the entity head's
span+sentiment F1 next to the item sets, and two-head versions in the same registry still load.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from finsent.models import entity_head as eh
from finsent.models.data import norm_key
from finsent.models.entity_head import TOKEN_OUTPUT, read_finentity_spans
from finsent.models.frozen_entities import FROZEN_ENTITIES_DIR, read_frozen_entities
from finsent.models.gate import ENTITY_SET, EntityScores, decide, summary_lines
from finsent.models.registry import Registry
from finsent.models.retrain import RetrainOptions, retrain
from finsent.models.runtime import Classifier
from finsent.models.testing import make_tiny_model
from tests.retrain_helpers import synthetic_sets

# paragraphs of the tiny model's words: the first name is praised, the second criticised
_NAMES = ["bank", "oil", "gold", "dollar", "euro", "bond"]


def finentity_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        good, bad = _NAMES[i % len(_NAMES)], _NAMES[(i + 2) % len(_NAMES)]
        text = f"{good} shares jump after strong earnings {i} while {bad} falls on weak sales"
        rows.append(
            {
                "content": text,
                "annotations": [
                    {"start": 0, "end": len(good), "value": good, "label": "Positive"},
                    {"start": text.index(f" {bad} ") + 1, "end": 0, "value": bad, "label": "Negative"},
                ],
            }
        )
    return rows


def three_head_tiny(tmp_path: Path, data: Path) -> Path:
    """A tiny three-head model directory, made by the shipping path (train_entity_head), briefly trained."""
    from finsent.models.train import EntityConfig, train_entity_head

    parent = make_tiny_model(tmp_path / "parent")
    out = tmp_path / "three"
    train_entity_head(
        EntityConfig(str(parent), str(out), str(data), token_layers=(1, -1), token_hidden=16, epochs=1, lr=1e-3)
    )
    return out


def _opts(tmp_path: Path, sets: list[Path], **kw) -> RetrainOptions:
    return RetrainOptions(
        data={p.stem: str(p) for p in sets},
        max_steps=kw.pop("max_steps", 40),
        epochs=5,
        batch_size=16,
        lr=1e-3,
        head_lr=1e-2,
        threads=1,
        cache_dir=str(tmp_path / "cache"),
        **kw,
    )


def test_retrain_trains_the_entity_head_and_the_gate_judges_it(tmp_path: Path) -> None:
    fe = tmp_path / "fe.json"
    fe.write_text(json.dumps(finentity_rows(40)))
    sets = synthetic_sets(tmp_path / "data")
    three = three_head_tiny(tmp_path, fe)
    reg = Registry(tmp_path / "reg")
    lines: list[str] = []
    r = retrain(reg, _opts(tmp_path, sets, initial_model=str(three), entities=str(fe)), progress=lines.append)

    # the hold-out is frozen in the registry, and none of its paragraphs was trained on
    frozen, manifest = read_frozen_entities(reg.root / FROZEN_ENTITIES_DIR)
    assert len(frozen) == manifest["paragraphs"] == 8  # 20% of 40
    e = r["entities"]
    assert e["frozen_paragraphs"] == 8 and e["trained_paragraphs"] == 32
    all_paragraphs, _ = read_finentity_spans(fe)
    assert {norm_key(p.text) for p in frozen} <= {norm_key(p.text) for p in all_paragraphs}
    assert any("32 paragraphs" in line and "8 frozen" in line for line in lines)

    # the candidate keeps its entity head, and it learned: better than production's barely-trained head
    mv = reg.get(r["version"])
    labels = json.loads((mv.path / "labels.json").read_text())
    assert labels["token_tags"] and labels["token_layers"] == [1, -1]
    clf = Classifier.load(mv.path, variant="int8", cache_dir=tmp_path / "cache", entities=False)
    assert TOKEN_OUTPUT in clf._outputs
    assert e["candidate_fp32"] > e["production_fp32"] + 0.2, e
    assert abs(e["candidate_fp32"] - e["candidate_int8"]) <= 0.05

    # the gate has the entity set next to the item sets, and the card and `models show` lines say so
    row = r["gate"]["sets"][ENTITY_SET]
    assert row["metric"] == "span_sentiment_f1" and row["n"] == 8
    assert row["candidate_macro_f1"] == e["candidate_fp32"] and row["delta"] > 0.2
    card = (mv.path / "README.md").read_text()
    assert f"| {ENTITY_SET} | entities | 8 | span_sentiment_f1 |" in card and "FinEntity" in card

    # retrained again without entity data: the head is carried, and still judged on the frozen set
    r2 = retrain(reg, _opts(tmp_path, sets, max_steps=2, entities=""), progress=lines.append)
    assert r2["entities"]["trained_paragraphs"] == 0 and r2["entities"]["frozen_paragraphs"] == 8
    assert ENTITY_SET in r2["gate"]["sets"] and r2["gate"]["sets"][ENTITY_SET]["production_macro_f1"] is not None
    assert any("carried unchanged" in line for line in lines)

    # the two-head parent in another registry version still loads and scores
    first = reg.versions()[0]
    assert json.loads((first.path / "labels.json").read_text()).get("token_tags")  # v0001 is the three-head
    two = reg.register(make_tiny_model(tmp_path / "two"), source="old two-head")
    two_clf = Classifier.load(two.path, variant="int8", cache_dir=tmp_path / "cache", entities=False)
    assert TOKEN_OUTPUT not in two_clf._outputs and two_clf.predict(["bank shares jump"])[0].sentiment


def test_a_two_head_production_retrains_as_before_whatever_entity_data(tmp_path: Path) -> None:
    fe = tmp_path / "fe.json"
    fe.write_text(json.dumps(finentity_rows(10)))
    reg = Registry(tmp_path / "reg")
    opts = _opts(tmp_path, synthetic_sets(tmp_path / "data"), max_steps=3, entities=str(fe))
    opts.initial_model = str(make_tiny_model(tmp_path / "tiny"))
    r = retrain(reg, opts, progress=lambda _line: None)
    assert r["entities"] is None and ENTITY_SET not in r["gate"]["sets"]
    assert not (reg.root / FROZEN_ENTITIES_DIR).exists()
    assert "token_tags" not in json.loads((reg.get(r["version"]).path / "labels.json").read_text())


def test_missing_entity_data_is_a_clear_error(tmp_path: Path) -> None:
    from finsent.core.errors import InputError

    fe = tmp_path / "fe.json"
    fe.write_text(json.dumps(finentity_rows(10)))
    three = three_head_tiny(tmp_path, fe)
    opts = _opts(tmp_path, synthetic_sets(tmp_path / "data"), initial_model=str(three), entities=str(tmp_path / "no"))
    with pytest.raises(InputError, match="entity data .* does not exist"):
        retrain(Registry(tmp_path / "reg"), opts, progress=lambda _line: None)


_ITEMS = {"fpb": {"task": "sentiment", "n": 100, "accuracy": 0.85, "macro_f1": 0.84}}


def _gate(entities: EntityScores | None, production: dict | None = _ITEMS) -> dict:
    return decide(production, _ITEMS, _ITEMS, tolerance=0.005, min_gain=0.0, int8_max_drop=0.005, entities=entities)


def test_gate_rules_on_the_entity_set() -> None:
    # the item sets are unchanged: only the entity set can make a gain or a loss
    better = _gate(EntityScores(147, 0.74, 0.78, 0.779))
    assert better["decision"] == "promote" and any(ENTITY_SET in r for r in better["reasons"])
    assert better["sets"][ENTITY_SET]["delta"] == pytest.approx(0.04)
    worse = _gate(EntityScores(147, 0.78, 0.76, 0.76))
    assert worse["decision"] == "reject" and any(f"{ENTITY_SET}: span+sentiment F1" in r for r in worse["reasons"])
    lossy_int8 = _gate(EntityScores(147, 0.74, 0.78, 0.70))
    assert lossy_int8["decision"] == "reject" and any("int8 span+sentiment F1" in r for r in lossy_int8["reasons"])
    dropped = _gate(EntityScores(147, 0.74, None, None))
    assert dropped["decision"] == "reject" and any("candidate has none" in r for r in dropped["reasons"])
    new_head = _gate(EntityScores(147, None, 0.70, 0.70), production=None)  # first version: int8 rule only
    assert new_head["decision"] == "promote"
    two_heads = _gate(None)  # no entity head anywhere: judged on the item sets as before (no gain: reject)
    assert ENTITY_SET not in two_heads["sets"] and two_heads["decision"] == "reject"
    table = "\n".join(summary_lines(better))
    assert f"| {ENTITY_SET} | entities | 147 | span_sentiment_f1 | 0.7400 | 0.7800 | +0.0400 |" in table
    assert "| fpb | sentiment | 100 | macro_f1 |" in table


def test_gates_recorded_before_the_entity_set_still_print() -> None:
    old = {
        "decision": "promote",
        "reasons": ["x"],
        "sets": {"fpb": {"task": "sentiment", "n": 10, "candidate_macro_f1": 0.5, "candidate_accuracy": 0.5}},
        "thresholds": {"tolerance": 0.005, "min_gain": 0.0, "int8_max_drop": 0.005},
    }
    assert "| fpb | sentiment | 10 | macro_f1 | - | 0.5000 | - | - |" in "\n".join(summary_lines(old))


def test_train_joint_fine_tunes_all_three_heads_and_scores_the_export(tmp_path: Path) -> None:
    """The joint fine-tune (models.train.train_joint) on the tiny model: a three-head directory out, its entity
    head better than the start's, every score measured on the exported graph, fp32 and int8."""
    from finsent.models.train import JointConfig, train_joint

    fe = tmp_path / "fe.json"
    fe.write_text(json.dumps(finentity_rows(40)))
    start = three_head_tiny(tmp_path, fe)
    start_labels = json.loads((start / "labels.json").read_text())  # as if a CRF head: transitions beside it
    start_labels[eh.TRANSITIONS_KEY] = eh.transitions_to_meta(np.ones((len(eh.TAGS) + 2, len(eh.TAGS))))
    (start / "labels.json").write_text(json.dumps(start_labels))
    sets = synthetic_sets(tmp_path / "data")
    m = train_joint(
        JointConfig(
            str(start),
            str(tmp_path / "run"),
            str(fe),
            entity_epochs=10,
            entity_batch_size=8,
            batch_size=8,
            lr=1e-3,
            head_lr=1e-3,
            token_head_lr=1e-2,
            threads=1,
            data={p.stem: str(p) for p in sets},
        )
    )
    assert m["finentity"]["train"] == 32 and m["finentity"]["held_out"] == 8 and m["train"]["steps"] == 40
    labels = json.loads((tmp_path / "run" / "model" / "labels.json").read_text())
    assert labels["token_tags"] and labels["model_version"].startswith("tiny-random-joint-")
    assert eh.TRANSITIONS_KEY not in labels  # the joint loss has no CRF term: the old transitions no longer fit
    fp32, int8 = m["test"]["fp32"], m["test"]["int8"]
    assert set(fp32) == {"sent", "topic", "entity_span_f1", "entity_span_sentiment_f1"}
    assert fp32["entity_span_sentiment_f1"] >= 0.9 and abs(fp32["entity_span_f1"] - int8["entity_span_f1"]) <= 0.05
