"""``finsent retrain``'s core: fine-tune, export, evaluate on the frozen set, register, gate.

One call, :func:`retrain`, does the whole scheduled job:

1. An empty registry first gets the current model (the shipped one, or ``FINSENT_MODEL_DIR``) as its
   first version and production, and the frozen evaluation set (:mod:`finsent.models.frozen`).
2. The model starts from the production version (its ONNX weights rebuilt in PyTorch by
   :mod:`finsent.models.onnx_weights`) or, with ``from_base``, from the pretrained encoder.
3. Training data: every configured CSV's train split plus the human labels outside the frozen 20%,
   with every frozen text removed; early stopping on the CSVs' validation split. The loop is
   :func:`finsent.models.train.fit` (CUDA when present, a tqdm progress bar), stopped by
   ``max_minutes`` (the learning rate decays to zero by then) or ``max_steps``.
4. Export through :func:`finsent.models.export.export_model_dir` (the same code path as
   ``finsent train``), then score production fp32 and the candidate's fp32 and int8 ONNX variants
   on the frozen set, through the runtime classifier that serves them.
5. Register the result as ``candidate`` with its metrics, card and the gate decision
   (:mod:`finsent.models.gate`); a passing candidate also becomes ``production``.

The entity head (issue 24): when production has one, the candidate has one too. With entity data (FinEntity
format: ``RetrainOptions.entities``, by default ``finentity/train.json`` in the data directory) it is trained
with the encoder and the item heads in the same loop (``fit``'s ``entities``), its hold-out frozen in the
registry the first time (:mod:`finsent.models.frozen_entities`) and never trained on; without data the head is
carried unchanged. The gate then judges the entity head's span+sentiment F1 on that frozen hold-out with the
item sets. A two-head production (every version from before the entity head) retrains as before.

Human labels come in as :class:`~finsent.models.frozen.HumanLabel` values: this module is below the
store, so the command layer reads the ``labels`` table and passes them in.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finsent.core.errors import InputError, ModelError
from finsent.models.data import LabelledSet, Splits, default_paths, make_splits
from finsent.models.frozen import (
    HumanLabel,
    exclude,
    fingerprint,
    keys_of,
    labels_as_sets,
    read_frozen,
    split_labels,
    write_frozen,
)
from finsent.models.frozen_entities import (
    FROZEN_ENTITIES_DIR,
    default_entity_data,
    entity_f1,
    held_out,
    read_frozen_entities,
    split_entity_data,
    write_frozen_entities,
)
from finsent.models.gate import EntityScores, decide, summary_lines
from finsent.models.modeldir import TOKENIZER_FILE, ModelInfo, read_model_info
from finsent.models.registry import ModelVersion, Registry, now_iso

if TYPE_CHECKING:
    from finsent.models.export import ExportReport
    from finsent.models.train import TrainConfig

log = logging.getLogger(__name__)
SEED_DIR = Path(__file__).resolve().parent / "seed"
_CHATTY_LOGGERS = (
    "fusion_utils",
    "fusion_base",
    "onnx_model",
    "onnx_model_bert",
    "fusion_skiplayernorm",
    "fusion_embedlayer",
    "fusion_attention",
    "fusion_gelu",
    "fusion_options",
    "optimizer",
)
VAL_CAP = 500  # validation texts per set: early stopping on CPU must not cost more than training


@dataclass
class RetrainOptions:
    data: dict[str, str] = field(default_factory=dict)  # set name -> CSV; empty: default_data()
    max_minutes: float = 60.0
    max_steps: int | None = None  # None: as many as the time allows; 0: no training (export the start model)
    from_base: bool = False
    base_model: str | None = None  # --from-base encoder directory; None: the MiniLM wheel
    epochs: float = 2.0
    batch_size: int = 32
    lr: float | None = None  # None: 5e-5 from production, 1e-4 from the base encoder
    head_lr: float | None = None
    seed: int = 13
    threads: int = 0
    tolerance: float = 0.005
    min_gain: float = 0.0
    int8_max_drop: float = 0.005
    cache_dir: str | None = None
    by: str = "finsent retrain"
    initial_model: str | None = None  # the first version of an empty registry; None: the shipped model
    work_dir: str | None = None  # keep the run (checkpoint, history) here; None: a temp dir, removed
    # FinEntity-format JSON for a three-head production's entity head; None: finentity/train.json in the data
    # directory when it is there; "": none (the entity head is carried unchanged)
    entities: str | None = None
    entity_batch_size: int = 16  # paragraphs per step, next to each batch of item texts


def default_data() -> dict[str, str]:
    """The three public sets under ../shared/data (or FINSENT_DATA_DIR) when present, the seed data otherwise."""
    paths = default_paths()
    if all(p.is_file() for p in paths.values()):
        return {k: str(v) for k, v in paths.items()}
    return {"seed_sentiment": str(SEED_DIR / "sentiment.csv"), "seed_topic": str(SEED_DIR / "topic.csv")}


def data_from_paths(paths: Sequence[str | Path]) -> dict[str, str]:
    """``--data a.csv b.csv``: each CSV a set named after its file (stem), made unique."""
    out: dict[str, str] = {}
    for p in paths:
        name = Path(p).stem
        n = 2
        while name in out:
            name, n = f"{Path(p).stem}_{n}", n + 1
        out[name] = str(p)
    return out


def ensure_first_version(registry: Registry, model_dir: str | Path | None, by: str) -> ModelVersion | None:
    """Register ``model_dir`` (default: the shipped model) as v0001 + production if the registry is empty."""
    from finsent.models import resolve_model_dir

    if registry.versions():
        return None
    src = resolve_model_dir(model_dir)
    return registry.register(src, source=f"initial ({src})", aliases=("production",), by=by, only_if_empty=True)


def ensure_frozen(registry: Registry, splits: Splits, data: dict[str, str]) -> tuple[dict[str, LabelledSet], dict]:
    """The registry's frozen slices, written from ``splits.test`` the first time (under the lock)."""
    found = read_frozen(registry.frozen_dir)
    if found is not None:
        return found
    with registry.lock():
        found = read_frozen(registry.frozen_dir)
        if found is not None:
            return found
        manifest = write_frozen(registry.frozen_dir, dict(splits.test), data, now_iso())
        log.info("frozen evaluation set created: %s", manifest["sets"])
    found = read_frozen(registry.frozen_dir)
    assert found is not None
    return found


