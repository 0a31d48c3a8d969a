"""The entity head's data and decoding: FinEntity paragraphs -> BIO tags with polarity -> character spans.

The token head tags every WordPiece token with one of :data:`TAGS` (``O``, ``B-NEG``, ``I-NEG``, ``B-NEU``,
``I-NEU``, ``B-POS``, ``I-POS``): a span and its sentiment in one label, the scheme FinEntity's own FinBERT-CRF
baseline uses (0.84 micro-F1), and one that costs one linear layer over tokens the encoder has already computed,
so the hot path keeps one forward pass per batch.

Only ``numpy`` is imported at module level: the runtime decodes spans with :func:`decode_spans` (no torch).

* **Data** (:func:`read_finentity_spans`): FinEntity's ``start``/``end`` are shifted by a few characters on about
  3% of spans while ``value`` is right, so each span is realigned to the occurrence of ``value`` nearest
  ``start`` (:func:`realign`); a span whose ``value`` is nowhere in the paragraph is dropped and counted.
* **Split** (:func:`finentity_split`): a fixed 80/20 split of the paragraphs by seed; the 20% is never trained
  on and is what the model card's entity figures are measured on.
* **Text preparation** (:func:`prepare_with_map`): the runtime scores prepared text (links stripped, spaces
  squeezed); the map from prepared to original characters puts spans back on the caller's text.
* **Decoding** (:func:`decode_spans`): a span starts at a ``B-`` tag (or an ``I-`` tag after ``O``, the lenient
  reading) and runs over the following ``I-`` tokens and WordPiece continuations; its sentiment probabilities are
  the mean over its tokens of each polarity's B+I probability. Character offsets come from the tokenizer's
  offset mapping, so they index the scored text exactly (non-ASCII and emoji included). Text cut by the
  model's token limit has no tokens, so an entity there is not found; an entity cut in the middle by the
  limit ends at the last token the model saw.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finsent.core.errors import ModelError
from finsent.models.textprep import STRIP_URLS

#: token tags, in the token head's output order
TAGS: tuple[str, ...] = ("O", "B-NEG", "I-NEG", "B-NEU", "I-NEU", "B-POS", "I-POS")
#: polarity code in a tag -> the sentiment label the rest of finsent uses
POLARITY: dict[str, str] = {"NEG": "negative", "NEU": "neutral", "POS": "positive"}
SENTIMENTS: tuple[str, ...] = ("negative", "neutral", "positive")
#: FinEntity's labels -> polarity codes
FINENTITY_LABELS: dict[str, str] = {"negative": "NEG", "neutral": "NEU", "positive": "POS"}
#: name of the token head's output in the ONNX graph ([batch, sequence, len(TAGS)] logits)
TOKEN_OUTPUT = "token_logits"
SPLIT_SEED = 13
IGNORE = -100
#: labels.json key of a CRF-trained head's learned tag transitions (:func:`transitions_from_meta`)
TRANSITIONS_KEY = "token_transitions"

#: (start, end, sentiment, probabilities): what :func:`finsent.models.linking.extract_entities` takes
Span = tuple[int, int, str, dict[str, float]]


@dataclass(frozen=True)
class EntityParagraph:
    text: str
    #: (start, end, sentiment) character spans into ``text``, realigned to ``value``
    spans: tuple[tuple[int, int, str], ...]


def realign(text: str, value: str, start: int, window: int = 40) -> int:
    """Where ``value`` starts in ``text``: ``start`` if it is there, else the occurrence nearest ``start``
    (searched within ``window`` characters first, then anywhere); -1 when ``value`` does not occur."""
    if text[start : start + len(value)] == value:
        return start
    found = [m.start() for m in re.finditer(re.escape(value), text)]
    if not found:
        return -1
    near = [f for f in found if abs(f - start) <= window]
    return min(near or found, key=lambda f: abs(f - start))


def read_finentity_spans(path: str | Path) -> tuple[list[EntityParagraph], dict[str, int]]:
    """FinEntity-format paragraphs with realigned spans, and counts (``shifted``, ``dropped``, ``spans``)."""
    data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    out: list[EntityParagraph] = []
    stats = {"spans": 0, "shifted": 0, "dropped": 0, "overlapping": 0}
    for para in data:
        text = para["content"]
        spans: list[tuple[int, int, str]] = []
        for ann in para.get("annotations", []):
            value, label = ann["value"], str(ann["label"]).strip().lower()
            if label not in FINENTITY_LABELS or not value.strip():
                stats["dropped"] += 1
                continue
            stats["spans"] += 1
            start = realign(text, value, int(ann.get("start", 0)))
            if start < 0:
                stats["dropped"] += 1
                continue
            if start != ann.get("start"):
                stats["shifted"] += 1
            spans.append((start, start + len(value), POLARITY[FINENTITY_LABELS[label]]))
        spans.sort()
        kept: list[tuple[int, int, str]] = []
        for s in spans:  # an overlapping or repeated annotation keeps the first
            if kept and s[0] < kept[-1][1]:
                stats["overlapping"] += 1
                continue
            kept.append(s)
        out.append(EntityParagraph(text, tuple(kept)))
    return out, stats


def finentity_split(paragraphs: Sequence[EntityParagraph], seed: int = SPLIT_SEED, test: float = 0.2):
    """``(train, test)``: a fixed shuffle of the paragraphs by ``seed``; the last ``test`` share is held out."""
    idx = list(range(len(paragraphs)))
    random.Random(seed).shuffle(idx)
    n_test = int(round(len(idx) * test))
    held = set(idx[:n_test])
    return ([p for i, p in enumerate(paragraphs) if i not in held], [p for i, p in enumerate(paragraphs) if i in held])


def token_tags(
    offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int, str]], special: Sequence[int]
) -> list[int]:
    """The tag index of each token: special tokens get :data:`IGNORE`, tokens inside a span ``B-``/``I-``."""
    code = {v: k for k, v in POLARITY.items()}
    tags = [IGNORE if sp else 0 for sp in special]
    for s, e, sentiment in spans:
        first = True
        for i, (a, b) in enumerate(offsets):
            if special[i] or b <= s or a >= e:
                continue
            tags[i] = TAGS.index(("B-" if first else "I-") + code[sentiment])
            first = False
    return tags


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


_LOG6 = float(np.log(6.0))
#: tag probabilities [tokens, len(TAGS)] @ this -> P(O), P(any B-), P(any I-)
_TO_BIO = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 0], [0, 0, 1], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
#: tag probabilities @ this -> each polarity's B+I probability (SENTIMENTS order)
_TO_POLARITY = np.array([[0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]], dtype=np.float32)


def _word_starts(offsets: Sequence[tuple[int, int]], special: Sequence[int], text: str) -> list[int]:
    """Where each word starts, as positions among the non-special tokens. A piece is inside a word when it
    touches the previous piece and both characters at the seam are letters or digits; punctuation ("J.P.",
    "Tesla's") is a word of its own. Why words: a span never starts or ends inside one ("Tripad|visor" and
    "Reu|ters" were half-words when pieces were decoded one by one)."""
    keep = [i for i, sp in enumerate(special) if not sp]
    starts = [0]
    for k in range(1, len(keep)):
        i, j = keep[k], keep[k - 1]
        a = offsets[i][0]
        if not (
            j == i - 1 and 0 < a == offsets[j][1] and a < len(text) and text[a].isalnum() and text[a - 1].isalnum()
        ):
            starts.append(k)
    return starts


def _bio_path(emit: Sequence[Sequence[float]]) -> list[int]:
    """The best ``O``/``B``/``I`` (0/1/2) sequence for per-word log-probabilities ``emit`` under the BIO rule
    (``I`` only after ``B`` or ``I``): Viterbi with transition scores 0 or -inf, which reduces to ``O`` and
    ``B`` following the best previous state and ``I`` the better of the previous ``B`` and ``I``. Ties go to
    ``O``, then ``B``, so the path is a pure function of the scores (determinism)."""
    o, b, i = emit[0][0], emit[0][1], float("-inf")
    back: list[tuple[int, bool]] = []  # per step: the best previous state, and whether I came from B
    for eo, eb, ei in emit[1:]:
        best = 0 if o >= b and o >= i else (1 if b >= i else 2)
        m = (o, b, i)[best]
        from_b = b >= i
        o, b, i = m + eo, m + eb, (b if from_b else i) + ei
        back.append((best, from_b))
    state = 0 if o >= b and o >= i else (1 if b >= i else 2)
    path = [state]
    for best, from_b in reversed(back):
        state = best if state != 2 else (1 if from_b else 2)
        path.append(state)
    path.reverse()
    return path


def transitions_from_meta(extra: dict) -> np.ndarray | None:
    """A CRF-trained head's tag transitions from labels.json (``extra[TRANSITIONS_KEY]``) as one float32 array
    ``[len(TAGS) + 2, len(TAGS)]``: rows ``0..6`` score ``from -> to``, row 7 the first tag, row 8 the last.
    ``None`` for a head without them (every head before the CRF option), which decodes as it always has."""
    raw = extra.get(TRANSITIONS_KEY)
    if not raw:
        return None
    n = len(TAGS)
    arr = np.asarray([*raw["trans"], raw["start"], raw["end"]], dtype=np.float32)
    if arr.shape != (n + 2, n) or not np.isfinite(arr).all():
        raise ModelError(
            f"labels.json {TRANSITIONS_KEY}: expected a {n}x{n} 'trans' and {n}-long 'start'/'end' of finite "
            "numbers; re-export the model directory (finsent.models.train)"
        )
    return arr


def transitions_to_meta(transitions: np.ndarray) -> dict[str, list]:
    """The labels.json form of :func:`transitions_from_meta`'s array (plain lists, rounded to float32)."""
    arr = np.asarray(transitions, dtype=np.float32)
    n = len(TAGS)
    return {
        "trans": [[float(x) for x in row] for row in arr[:n]],
        "start": [float(x) for x in arr[n]],
        "end": [float(x) for x in arr[n + 1]],
    }


