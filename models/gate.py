"""The promotion gate: may a retrained candidate replace production? Pure logic, no I/O.

Rules (thresholds are settings, ``FINSENT_GATE_*``), each judged on every frozen set separately
(FPB, TFNS and Topic are different domains: a gain on one must not hide a loss on another):

1. **No regression**: on no frozen set is the candidate's fp32 macro-F1 lower than production's by
   more than ``tolerance``.
2. **Some gain**: on at least one frozen set it is higher by more than ``min_gain``.
3. **int8 fidelity**: on every frozen set the candidate's int8 accuracy trails its own fp32
   accuracy by at most ``int8_max_drop`` (the CPU serves int8; the README's 0.5-point allowance is
   on accuracy).

The entity head (issue 24) is one more frozen set, ``finentity``: its metric is the span+sentiment
micro-F1 on the registry's frozen FinEntity paragraphs (:mod:`finsent.models.frozen_entities`), judged by
the same three rules (its int8 rule on that F1). A candidate without an entity head when production has
one is rejected: retraining must not drop a capability the serving model has. Two-head versions have no
such set and are judged as before.

A candidate without a production to compare with (a registry whose production alias is unset)
only has to pass rule 3. The decision is ``"promote"`` or ``"reject"`` with every reason spelled out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Scores = dict[str, dict[str, Any]]  # set name -> {"task", "n", "accuracy", "macro_f1", ...}
#: the frozen set name and metric of the entity head
ENTITY_SET = "finentity"
ENTITY_METRIC = "span_sentiment_f1"


@dataclass(frozen=True)
class EntityScores:
    """The entity head's span+sentiment micro-F1 on the frozen FinEntity paragraphs; ``None`` where the
    model has no entity head (a two-head version)."""

    n: int
    production: float | None
    candidate_fp32: float | None
    candidate_int8: float | None


def decide(
    production: Scores | None,
    candidate_fp32: Scores,
    candidate_int8: Scores,
    *,
    tolerance: float,
    min_gain: float,
    int8_max_drop: float,
    entities: EntityScores | None = None,
) -> dict[str, Any]:
    """The gate decision: {"decision", "reasons", "sets": {name: numbers}, "thresholds"}.

    ``entities``: the entity head's frozen-set scores (``None``: no frozen FinEntity set, or neither model
    has an entity head); its row in ``sets`` has ``"metric": "span_sentiment_f1"``, the item rows ``macro_f1``.
    """
    reasons: list[str] = []
    sets: dict[str, dict[str, Any]] = {}
    gained: list[str] = []
    failed = False
    for name, cand in candidate_fp32.items():
        if not cand.get("n"):
            continue
        row: dict[str, Any] = {
            "task": cand.get("task"),
            "n": cand["n"],
            "metric": "macro_f1",
            "candidate_macro_f1": cand["macro_f1"],
            "candidate_accuracy": cand["accuracy"],
        }
        q = candidate_int8.get(name)
        if q is not None:
            drop = cand["accuracy"] - q["accuracy"]
            row.update(int8_accuracy=q["accuracy"], int8_macro_f1=q["macro_f1"], int8_accuracy_drop=drop)
            if drop > int8_max_drop + 1e-12:
                failed = True
                reasons.append(
                    f"{name}: int8 accuracy {q['accuracy']:.4f} trails fp32 {cand['accuracy']:.4f} "
                    f"by {drop:.4f} > {int8_max_drop}"
                )
        prod = (production or {}).get(name)
        if prod is not None:
            delta = cand["macro_f1"] - prod["macro_f1"]
            row.update(production_macro_f1=prod["macro_f1"], production_accuracy=prod["accuracy"], delta=delta)
            if delta < -tolerance - 1e-12:
                failed = True
                reasons.append(
                    f"{name}: macro-F1 {cand['macro_f1']:.4f} vs production {prod['macro_f1']:.4f} "
                    f"({delta:+.4f}) is worse by more than the tolerance {tolerance}"
                )
            elif delta > min_gain:
                gained.append(name)
        sets[name] = row
    if entities is not None and entities.n:
        failed |= _judge_entities(entities, sets, reasons, gained, tolerance, min_gain, int8_max_drop)
    if production is not None:
        if gained:
            reasons.append(f"better than production on {', '.join(gained)} (gain > {min_gain})")
        else:
            failed = True
            reasons.append(f"better than production on no frozen set (no macro-F1 gain > {min_gain})")
    else:
        reasons.append("no production version to compare with: only the int8 check applies")
    if not sets:
        failed = True
        reasons.append("the frozen evaluation set is empty: nothing to judge the candidate on")
    return {
        "decision": "reject" if failed else "promote",
        "reasons": reasons,
        "sets": sets,
        "thresholds": {"tolerance": tolerance, "min_gain": min_gain, "int8_max_drop": int8_max_drop},
    }


def _judge_entities(
    e: EntityScores,
    sets: dict[str, dict[str, Any]],
    reasons: list[str],
    gained: list[str],
    tolerance: float,
    min_gain: float,
    int8_max_drop: float,
) -> bool:
    """The three rules on the entity F1; adds the ``finentity`` row and reasons. True when it fails."""
    name = ENTITY_SET
    if e.candidate_fp32 is None:
        if e.production is None:
            return False
        reasons.append(
            f"{name}: production has an entity head (span+sentiment F1 {e.production:.4f}) and the candidate has none"
        )
        sets[name] = {"task": "entities", "n": e.n, "metric": ENTITY_METRIC, "production_macro_f1": e.production}
        return True
    failed = False
    row: dict[str, Any] = {
        "task": "entities",
        "n": e.n,
        "metric": ENTITY_METRIC,
        "candidate_macro_f1": e.candidate_fp32,
    }
    if e.candidate_int8 is not None:
        drop = e.candidate_fp32 - e.candidate_int8
        row.update(int8_macro_f1=e.candidate_int8, int8_accuracy_drop=drop)
        if drop > int8_max_drop + 1e-12:
            failed = True
            reasons.append(
                f"{name}: int8 span+sentiment F1 {e.candidate_int8:.4f} trails fp32 {e.candidate_fp32:.4f} "
                f"by {drop:.4f} > {int8_max_drop}"
            )
    if e.production is not None:
        delta = e.candidate_fp32 - e.production
        row.update(production_macro_f1=e.production, delta=delta)
        if delta < -tolerance - 1e-12:
            failed = True
            reasons.append(
                f"{name}: span+sentiment F1 {e.candidate_fp32:.4f} vs production {e.production:.4f} "
                f"({delta:+.4f}) is worse by more than the tolerance {tolerance}"
            )
        elif delta > min_gain:
            gained.append(name)
    sets[name] = row
    return failed


def summary_lines(gate: dict[str, Any]) -> list[str]:
    """The decision and its numbers as lines for the terminal and the model card (a Markdown table)."""
    lines = [
        f"gate decision: **{gate['decision']}**",
        "",
        "| frozen set | task | n | metric | production | candidate | delta | int8 drop |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in gate["sets"].items():
        prod = f"{r['production_macro_f1']:.4f}" if "production_macro_f1" in r else "-"
        cand = f"{r['candidate_macro_f1']:.4f}" if "candidate_macro_f1" in r else "-"
        delta = f"{r['delta']:+.4f}" if "delta" in r else "-"
        drop = f"{r['int8_accuracy_drop']:+.4f}" if "int8_accuracy_drop" in r else "-"
        metric = r.get("metric", "macro_f1")  # gates recorded before the entity set had no metric column
        lines.append(f"| {name} | {r['task']} | {r['n']} | {metric} | {prod} | {cand} | {delta} | {drop} |")
    t = gate["thresholds"]
    lines += [
        "",
        f"thresholds: tolerance {t['tolerance']}, min gain {t['min_gain']}, int8 max drop {t['int8_max_drop']}",
        "",
    ]
    lines += [f"- {r}" for r in gate["reasons"]]
    return lines