@dataclass(frozen=True)
class TrainingData:
    train: dict[str, LabelledSet]
    val: dict[str, LabelledSet]
    frozen: dict[str, LabelledSet]  # stored slices + the frozen share of the human labels
    frozen_fingerprint: str
    data_fingerprint: str


def training_data(registry: Registry, data: dict[str, str], labels: Sequence[HumanLabel]) -> TrainingData:
    """Split the CSVs, fix (or read) the frozen set, and remove every frozen text from training and validation."""
    for name, path in data.items():
        if not Path(path).is_file():
            raise InputError(
                f"training set {name}: {path} does not exist",
                hint="give CSVs with --data (text,label or text,topic) or set FINSENT_DATA_DIR",
            )
    splits = make_splits({k: Path(v) for k, v in data.items()})
    stored, _manifest = ensure_frozen(registry, splits, data)
    label_train, label_frozen = split_labels(labels)
    frozen = {**stored, **labels_as_sets(label_frozen)}
    held = keys_of(frozen.values())
    train = {k: exclude(v, held) for k, v in splits.train.items()}
    for name, ds in labels_as_sets(label_train).items():
        train[name] = exclude(ds, held)
    val = {k: _cap(exclude(v, held), VAL_CAP) for k, v in splits.val.items()}
    train = {k: v for k, v in train.items() if len(v)}
    val = {k: v for k, v in val.items() if len(v)}
    if not train:
        raise InputError(
            "no training data left after removing the frozen evaluation set", hint="give more labelled CSVs with --data"
        )
    return TrainingData(train, val, frozen, fingerprint(frozen), fingerprint(train))