def _crf_path(emit: np.ndarray, transitions: np.ndarray) -> np.ndarray:
    """The best tag sequence (Viterbi) for per-word tag scores ``emit`` ``[words, len(TAGS)]`` under learned
    ``transitions`` (:func:`transitions_from_meta`). Ties go to the lower tag index (numpy's argmax takes the
    first maximum), so the path is a pure function of the scores (determinism)."""
    n_tags = len(TAGS)
    trans, start, end = transitions[:n_tags], transitions[n_tags], transitions[n_tags + 1]
    cols = np.arange(n_tags)
    score = start + emit[0]
    back = np.zeros((len(emit), n_tags), dtype=np.int64)
    for t in range(1, len(emit)):
        cand = score[:, None] + trans
        back[t] = cand.argmax(axis=0)
        score = cand[back[t], cols] + emit[t]
    state = int((score + end).argmax())
    path = np.empty(len(emit), dtype=np.int64)
    path[-1] = state
    for t in range(len(emit) - 1, 0, -1):
        state = int(back[t, state])
        path[t - 1] = state
    return path


def decode_spans(
    logits: np.ndarray,
    offsets: Sequence[tuple[int, int]],
    special: Sequence[int],
    text: str,
    transitions: np.ndarray | None = None,
) -> list[Span]:
    """Character spans ``(start, end, sentiment, probs)`` from one text's token logits ``[tokens, len(TAGS)]``.

    ``offsets``/``special``: the tokenizer's offset mapping and special-token mask for the same tokens;
    spans index ``text``, the string that was tokenised.

    Each word's ``O``/``B``/``I`` probabilities are the mean over its pieces of ``P(O)``, the three ``B-`` tags
    summed and the three ``I-`` tags summed; :func:`_bio_path` picks the best BIO-valid word sequence; a span
    is a ``B`` word and the ``I`` words after it (a ``B`` word glued to the span, as in "J.P.", extends it),
    and its sentiment is the mean over its tokens of each polarity's B+I probability. Why, against the
    greedy per-token argmax before: the polarity split no longer hides an entity (O 0.4, B-NEG 0.3,
    B-POS 0.3 is an entity), and an ``I`` tag needs a ``B`` before it. Chosen on a validation split of the
    training paragraphs (a head trained on the other 470) and checked once on FinEntity's held-out
    paragraphs: models/README.md, "Entity head".

    ``transitions`` (a head trained with the CRF loss, :func:`transitions_from_meta`): each word's score for a
    tag is the mean of its pieces' logits (what the CRF was trained on) and the word tags are the Viterbi
    path under the learned transitions; spans and their sentiment are then read from the path as above.
    """
    logits = np.asarray(logits, dtype=np.float32)
    n = len(logits)
    if not n:
        return []
    if transitions is not None:
        return _decode_crf(logits, offsets, special, text, np.asarray(transitions, dtype=np.float32))
    # the hot path, most texts: P(O) > 1/2 for every token ([CLS]/[SEP] at the ends aside), checked without a
    # softmax (each other logit more than log 6 below O's), means every word "O" is the one best path
    body = logits[1 if special[0] else 0 : n - 1 if special[n - 1] else n]
    if (body[:, 1:] < body[:, :1] - _LOG6).all():
        return []
    keep = np.flatnonzero(~np.asarray(special, dtype=bool))
    if not len(keep):
        return []
    kept = logits[keep]
    probs = _softmax(kept)
    if (probs[:, 0] > 0.5).all():  # the same rule, exactly
        return []
    starts = _word_starts(offsets, special, text)
    bio = probs @ _TO_BIO
    sizes = np.diff(np.append(starts, len(keep)))
    word = np.add.reduceat(bio, starts, axis=0) / sizes[:, None]
    greedy = word.argmax(axis=1)
    if ((greedy == 2) & (np.append(0, greedy[:-1]) == 0)).any():  # an I after O: the constrained best path
        path = np.asarray(_bio_path(np.log(np.maximum(word, 1e-12)).tolist()))
    else:  # the unconstrained best is BIO-valid, so it is the constrained best too
        path = greedy
    return _read_spans(path, probs, keep, starts, sizes, offsets, text)


