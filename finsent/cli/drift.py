"""``finsent drift``: the drift report of the production model, for people and for scripts (``--json OUT``).

The figures and the advice are explained in :mod:`finsent.stream.drift`; a running worker exports the
same figures as ``finsent_drift_*`` gauges (:mod:`finsent.stream.drift_agent`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from finsent.cli.tree import Subcommands
from finsent.core.argtypes import parse_duration
from finsent.core.errors import InputError
from finsent.core.jsonout import add_json_option, emit_json, to_stdout
from finsent.core.settings import Settings

_WORKER_HINT = (
    "a running worker exports the same figures as the finsent_drift_* gauges on its /metrics "
    "(every FINSENT_DRIFT_INTERVAL_S); or stop the process that holds the embedded store"
)


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def render_text(doc: dict[str, Any]) -> str:
    """The report for a terminal (from its JSON form)."""
    w, r = doc["window"], doc["reference"]
    lines = [
        f"model {doc['model_version'] or '(none: nothing stored in the window)'} ({doc['version_source']})",
        f"window    {w['start']} .. {w['end']}: {w['items']} items, mean confidence "
        f"{_fmt(w['mean_confidence'])}, low-confidence share {_fmt(w['low_confidence_ratio'], '.1%')}",
        f"reference {r['start']} .. {r['end']}: {r['items']} items, mean confidence "
        f"{_fmt(r['mean_confidence'])}, low-confidence share {_fmt(r['low_confidence_ratio'], '.1%')}",
    ]
    for task, value in doc["psi"].items():
        lines.append(f"PSI {task:<9} {_fmt(value)}  ({doc['psi_band'][task]})")
    lines.append(
        f"confidence shift {_fmt(doc['confidence_shift'], '+.3f')}, low-confidence share shift "
        f"{_fmt(doc['low_confidence_shift'], '+.3f')}"
    )
    if doc["retrain_advised"]:
        lines.append("retrain advised: " + "; ".join(doc["reasons"]))
    elif doc["enough_data"]:
        lines.append("no retrain advised: every figure is within its threshold")
    else:
        lines.append("no verdict")
    lines += [f"note: {n}" for n in doc["notes"]]
    return "\n".join(lines)


def run_drift(args: argparse.Namespace, settings: Settings) -> int:
    from finsent.cli.labels import opened_store
    from finsent.stream.drift import drift_report

    if args.model_version is not None and not args.model_version.strip():
        raise InputError("finsent drift: --model-version is empty", hint="`finsent models list` shows the versions")
    with opened_store(settings, "drift", hint=_WORKER_HINT) as store:
        report = drift_report(
            store, settings, window=args.window, reference=args.reference, model_version=args.model_version
        )
    doc = report.to_json()
    emit_json(args.json, doc)
    if to_stdout(args.json):
        return 0
    print(render_text(doc))
    sys.stdout.flush()
    return 0


DRIFT_DESCRIPTION = (
    "Compare the production model's predictions over the recent --window with the --reference period "
    "just before it (by ingestion time): the population stability index (PSI) of the sentiment and topic "
    "label distributions, PSI = sum (w - r) ln(w / r) over the labels' shares with empty shares set to "
    "1e-4 (below 0.1 no real shift, 0.1-0.25 moderate, from 0.25 large); the shift in mean confidence "
    "(top sentiment probability); the share of low-confidence items. Says whether a retrain is advised "
    "and why; thresholds are the FINSENT_DRIFT_* settings. The model is the registry's production "
    "version, else the one that scored most of the window. Exit status 0 either way: read "
    "retrain_advised in the JSON. A running worker exports the same figures as finsent_drift_* gauges.\n\n"
    "examples:\n"
    "  finsent drift\n"
    "  finsent drift --window 6h --reference 3d\n"
    "  finsent drift --json drift.json && jq .retrain_advised drift.json"
)


def register(sub: Subcommands) -> None:
    p = sub.leaf(
        "drift",
        run_drift,
        help="has the model gone stale? PSI of its label distributions, confidence shift, retrain advice",
        description=DRIFT_DESCRIPTION,
    )
    p.add_argument(
        "--window",
        type=parse_duration,
        default=None,
        metavar="DURATION",
        help="the recent period (default FINSENT_DRIFT_WINDOW_S, 24h)",
    )
    p.add_argument(
        "--reference",
        type=parse_duration,
        default=None,
        metavar="DURATION",
        help="the period before the window it is compared with (default FINSENT_DRIFT_REFERENCE_S, 7d)",
    )
    p.add_argument("--model-version", metavar="V", help="judge this model version instead of the production one")
    add_json_option(p, "the report")