def _cap(ds: LabelledSet, n: int) -> LabelledSet:
    """A fixed random ``n`` of ``ds`` (not the first ``n``: a split keeps file order, and files may be sorted
    by label, so the head of one can hold only a few classes)."""
    if len(ds) <= n:
        return ds
    keep = sorted(random.Random(len(ds)).sample(range(len(ds)), n))
    return LabelledSet(ds.name, ds.task, [ds.texts[i] for i in keep], [ds.labels[i] for i in keep])


def _start_model(production: ModelVersion | None, opts: RetrainOptions, attn: str) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, extra labels.json keys) to fine-tune: production's weights or the base encoder.

    A production with an entity head gives a model with one either way: its own (trained) head, or from the
    base encoder a fresh head of the same shape, so a retrain never drops the capability."""
    from tokenizers import Tokenizer

    from finsent.models.labels import SENTIMENT_LABELS, TOPIC_LABELS
    from finsent.models.modeling import MultiTaskClassifier, load_pretrained_encoder, token_kwargs
    from finsent.models.onnx_weights import load_from_onnx
    from finsent.models.train import load_tokenizer

    if opts.from_base or production is None:
        encoder = load_pretrained_encoder(opts.base_model, attn)
        head = token_kwargs(read_model_info(production.path).extra) if production is not None else {}
        n_states = int(encoder.config.num_hidden_layers) + 1  # hidden_states: embeddings + one per layer
        if any(not -n_states <= i < n_states for i in head.get("token_layers", ())):
            raise ModelError(
                f"production {production.version if production else ''} has an entity head reading encoder layers "
                f"{list(head['token_layers'])}, which the base encoder ({n_states - 1} layers) lacks",
                hint="retrain from production (without --from-base) or give a base encoder of the same depth",
            )
        model = MultiTaskClassifier(encoder, len(SENTIMENT_LABELS), len(TOPIC_LABELS), **head)
        base_name = opts.base_model or "sentence-transformers/all-MiniLM-L6-v2"
        return model, load_tokenizer(opts.base_model), {"base_model": base_name, "preprocess": ["strip_urls"]}
    info = read_model_info(production.path)
    if list(info.sentiment) != list(SENTIMENT_LABELS) or list(info.topic) != list(TOPIC_LABELS):
        raise ModelError(
            f"production {production.version} has other label lists than this finsent", hint="retrain with --from-base"
        )
    model = load_from_onnx(production.path, attn)
    tok = Tokenizer.from_file(str(production.path / TOKENIZER_FILE))
    tok.no_padding()
    tok.no_truncation()
    extra = {k: info.extra[k] for k in ("base_model", "preprocess") if k in info.extra}
    return model, tok, extra


def _seed_all(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def evaluate_dir(model_dir: Path, variant: str, sets: dict[str, LabelledSet], cache_dir: str | None) -> dict:
    """Scores of one ONNX variant on every set (the runtime classifier; no per-text predictions kept)."""
    from finsent.models.evaluate import evaluate_set
    from finsent.models.runtime import Classifier

    clf = Classifier.load(model_dir, variant=variant, cache_dir=cache_dir)
    out = {}
    for name, ds in sets.items():
        r = evaluate_set(clf, ds)
        r.pop("pred")
        out[name] = r
    return out


@dataclass(frozen=True)
class EntityTraining:
    """The entity head's data for one retrain: the frozen hold-out (judged by the gate) and what is trained."""

    frozen: list[Any]  # EntityParagraph
    train: list[Any]
    source: str  # the FinEntity file, or "" when none was given (the head is carried, not trained)


def entity_training(registry: Registry, opts: RetrainOptions) -> EntityTraining:
    """Freeze the entity hold-out in the registry the first time (under its lock), and split the rest off."""
    from finsent.models.entity_head import read_finentity_spans

    frozen_dir = registry.root / FROZEN_ENTITIES_DIR
    path = default_entity_data() if opts.entities is None else (Path(opts.entities) if opts.entities else None)
    if path is not None and not path.is_file():
        raise InputError(
            f"entity data {path} does not exist",
            hint="give FinEntity-format JSON (a list of {content, annotations}) or leave entities unset",
        )
    found = read_frozen_entities(frozen_dir)
    if found is None and path is not None:
        with registry.lock():
            found = read_frozen_entities(frozen_dir)
            if found is None:
                manifest = write_frozen_entities(frozen_dir, held_out(path), str(path), now_iso())
                log.info("frozen entity set created: %s paragraphs", manifest["paragraphs"])
                found = read_frozen_entities(frozen_dir)
    frozen = found[0] if found else []
    if path is None:
        return EntityTraining(frozen, [], "")
    paragraphs, _stats = read_finentity_spans(path)
    return EntityTraining(frozen, split_entity_data(paragraphs, frozen), str(path))