def _decode_crf(
    logits: np.ndarray, offsets: Sequence[tuple[int, int]], special: Sequence[int], text: str, transitions: np.ndarray
) -> list[Span]:
    """:func:`decode_spans` for a head with learned transitions."""
    keep = np.flatnonzero(~np.asarray(special, dtype=bool))
    if not len(keep):
        return []
    kept = logits[keep]
    # the hot path: every piece's O logit more than 2*D above each other tag's, where D is the most any
    # transition, start or end score gains over staying O, makes the all-O path strictly the best one (each
    # non-O word gains less on its emission than it can lose on its two transitions), so no span: exact
    n_tags = len(TAGS)
    gain = max(
        0.0,
        float(transitions[:n_tags].max() - transitions[0, 0]),
        float(transitions[n_tags].max() - transitions[n_tags, 0]),
        float(transitions[n_tags + 1].max() - transitions[n_tags + 1, 0]),
    )
    if (kept[:, 1:] < kept[:, :1] - 2 * gain).all():
        return []
    starts = _word_starts(offsets, special, text)
    sizes = np.diff(np.append(starts, len(keep)))
    emit = np.add.reduceat(kept, starts, axis=0) / sizes[:, None]
    tags = _crf_path(emit, transitions)
    path = np.where(tags == 0, 0, np.where(tags % 2 == 1, 1, 2))  # O / any B- / any I-
    return _read_spans(path, _softmax(kept), keep, starts, sizes, offsets, text)


