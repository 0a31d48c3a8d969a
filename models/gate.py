"""The promotion gate: may a retrained candidate replace production? Pure logic, no I/O.

Rules (thresholds are settings, ``FINSENT_GATE_*``), each judged on every frozen set separately
(FPB, TFNS and Topic are different domains: a gain on one must not hide a loss on another):

1. **No regression**: on no frozen set is the candidate's fp32 macro-F1 lower than production's by
   more than ``tolerance``.
2. **Some gain**: on at least one frozen set it is higher by more than ``min_gain``.
3. **int8 fidelity**: on every frozen set the candidate's int8 accuracy trails its own fp32
   accuracy by at most ``int8_max_drop`` (the CPU serves int8; the README's 0.5-point allowance is
   on accuracy).

A candidate without a production to compare with (a registry whose production alias is unset)
only has to pass rule 3. The decision is ``"promote"`` or ``"reject"`` with every reason spelled out.
"""

from __future__ import annotations

from typing import Any

Scores = dict[str, dict[str, Any]]  # set name -> {"task", "n", "accuracy", "macro_f1", ...}


def decide(
    production: Scores | None,
    candidate_fp32: Scores,
    candidate_int8: Scores,
    *,
    tolerance: float,
    min_gain: float,
    int8_max_drop: float,
) -> dict[str, Any]:
    """The gate decision: {"decision", "reasons", "sets": {name: numbers}, "thresholds"}."""
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


def summary_lines(gate: dict[str, Any]) -> list[str]:
    """The decision and its numbers as lines for the terminal and the model card (a Markdown table)."""
    lines = [
        f"gate decision: **{gate['decision']}**",
        "",
        "| frozen set | task | n | production macro-F1 | candidate macro-F1 | delta | int8 acc. drop |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in gate["sets"].items():
        prod = f"{r['production_macro_f1']:.4f}" if "production_macro_f1" in r else "-"
        delta = f"{r['delta']:+.4f}" if "delta" in r else "-"
        drop = f"{r['int8_accuracy_drop']:+.4f}" if "int8_accuracy_drop" in r else "-"
        lines.append(f"| {name} | {r['task']} | {r['n']} | {prod} | {r['candidate_macro_f1']:.4f} | {delta} | {drop} |")
    t = gate["thresholds"]
    lines += [
        "",
        f"thresholds: tolerance {t['tolerance']}, min gain {t['min_gain']}, int8 max drop {t['int8_max_drop']}",
        "",
    ]
    lines += [f"- {r}" for r in gate["reasons"]]
    return lines