def retrain(
    registry: Registry,
    opts: RetrainOptions,
    labels: Sequence[HumanLabel] = (),
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run one retrain; returns the ``--json`` result {"version", "parent", "promoted", "gate", "metrics", ...}."""
    import torch

    from finsent.models.train import hardware

    started = time.monotonic()
    for name in _CHATTY_LOGGERS:  # onnxruntime's graph optimiser logs every fusion at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    production = _production(registry, opts, progress)
    data = opts.data or default_data()
    td = training_data(registry, data, labels)
    progress(
        f"training sets (frozen texts removed): {', '.join(f'{k} {len(v)}' for k, v in td.train.items())}; "
        f"frozen set {td.frozen_fingerprint}: {', '.join(f'{k} {len(v)}' for k, v in td.frozen.items())}"
    )
    if opts.threads:
        torch.set_num_threads(opts.threads)
    _seed_all(opts.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start_from = "base encoder" if opts.from_base or production is None else production.version
    progress(f"fine-tuning from {start_from} on {device} ({hardware()})")
    work = Path(opts.work_dir) if opts.work_dir else Path(tempfile.mkdtemp(prefix="finsent-retrain-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        # eager attention exports cleanly (finalize does the same); sdpa trains faster
        model, tok, extra = _start_model(production, opts, "eager" if opts.max_steps == 0 else "sdpa")
        ent = _entity_data(registry, opts, model, progress)
        warm = not (opts.from_base or production is None)
        cfg = _train_config(opts, data, work, model, extra, warm)
        export_model, summary = _train(model, tok, td, cfg, ent, opts, device, work, progress)
        out_dir, report = _export(export_model, tok, production, extra, work, progress)
        scores = _score(out_dir, production, td, ent, opts)
        gate = _gate(scores, td, opts)
        minutes = (time.monotonic() - started) / 60
        metrics = _metrics(scores, ent, td, summary, cfg, device, start_from, labels, report)
        promote = gate["decision"] == "promote"
        parent = production.version if production else None
        card = retrain_card(report.model_version, parent, start_from, gate, metrics, minutes)
        mv = registry.register(
            out_dir,
            parent=parent,
            source="retrain",
            data_fingerprint=td.data_fingerprint,
            gate=gate,
            metrics=metrics,
            card=card,
            aliases=("candidate", "production") if promote else ("candidate",),
            by=opts.by,
        )
        assert mv is not None
    finally:
        if not opts.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    for line in summary_lines(gate):
        progress(line.replace("**", ""))
    progress(
        f"registered {mv.version} as candidate" + (" and production" if promote else f" (production stays {parent})")
    )
    return _result(mv, parent, promote, gate, scores, metrics, summary, td, started)


def _production(registry: Registry, opts: RetrainOptions, progress: Callable[[str], None]) -> ModelVersion | None:
    """The version to fine-tune (None: none, and ``--from-base``); an empty registry first gets the current
    model as its first version and production, so the first scheduled retrain has something to beat."""
    first = ensure_first_version(registry, opts.initial_model, opts.by)
    if first is not None:
        progress(f"registry {registry.root}: registered {first.version} ({first.meta['source']}) as production")
    production = registry.resolve("production")
    if production is None and not opts.from_base:
        raise ModelError(
            f"registry {registry.root} has no production version to fine-tune",
            hint="`finsent models promote VERSION` sets one, or retrain with --from-base",
        )
    return production


def _entity_data(
    registry: Registry, opts: RetrainOptions, model: Any, progress: Callable[[str], None]
) -> EntityTraining:
    """The entity head's data when the start model has one (none otherwise: a two-head model retrains as
    before), and a line saying whether the head is trained or carried."""
    ent = entity_training(registry, opts) if model.token_head is not None else EntityTraining([], [], "")
    if model.token_head is not None:
        progress(
            f"entity head: {len(ent.train)} paragraphs from {ent.source} trained with the item heads, "
            f"{len(ent.frozen)} frozen"
            if ent.train
            else f"entity head carried unchanged (no entity data); {len(ent.frozen)} frozen paragraphs"
        )
    return ent


def _train_config(
    opts: RetrainOptions, data: dict[str, str], work: Path, model: Any, extra: dict[str, Any], warm: bool
) -> TrainConfig:
    """``fit``'s TrainConfig: a warm start (from production) takes smaller learning rates than the base encoder."""
    from finsent.models.train import TrainConfig

    return TrainConfig(
        out_dir=str(work / "run"),
        data=data,
        base_model=opts.base_model if not warm else None,
        seed=opts.seed,
        epochs=opts.epochs,
        batch_size=opts.batch_size,
        lr=opts.lr or (5e-5 if warm else 1e-4),
        head_lr=opts.head_lr or (5e-4 if warm else 1e-3),
        max_length=min(96, int(model.encoder.config.max_position_embeddings) - 2),
        budget_minutes=opts.max_minutes,
        threads=opts.threads,
        preprocess=list(extra.get("preprocess", [])),
        max_steps=opts.max_steps or 0,
    )