def _read_spans(
    path: np.ndarray,
    probs: np.ndarray,
    keep: np.ndarray,
    starts: Sequence[int],
    sizes: np.ndarray,
    offsets: Sequence[tuple[int, int]],
    text: str,
) -> list[Span]:
    """Spans from a word-level ``O``/``B``/``I`` (0/1/2) path over the non-special tokens ``keep`` with tag
    probabilities ``probs``: a ``B`` word and the ``I`` words after it (a glued ``B`` word extends the span),
    its sentiment the mean over its tokens of each polarity's B+I probability."""
    pol_tok = probs @ _TO_POLARITY
    first, last = int(keep[0]), int(keep[-1])
    offs = offsets[first : last + 1] if last - first + 1 == len(keep) else [offsets[int(j)] for j in keep]
    spans: list[Span] = []
    cur: list[int] = []  # the open span's word indices

    def close() -> None:
        if not cur:
            return
        lo, hi = starts[cur[0]], starts[cur[-1]] + int(sizes[cur[-1]])
        pol = pol_tok[lo:hi].sum(axis=0)  # the mean over the span's tokens, normalised
        pol = pol / pol.sum()
        start, end = offs[lo][0], offs[hi - 1][1]
        if end > start and text[start:end].strip():
            label = SENTIMENTS[int(pol.argmax())]
            spans.append((int(start), int(end), label, {k: float(v) for k, v in zip(SENTIMENTS, pol, strict=True)}))
        cur.clear()

    for w in np.flatnonzero(path).tolist():
        if cur and cur[-1] == w - 1 and (path[w] == 2 or offs[starts[w]][0] == offs[starts[w] - 1][1]):
            cur.append(w)  # I, or a B word glued to the span's last piece ("J.P."): extend
        else:
            close()
            cur.append(w)
    close()
    return spans