def _train(
    model: Any,
    tok: Any,
    td: TrainingData,
    cfg: TrainConfig,
    ent: EntityTraining,
    opts: RetrainOptions,
    device: Any,
    work: Path,
    progress: Callable[[str], None],
) -> tuple[Any, dict[str, Any]]:
    """(the model to export, fit's summary): the best checkpoint of the run, or with ``--max-steps 0`` the
    start model untouched (a way to register the current weights through the same gate)."""
    from finsent.models.modeling import load_checkpoint
    from finsent.models.train import EntityData, encode_entity_examples, fit

    if opts.max_steps == 0:
        progress("--max-steps 0: no training, the start model is exported as it is")
        return model, {"steps": 0, "train_seconds": 0.0}
    model.to(device)
    entities = None
    if ent.train:
        max_len = min(128, int(model.encoder.config.max_position_embeddings) - 2)
        examples = encode_entity_examples(ent.train, tok, max_len, tuple(cfg.preprocess))
        entities = EntityData(examples, batch_size=opts.entity_batch_size)
    summary = fit(model, tok, td.train, td.val, cfg, work / "run", entities=entities)
    export_model, _meta = load_checkpoint(work / "run" / "best", attn_implementation="eager")
    return export_model, summary


def _export(
    export_model: Any,
    tok: Any,
    production: ModelVersion | None,
    extra: dict[str, Any],
    work: Path,
    progress: Callable[[str], None],
) -> tuple[Path, ExportReport]:
    """(model directory, export report): exported by ``finsent train``'s own code path, with production's
    label lists, so the candidate is served exactly as production is."""
    from finsent.models.export import export_model_dir

    export_model = export_model.to("cpu").eval()
    enc = export_model.encoder.config
    info = ModelInfo(
        f"finsent-retrain-{datetime.now(UTC).strftime('%Y%m%d')}-auto",
        tuple(read_model_info(production.path).sentiment) if production else _labels()[0],
        tuple(read_model_info(production.path).topic) if production else _labels()[1],
        min(128, int(enc.max_position_embeddings) - 2),
        {**extra, "num_heads": int(enc.num_attention_heads), "hidden_size": int(enc.hidden_size)},
    )
    out_dir = work / "model"
    report = export_model_dir(export_model, tok, out_dir, info)
    progress(f"exported {report.model_version}; scoring the frozen set")
    return out_dir, report


def _gate(scores: _Scores, td: TrainingData, opts: RetrainOptions) -> dict[str, Any]:
    """The promotion decision (:func:`finsent.models.gate.decide`), stamped with the frozen set it was made on."""
    gate = decide(
        scores.production_fp32,
        scores.candidate_fp32,
        scores.candidate_int8,
        tolerance=opts.tolerance,
        min_gain=opts.min_gain,
        int8_max_drop=opts.int8_max_drop,
        entities=scores.entities,
    )
    gate["frozen_fingerprint"] = td.frozen_fingerprint
    return gate


@dataclass(frozen=True)
class _Scores:
    """What the gate judges: each model's scores on the frozen sets (and the entity head's on its hold-out)."""

    candidate_fp32: dict[str, Any]
    candidate_int8: dict[str, Any]
    production_fp32: dict[str, Any] | None  # None: no production (a first --from-base retrain)
    entities: EntityScores | None  # None: no entity head, or nothing frozen for it


def _score(
    out_dir: Path, production: ModelVersion | None, td: TrainingData, ent: EntityTraining, opts: RetrainOptions
) -> _Scores:
    """Score the candidate (fp32 and int8) and production (fp32) on the frozen set, through the runtime
    classifier that serves them, so the gate judges what would be served."""
    cand_fp32 = evaluate_dir(out_dir, "fp32", td.frozen, opts.cache_dir)
    cand_int8 = evaluate_dir(out_dir, "int8", td.frozen, opts.cache_dir)
    prod_fp32 = evaluate_dir(production.path, "fp32", td.frozen, opts.cache_dir) if production else None
    entity_scores = None
    if ent.frozen:
        entity_scores = EntityScores(
            len(ent.frozen),
            entity_f1(production.path, "fp32", ent.frozen, opts.cache_dir) if production else None,
            entity_f1(out_dir, "fp32", ent.frozen, opts.cache_dir),
            entity_f1(out_dir, "int8", ent.frozen, opts.cache_dir),
        )
    return _Scores(cand_fp32, cand_int8, prod_fp32, entity_scores)


def _metrics(
    scores: _Scores,
    ent: EntityTraining,
    td: TrainingData,
    summary: dict[str, Any],
    cfg: TrainConfig,
    device: Any,
    start_from: str,
    labels: Sequence[HumanLabel],
    report: ExportReport,
) -> dict[str, Any]:
    """The version's metrics.json: frozen-set scores, the run (sizes, device, config), human labels, and
    how far the exported graphs are from the PyTorch model."""
    from finsent.models.train import hardware

    return {
        "frozen": {
            "candidate_fp32": scores.candidate_fp32,
            "candidate_int8": scores.candidate_int8,
            "production_fp32": scores.production_fp32,
        },
        "entities": _entity_metrics(ent, scores.entities),
        "frozen_fingerprint": td.frozen_fingerprint,
        "train": {
            **summary,
            "sizes": {k: len(v) for k, v in td.train.items()},
            "val_sizes": {k: len(v) for k, v in td.val.items()},
            "device": str(device),
            "hardware": hardware(),
            "start": start_from,
            "config": asdict(cfg),
        },
        "human_labels": {
            "total": len(labels),
            "frozen": sum(len(v) for k, v in td.frozen.items() if k.startswith("labels_")),
        },
        "max_abs_diff_vs_torch": {
            "fp32_graph": report.max_abs_diff_fp32,
            "fp16_storage_graph": report.max_abs_diff_stored,
        },
    }


def _result(
    mv: ModelVersion,
    parent: str | None,
    promote: bool,
    gate: dict[str, Any],
    scores: _Scores,
    metrics: dict[str, Any],
    summary: dict[str, Any],
    td: TrainingData,
    started: float,
) -> dict[str, Any]:
    """The ``--json`` result: the decision and each set's macro-F1 side by side (the full numbers are in
    the registry's metrics.json)."""
    cand_fp32, cand_int8, prod_fp32 = scores.candidate_fp32, scores.candidate_int8, scores.production_fp32
    return {
        "version": mv.version,
        "parent": parent,
        "promoted": promote,
        "gate": gate,
        "metrics": {
            name: {
                "candidate": cand_fp32[name]["macro_f1"],
                "production": prod_fp32[name]["macro_f1"] if prod_fp32 else None,
                "candidate_int8": cand_int8[name]["macro_f1"],
                "candidate_accuracy": cand_fp32[name]["accuracy"],
            }
            for name in cand_fp32
        },
        "minutes": round((time.monotonic() - started) / 60, 2),
        "steps": summary.get("steps", 0),
        "frozen_fingerprint": td.frozen_fingerprint,
        "data_fingerprint": td.data_fingerprint,
        "entities": metrics["entities"],
    }