def prepare_with_map(original: str, steps: Sequence[str]) -> tuple[str, list[int]]:
    """What :func:`finsent.models.textprep.prepare` makes of ``original``, and for each character of the result
    the index of the character of ``original`` it came from, plus ``len(original)`` at the end (one past the last).

    The model sees the prepared text (links dropped, whitespace squeezed), so the token offsets of a model span
    index the prepared text, while :class:`~finsent.core.events.EntityMention` offsets index the scored text:
    :func:`map_spans` maps a span ``[s, e)`` back with ``(where[s], where[e - 1] + 1)``. The one copy of this
    mapping (the runtime, training and ``finsent eval`` use it; ``linking`` had a second one).
    """
    text = original
    if STRIP_URLS not in steps:
        return text, list(range(len(text) + 1))
    from finsent.models.textprep import _SPACES, _URL

    # textprep's own substitutions, replayed on (text, map): each replaced run keeps the index of its first
    # character; list slices keep it fast (the runtime maps every text the model found an entity in)
    where = list(range(len(text)))
    for pattern in (_URL, _SPACES):
        pieces: list[str] = []
        index: list[int] = []
        pos = 0
        for m in pattern.finditer(text):
            pieces += (text[pos : m.start()], " ")
            index += where[pos : m.start()]
            index.append(where[m.start()])
            pos = m.end()
        if not pieces:  # no match: nothing to replace
            continue
        pieces.append(text[pos:])
        index += where[pos:]
        text, where = "".join(pieces), index
    lo = len(text) - len(text.lstrip())
    hi = len(text.rstrip())
    if lo >= hi:  # nothing but links: textprep keeps the text as it is
        return original, list(range(len(original) + 1))
    return text[lo:hi], where[lo:hi] + [len(original)]


def map_spans(spans: Sequence[Span], where: Sequence[int]) -> list[Span]:
    """Spans over a prepared text -> spans over the original text (``where`` from :func:`prepare_with_map`)."""
    out = []
    for s, e, label, probs in spans:
        out.append((where[s], where[e - 1] + 1, label, probs))
    return out


def span_f1(gold: Sequence[EntityParagraph], predicted: Sequence[Sequence[Span]]) -> dict[str, dict[str, float]]:
    """Span and span+sentiment micro P/R/F1, matched per paragraph on the normalised surface text (the rule of
    ``finsent eval`` on FinEntity files: :func:`finsent.models.linking.normalise_name`)."""
    from finsent.models.linking import normalise_name

    span = [0, 0, 0]
    full = [0, 0, 0]
    for para, pred in zip(gold, predicted, strict=True):
        g = {(normalise_name(para.text[s:e]), lab) for s, e, lab in para.spans}
        p = {(normalise_name(para.text[s:e]), lab) for s, e, lab, _ in pred}
        gs, ps = {x for x, _ in g}, {x for x, _ in p}
        for c, a, b in ((span, gs, ps), (full, g, p)):
            c[0] += len(a & b)
            c[1] += len(b - a)
            c[2] += len(a - b)

    return {"span": _prf(*span), "span_sentiment": _prf(*full)}


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    pr = tp / (tp + fp) if tp + fp else 0.0
    rc = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * pr * rc / (pr + rc) if pr + rc else 0.0
    return {"precision": round(pr, 4), "recall": round(rc, 4), "f1": round(f1, 4), "tp": tp, "fp": fp, "fn": fn}


def span_f1_per_class(
    gold: Sequence[EntityParagraph], predicted: Sequence[Sequence[Span]]
) -> dict[str, dict[str, float]]:
    """Span + sentiment P/R/F1 per sentiment (the model card's per-class figures), matched as :func:`span_f1`
    matches: a gold ``(surface, s)`` is a true positive of class ``s`` when the model predicted the same
    normalised surface with sentiment ``s``; a predicted ``(surface, s)`` that is not gold is a false positive
    of ``s`` (whether the surface is an entity with another sentiment or no entity at all). Summed over the
    classes, tp/fp/fn are :func:`span_f1`'s ``span_sentiment`` counts; each class adds ``support`` (gold count)."""
    from finsent.models.linking import normalise_name

    counts = {s: [0, 0, 0] for s in SENTIMENTS}
    for para, pred in zip(gold, predicted, strict=True):
        g = {(normalise_name(para.text[s:e]), lab) for s, e, lab in para.spans}
        p = {(normalise_name(para.text[s:e]), lab) for s, e, lab, _ in pred}
        for _, lab in g & p:
            counts[lab][0] += 1
        for _, lab in p - g:
            counts[lab][1] += 1
        for _, lab in g - p:
            counts[lab][2] += 1
    return {s: {**_prf(*c), "support": c[0] + c[2]} for s, c in counts.items()}


__all__ = [
    "FINENTITY_LABELS",
    "IGNORE",
    "POLARITY",
    "SENTIMENTS",
    "SPLIT_SEED",
    "Span",
    "TAGS",
    "TOKEN_OUTPUT",
    "EntityParagraph",
    "decode_spans",
    "transitions_from_meta",
    "transitions_to_meta",
    "finentity_split",
    "map_spans",
    "prepare_with_map",
    "read_finentity_spans",
    "realign",
    "span_f1",
    "span_f1_per_class",
    "token_tags",
]