def _entity_metrics(ent: EntityTraining, scores: EntityScores | None) -> dict[str, Any] | None:
    """The entity head's part of a version's metrics (None: neither model has one, or nothing is frozen)."""
    if scores is None:
        return None
    return {
        "metric": "span+sentiment micro-F1 on the frozen FinEntity paragraphs",
        "frozen_paragraphs": scores.n,
        "trained_paragraphs": len(ent.train),
        "source": ent.source,
        "candidate_fp32": scores.candidate_fp32,
        "candidate_int8": scores.candidate_int8,
        "production_fp32": scores.production,
    }


def _labels() -> tuple[tuple[str, ...], tuple[str, ...]]:
    from finsent.models.labels import SENTIMENT_LABELS, TOPIC_LABELS

    return tuple(SENTIMENT_LABELS), tuple(TOPIC_LABELS)


def retrain_card(
    export_version: str, parent: str | None, start: str, gate: dict[str, Any], metrics: dict[str, Any], minutes: float
) -> str:
    """The model card (README.md) of a retrained version: lineage, data, the gate and its numbers."""
    tr = metrics["train"]
    cfg = tr["config"]
    cap = f", at most {cfg['max_steps']} steps" if cfg["max_steps"] else ""
    lines = [
        f"# finsent retrain ({export_version})",
        "",
        "finsent's classifier (one encoder, a sentiment head and a topic head, ONNX), fine-tuned by "
        "`finsent retrain`. The registry version name is in `labels.json` (`model_version`) and `registry.json`.",
        "",
        "## Lineage and training",
        "",
        f"- Parent (production when it was trained): {parent or 'none'}; started from: {start}.",
        f"- Hardware: {tr['hardware']} ({tr['device']}).",
        f"- {tr.get('steps', 0)} steps of batch {cfg['batch_size']} in {tr.get('train_seconds', 0.0) / 60:.1f} min "
        f"(budget {cfg['budget_minutes']} min{cap}"
        f"); lr {cfg['lr']} encoder / {cfg['head_lr']} heads; whole retrain {minutes:.1f} min.",
        "- Training texts per set (every frozen text removed): "
        + ", ".join(f"{k} {v}" for k, v in tr["sizes"].items())
        + ".",
        f"- Human labels: {metrics['human_labels']['total']} in total, {metrics['human_labels']['frozen']} of them "
        "in the frozen set (a fixed hash-selected 20%), the rest trained on.",
        *_entity_card_lines(metrics.get("entities")),
        "",
        "## Promotion gate (frozen evaluation set " + gate.get("frozen_fingerprint", "") + ")",
        "",
        *summary_lines(gate),
        "",
        "## Frozen-set metrics",
        "",
        "| set | model | n | accuracy | macro-F1 |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for key, label in (
        ("production_fp32", "production fp32"),
        ("candidate_fp32", "candidate fp32"),
        ("candidate_int8", "candidate int8"),
    ):
        for name, r in (metrics["frozen"].get(key) or {}).items():
            lines.append(f"| {name} | {label} | {r['n']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} |")
    lines += [
        "",
        "Licence: trained on the configured sets; with Financial PhraseBank (CC BY-NC-SA 3.0) in them the "
        "weights are for non-commercial use.",
        "",
    ]
    return "\n".join(lines)


def _entity_card_lines(e: dict[str, Any] | None) -> list[str]:
    if not e:
        return []
    trained = (
        f"trained with the item heads on {e['trained_paragraphs']} FinEntity-format paragraphs ({e['source']})"
        if e["trained_paragraphs"]
        else "carried unchanged (no entity data)"
    )
    return [
        f"- Entity head: {trained}; judged on {e['frozen_paragraphs']} frozen paragraphs never trained on "
        "(FinEntity, Tang et al. 2023, ODC-BY 1.0)."
    ]


def write_result(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
