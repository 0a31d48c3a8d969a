"""The runtime classifier: a model directory in, labels + probabilities for both tasks out.

Only onnxruntime, tokenizers and numpy are imported here (no torch, no transformers), so the
stream worker starts fast and installs small.

Behaviour that callers rely on:

* **Thread safety.** ``predict`` may be called from several executor threads at once.
  ``InferenceSession.run`` is thread-safe; the tokenizer is configured once at load and only
  read afterwards, and encoding is serialised by a lock anyway (it is a small share of the time).
* **Speed.** A call's texts are tokenised together, sorted by token length and cut into batches
  of at most ``batch_size``, each padded only to its own longest text, then put back into the
  caller's order. On CPU the cut points minimise padding plus per-call cost
  (:mod:`finsent.models.batching`); on a GPU batches are full.
* **Text preparation** (:mod:`finsent.models.textprep`, e.g. dropping links) follows the steps the
  model was trained with, as listed in its ``labels.json``.
* **Long text** is cut to ``max_chars`` characters before tokenising and to the model's
  ``max_length`` tokens; such predictions carry ``truncated=True``.
* **Title and body** (``predict(texts, titles=...)``): an item with a title is scored as
  ``title + "\n\n" + text`` (:func:`scored_text`), so the headline, what a reader sees first, is always inside
  the model's token window and a bland first paragraph no longer outvotes it; the entities' offsets are
  into that same string.
* **Entities** (``Prediction.entities``): the entity linker (:mod:`finsent.models.linking`) runs over each
  scored text (up to ``max_chars``, not only the model's token window) after the model; it is not cached with
  the prediction, because two texts that share a cache key can differ in their offsets. ``entities=False`` at
  load turns it off.
* **Bad input.** A non-string raises ``TypeError`` and an empty or whitespace-only string raises
  ``ValueError``, both naming the index: there is nothing to classify, and a made-up "neutral"
  would be indistinguishable from a real one in the store (the stream worker already
  dead-letters such items as ``empty_text`` before they get here). Emoji-only or non-English
  text is scored like any other text (mostly ``[UNK]`` tokens; expect a low-confidence result).
* **Threads.** onnxruntime's intra-op pool does not spin-wait by default here
  (``session.intra_op.allow_spinning=0``, ``spinning=True`` / FINSENT_MODEL_SPINNING to turn it back on):
  on two shared cores an idle-spinning pool thread takes CPU from the worker's event loop, the broker and
  the store, and from every other session in the process (measured: bench/RESULTS.md, "Model").
* **Repeated texts** (re-posts, syndicated headlines) can be answered from an LRU cache of recent
  predictions (``text_cache_size``, FINSENT_MODEL_CACHE_SIZE; 0 = off, the default), keyed by the prepared
  text with runs of spaces/tabs/newlines collapsed -- a key only when the tokenizer gives such texts the
  same tokens (probed at load), so a cached answer is one the model gives for that text.
* **Provider.** CUDAExecutionProvider when onnxruntime-gpu sees a GPU, CPU otherwise; the choice
  is logged and exposed as ``Classifier.provider``. ``variant="auto"`` means fp16 on CUDA and
  int8 on CPU.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finsent.core.errors import ModelError
from finsent.core.events import EntityMention
from finsent.models.batching import CPU_CALL_OVERHEAD_TOKENS, length_batches
from finsent.models.entity_head import (
    TOKEN_OUTPUT,
    Span,
    decode_spans,
    map_spans,
    prepare_with_map,
    transitions_from_meta,
)
from finsent.models.modeldir import (
    INPUT_NAMES,
    MODEL_FILE,
    OUTPUT_NAMES,
    TOKENIZER_FILE,
    ModelInfo,
    check_model_dir,
    read_model_info,
)
from finsent.models.textprep import check_steps, prepare

log = logging.getLogger(__name__)

VARIANT_CHOICES: tuple[str, ...] = ("auto", "fp32", "int8", "fp16")
DEFAULT_MAX_CHARS = 20_000


@dataclass(frozen=True, slots=True)
class Prediction:
    """Both heads' verdict on one text."""

    sentiment: str
    sentiment_probs: dict[str, float]
    topic: str
    topic_prob: float
    truncated: bool
    #: who the text is about (one per entity, most relevant first); offsets into :func:`scored_text`
    entities: tuple[EntityMention, ...] = ()


def scored_text(text: str, title: str | None = None) -> tuple[str, int]:
    """The string a titled item is scored as, and the title's length in it (0: no title).

    ``title + "\\n\\n" + text`` when the title has any non-space character, else ``text`` unchanged.
    """
    if title is None or not title.strip():
        return text, 0
    return f"{title}\n\n{text}", len(title)


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


_WHITESPACE = re.compile(r"[ \t\n\r]+")


class TextCache:
    """A thread-safe LRU of recent predictions, keyed by text. ``capacity`` 0 stores nothing."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("text cache size must be >= 0")
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[str, Prediction] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Prediction | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                self.misses += 1
            else:
                self.hits += 1
                self._items.move_to_end(key)
            return hit

    def put(self, key: str, value: Prediction) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def session_options(threads: int = 0, spinning: bool = False) -> object:
    """The onnxruntime session options every finsent session uses (measured choices, bench/RESULTS.md "Model").

    All graph optimisations (EXTENDED measured no faster), sequential execution with one inter-op
    thread (the graph is one chain), ``threads`` intra-op threads (0 = onnxruntime's default, all
    cores), and no spin-waiting unless ``spinning``.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = max(0, int(threads))
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
    return opts


def predict_at_once(classifier: Classifier, batches: Sequence[Sequence[str]], calls: int) -> list[Prediction]:
    """``classifier.predict`` over ``batches``, ``calls`` of them at once (as the worker's model calls run),
    predictions in input order. The benchmarks and the demo measure the model this way."""
    if calls <= 1:
        return [p for b in batches for p in classifier.predict(list(b))]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=calls, thread_name_prefix="finsent-calls") as pool:
        return [p for part in pool.map(lambda b: classifier.predict(list(b)), batches) for p in part]


def _cuda_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


class Classifier:
    """A loaded model. Build with :meth:`Classifier.load`; call :meth:`predict`."""

    def __init__(
        self,
        session: object,
        tokenizer: object,
        info: ModelInfo,
        model_dir: Path,
        variant: str,
        provider: str,
        batch_size: int = 32,
        max_chars: int = DEFAULT_MAX_CHARS,
        text_cache_size: int = 0,
        linker: object | None = None,
    ) -> None:
        self._session = session
        self.linker = linker
        self._tokenizer = tokenizer
        self._encode_lock = threading.Lock()
        self.info = info
        self.model_dir = model_dir
        self.variant = variant
        self.provider = provider
        self.version: str = info.model_version
        self.batch_size = batch_size
        self.max_chars = max_chars
        self.sentiment_labels: tuple[str, ...] = info.sentiment
        self.topic_labels: tuple[str, ...] = info.topic
        self._pad_id = int(tokenizer.token_to_id("[PAD]") or 0)  # type: ignore[attr-defined]
        self._input_names = [i.name for i in session.get_inputs()]  # type: ignore[attr-defined]
        self.preprocess: tuple[str, ...] = check_steps(info.extra.get("preprocess", ()))
        self.text_cache = TextCache(text_cache_size)
        self._collapse_spaces = self._spaces_are_insignificant()
        # an entity head (models.entity_head) is used when the graph has its output and labels.json its tags;
        # a two-head model (older versions, registries) loads and runs as before
        outputs = {o.name for o in session.get_outputs()}  # type: ignore[attr-defined]
        self.token_tags: tuple[str, ...] = tuple(info.extra.get("token_tags", ()))
        self._outputs = list(OUTPUT_NAMES)
        if self.token_tags and TOKEN_OUTPUT in outputs:
            self._outputs.append(TOKEN_OUTPUT)
        self._transitions = transitions_from_meta(info.extra)  # a CRF-trained head's; None: plain BIO decoding

    # ---------------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike[str] | None = None,
        variant: str = "auto",
        threads: int = 0,
        *,
        batch_size: int = 32,
        max_chars: int = DEFAULT_MAX_CHARS,
        providers: Sequence[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        text_cache_size: int = 0,
        spinning: bool = False,
        entities: bool = True,
    ) -> Classifier:
        """Load a model directory (``None``: the shipped model) as an onnxruntime session.

        ``variant``: auto | fp32 | int8 | fp16 (auto: fp16 on CUDA, int8 on CPU). Variants are
        derived from the stored graph on first use and cached (see :mod:`finsent.models.variants`).
        ``threads``: onnxruntime intra-op threads, 0 = onnxruntime's default (all cores).
        ``cache_dir``: where derived variants are kept (default ``$XDG_CACHE_HOME/finsent``).
        ``text_cache_size``: recent predictions kept for repeated texts (0 = no cache).
        ``spinning``: let onnxruntime's pool threads spin-wait between operators (off: see the module doc).
        ``entities``: link entities into ``Prediction.entities`` (the shipped table + ``FINSENT_ENTITIES_FILE``).
        Raises :class:`~finsent.core.errors.ModelError` for a directory that cannot be used.
        """
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from finsent.models import resolve_model_dir
        from finsent.models.variants import is_compact, variant_path

        if variant not in VARIANT_CHOICES:
            raise ValueError(f"unknown model variant {variant!r}: choose one of {', '.join(VARIANT_CHOICES)}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        directory = resolve_model_dir(model_dir)
        cache = Path(cache_dir).expanduser() if cache_dir is not None else None
        check_model_dir(directory)
        try:
            info = read_model_info(directory)
        except ValueError as exc:
            raise ModelError(str(exc)) from None

        if providers is None:
            providers = (
                ["CUDAExecutionProvider", "CPUExecutionProvider"] if _cuda_available() else ["CPUExecutionProvider"]
            )
        on_cuda = providers[0] == "CUDAExecutionProvider"
        auto_variant = variant == "auto"
        if auto_variant:
            variant = "fp16" if on_cuda else "int8"
        if variant == "fp16" and not on_cuda:
            log.warning("fp16 variant requested without CUDA: it runs, but slower than fp32/int8 on CPU")
        model_file = directory / MODEL_FILE
        heads, hidden = int(info.extra.get("num_heads", 0)), int(info.extra.get("hidden_size", 0))
        if is_compact(model_file):
            onnx_path = variant_path(cache, model_file, variant, heads, hidden)
        else:  # a plain fp32 graph (e.g. exported by hand): use it as is for fp32, derive the others
            onnx_path = model_file if variant == "fp32" else variant_path(cache, model_file, variant, heads, hidden)

        opts = session_options(threads, spinning)
        session = ort.InferenceSession(str(onnx_path), opts, providers=list(providers))
        provider = session.get_providers()[0]
        if on_cuda and provider != "CUDAExecutionProvider" and auto_variant:
            # onnxruntime-gpu lists CUDA even when no GPU is usable; it then falls back to CPU,
            # where the fp16 graph is slow: use the CPU default instead.
            log.warning("CUDAExecutionProvider did not start (no usable GPU?); using the int8 variant on CPU")
            variant = "int8"
            onnx_path = variant_path(cache, model_file, variant, heads, hidden)
            session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
            provider = session.get_providers()[0]
        cls._check_heads(session, info, directory)

        tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        tokenizer.no_padding()
        tokenizer.enable_truncation(info.max_length)
        log.info(
            "loaded model %s (%s, variant %s) on %s from %s",
            info.model_version,
            onnx_path.name,
            variant,
            provider,
            directory,
        )
        linker = None
        if entities:
            from finsent.models.linking import default_linker

            linker = default_linker()
        return cls(
            session, tokenizer, info, directory, variant, provider, batch_size, max_chars, text_cache_size, linker
        )

    @staticmethod
    def _check_heads(session: object, info: ModelInfo, directory: Path) -> None:
        outputs = {o.name: o.shape for o in session.get_outputs()}  # type: ignore[attr-defined]
        inputs = {i.name for i in session.get_inputs()}  # type: ignore[attr-defined]
        missing = [n for n in (*OUTPUT_NAMES, *INPUT_NAMES) if n not in outputs and n not in inputs]
        if missing:
            raise ModelError(f"{directory / MODEL_FILE} lacks {', '.join(missing)}: not a finsent model graph")
        for name, labels in (("sentiment_logits", info.sentiment), ("topic_logits", info.topic)):
            width = outputs[name][-1]
            if isinstance(width, int) and width != len(labels):
                task = name.split("_")[0]
                raise ModelError(
                    f"{directory}: labels.json lists {len(labels)} {task} labels but the model's {task} head "
                    f"outputs {width}; labels.json belongs to another model -- re-export the model directory"
                )

    # ---------------------------------------------------------------------------------------
    def _prepare(self, texts: Sequence[str]) -> tuple[list[str], list[bool]]:
        if isinstance(texts, str):
            raise TypeError("predict() takes a sequence of texts, not a single string: wrap it in a list")
        cut: list[str] = []
        flags: list[bool] = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
            if not text.strip():
                raise ValueError(
                    f"texts[{i}] is empty or whitespace-only: there is nothing to classify; drop it before predict()"
                )
            too_long = len(text) > self.max_chars
            cut.append(prepare(text[: self.max_chars] if too_long else text, self.preprocess))
            flags.append(too_long)
        return cut, flags

    def _spaces_are_insignificant(self) -> bool:
        """Whether runs of spaces/tabs/newlines tokenise like one space (true for BERT's WordPiece)."""
        probe = ("Acme  shares\tjump\n 5%  ", "Acme shares jump 5%")
        a, b = self._tokenizer.encode_batch(list(probe))  # type: ignore[attr-defined]
        return bool(a.ids == b.ids)

    def cache_key(self, prepared: str) -> str:
        # with an entity head the cached answer holds character offsets: only the exact same text may share it
        collapse = self._collapse_spaces and TOKEN_OUTPUT not in self._outputs
        return _WHITESPACE.sub(" ", prepared).strip() if collapse else prepared

    def predict(self, texts: Sequence[str], titles: Sequence[str | None] | None = None) -> list[Prediction]:
        """Classify ``texts`` (each with its ``titles[i]``, if given); the result is in the same order. Thread-safe."""
        title_lens: list[int] = []
        if titles is not None:
            if isinstance(texts, str) or len(titles) != len(texts):
                raise ValueError(f"{len(titles)} titles for {len(texts)} texts: give one title (or None) per text")
            pairs = [
                scored_text(t, h) if isinstance(t, str) and (h is None or isinstance(h, str)) else (t, 0)
                for t, h in zip(texts, titles, strict=True)
            ]
            texts, title_lens = [p[0] for p in pairs], [p[1] for p in pairs]
        prepared, too_long = self._prepare(texts)
        if not prepared:
            return []
        cache = self.text_cache
        if cache.capacity == 0:
            out = self._score(prepared)
        else:
            keys = [self.cache_key(t) for t in prepared]
            found: dict[str, Prediction] = {}
            todo: dict[str, str] = {}  # key -> the text to score, once per key even if repeated in this call
            for key, text in zip(keys, prepared, strict=True):
                if key in found or key in todo:
                    continue
                hit = cache.get(key)
                if hit is None:
                    todo[key] = text
                else:
                    found[key] = hit
            if todo:
                for key, pred in zip(todo, self._score(list(todo.values())), strict=True):
                    cache.put(key, pred)
                    found[key] = pred
            out = [found[k] for k in keys]
        out = [
            dataclasses.replace(p, truncated=True) if cut and not p.truncated else p
            for p, cut in zip(out, too_long, strict=True)
        ]
        model_spans: list[list[Span] | None] = [None] * len(out)
        if TOKEN_OUTPUT in self._outputs:  # _score parked the entity head's spans (prepared-text offsets) here
            for i, t in enumerate(texts):
                spans = list(out[i].entities)
                if not spans:  # no entity found by the head: the Prediction object stays as it is
                    continue
                out[i] = dataclasses.replace(out[i], entities=())
                original = t[: self.max_chars]
                if original == prepared[i]:  # preparation changed nothing: the offsets are the text's own
                    model_spans[i] = spans  # type: ignore[assignment]
                    continue
                text, where = prepare_with_map(original, self.preprocess)
                if text == prepared[i]:
                    model_spans[i] = map_spans(spans, where)  # type: ignore[arg-type]
        if self.linker is not None:
            link = self.linker.extract_entities  # type: ignore[attr-defined]
            for i, t in enumerate(texts):
                found = link(t[: self.max_chars], title_lens[i] if title_lens else 0, model_spans[i])
                if found:  # a text without entities keeps its (possibly cached) Prediction object
                    out[i] = dataclasses.replace(out[i], entities=tuple(found))
        return out

    def _batches(self, sorted_lengths: np.ndarray) -> list[tuple[int, int]]:
        """Batches of at most ``batch_size``: least padding + calls on CPU, full batches on a GPU."""
        if self.provider != "CPUExecutionProvider":  # a GPU pads for ~free; its per-call cost dominates
            n = len(sorted_lengths)
            return [(i, min(i + self.batch_size, n)) for i in range(0, n, self.batch_size)]
        return length_batches(sorted_lengths, self.batch_size, CPU_CALL_OVERHEAD_TOKENS)

    def _score(self, prepared: list[str]) -> list[Prediction]:
        """Run the model on prepared texts; ``truncated`` says whether the token limit cut a text."""
        with self._encode_lock:
            encodings = self._tokenizer.encode_batch(prepared, add_special_tokens=True)  # type: ignore[attr-defined]
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(lengths, kind="stable")
        spans: list[list[Span]] = [[] for _ in prepared]
        sent_probs = np.empty((len(prepared), len(self.sentiment_labels)), dtype=np.float32)
        topic_probs = np.empty((len(prepared), len(self.topic_labels)), dtype=np.float32)
        for start, end in self._batches(lengths[order]):
            idx = order[start:end]
            width = int(lengths[idx].max())
            ids = np.full((len(idx), width), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, j in enumerate(idx):
                enc = encodings[j]
                n = len(enc.ids)
                ids[row, :n] = enc.ids
                mask[row, :n] = 1
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._input_names:
                feed["token_type_ids"] = np.zeros_like(ids)
            s_logits, t_logits, *tokens = self._session.run(self._outputs, feed)  # type: ignore[attr-defined]
            for row, j in enumerate(idx):  # the entity head: spans over the prepared text
                if tokens:
                    enc = encodings[j]
                    spans[j] = decode_spans(
                        tokens[0][row, : len(enc.ids)],
                        enc.offsets,
                        enc.special_tokens_mask,
                        prepared[j],
                        self._transitions,
                    )
            if s_logits.shape[1] != len(self.sentiment_labels) or t_logits.shape[1] != len(self.topic_labels):
                raise ValueError(
                    f"{self.model_dir}: head sizes {s_logits.shape[1]}/{t_logits.shape[1]} do not match labels.json "
                    f"({len(self.sentiment_labels)}/{len(self.topic_labels)}); re-export the model directory"
                )
            sent_probs[idx] = _softmax(s_logits)
            topic_probs[idx] = _softmax(t_logits)
        s_best = sent_probs.argmax(axis=1)
        t_best = topic_probs.argmax(axis=1)
        out: list[Prediction] = []
        for i, enc in enumerate(encodings):
            out.append(
                Prediction(
                    sentiment=self.sentiment_labels[int(s_best[i])],
                    sentiment_probs={
                        lab: float(p) for lab, p in zip(self.sentiment_labels, sent_probs[i], strict=True)
                    },
                    topic=self.topic_labels[int(t_best[i])],
                    topic_prob=float(topic_probs[i, t_best[i]]),
                    truncated=bool(enc.overflowing),
                    # internal until predict(): the entity head's raw spans, which predict() links or drops
                    entities=tuple(spans[i]),  # type: ignore[arg-type]
                )
            )
        return out

    def predict_proba(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Sentiment probabilities and topic *indices*, in input order; for evaluation.

        Returns ``(sentiment, topic)``: ``sentiment`` is a float32 matrix [n, S] of probabilities in
        :attr:`sentiment_labels` order; ``topic`` is an int64 vector [n] of the chosen topic's index into
        :attr:`topic_labels`, not a probability matrix: it is built from :meth:`predict`, whose
        :class:`Prediction` keeps only the chosen topic's probability (``topic_prob``).
        """
        preds = self.predict(texts)
        s = np.array([[p.sentiment_probs[lab] for lab in self.sentiment_labels] for p in preds], dtype=np.float32)
        t_idx = np.array([self.topic_labels.index(p.topic) for p in preds], dtype=np.int64)
        return s, t_idx

    def __repr__(self) -> str:
        return f"Classifier(version={self.version!r}, variant={self.variant!r}, provider={self.provider!r})"


# --- what a model must satisfy to serve the stream (registry register, worker load and hot reload) ------

#: The sentiment labels the store, the metrics and the alert rules count by name: a model that names them
#: otherwise (``bearish``/``bullish``) would be served and stored, and no alert would ever see a negative.
SERVING_SENTIMENTS: frozenset[str] = frozenset({"negative", "neutral", "positive"})


def position_limit(model_file: Path) -> int | None:
    """The graph's position-embedding rows (the longest input it can take), from its initializers'
    shapes; None when the graph has no recognisable position table."""
    import onnx

    graph = onnx.load(str(model_file), load_external_data=False).graph
    for init in graph.initializer:
        if "position_embeddings" in init.name and len(init.dims) == 2:
            return int(init.dims[0])
    return None


def check_serving_contract(model_dir: str | os.PathLike[str], info: ModelInfo | None = None) -> int | None:
    """Raise :class:`ModelError` when ``model_dir`` would blind the alerts if served; returns the graph's
    positions (None: not readable from the graph or labels.json, so only :func:`warm_up_max_length` can tell).

    Checked without running the model: sentiment labels exactly {negative, neutral, positive} (any order:
    everything maps them by name), a non-empty topic set, and ``max_length`` within the graph's
    position embeddings (read from ``labels.json``'s ``max_position_embeddings`` when the graph has no
    recognisable table). A graph too short for ``max_length`` passes a short warm-up and then fails on
    every long item; :func:`max_length_text` is the warm-up that catches what this cannot see.
    """
    directory = Path(model_dir)
    check_model_dir(directory)
    if info is None:
        try:
            info = read_model_info(directory)
        except ValueError as exc:
            raise ModelError(str(exc)) from None
    labels = set(info.sentiment)
    if labels != SERVING_SENTIMENTS or len(info.sentiment) != len(SERVING_SENTIMENTS):
        raise ModelError(
            f"{directory}: sentiment labels {list(info.sentiment)} are not exactly "
            f"{sorted(SERVING_SENTIMENTS)}: the store, the metrics and the alert rules count these names, so "
            "this model would hide every negative item",
            hint="re-export the model with the labels negative, neutral, positive (order does not matter)",
        )
    if not info.topic:
        raise ModelError(f"{directory}: the model has no topic labels", hint="re-export the model directory")
    try:
        limit = position_limit(directory / MODEL_FILE)
    except Exception as exc:  # noqa: BLE001 - an unreadable graph is the loader's error to report
        raise ModelError(f"{directory / MODEL_FILE} cannot be read as an ONNX graph: {exc}") from None
    if limit is None and isinstance(info.extra.get("max_position_embeddings"), int):
        limit = int(info.extra["max_position_embeddings"])
    if limit is not None and info.max_length > limit:
        raise ModelError(
            f"{directory}: labels.json sets max_length {info.max_length} but the graph has {limit} positions: "
            "every item longer than that would fail to score (dead-lettered)",
            hint=f"set max_length <= {limit} in labels.json, or export the model with more positions",
        )
    return limit


def warm_up_max_length(model_dir: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> None:
    """Load ``model_dir`` (fp32, one thread) and score a text at its maximum length; :class:`ModelError` if
    that fails. For graphs whose positions :func:`check_serving_contract` cannot read."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="finsent-warm-up-") as tmp:
        try:
            clf = Classifier.load(model_dir, variant="fp32", threads=1, cache_dir=cache_dir or tmp)
            clf.predict([max_length_text(clf.info.max_length)])
        except ModelError:
            raise
        except Exception as exc:  # onnxruntime's errors: the graph cannot take max_length tokens
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelError(
                f"{model_dir}: scoring a text at its max_length fails ({type(exc).__name__}: {first[:200]}): "
                "every item that long would be dead-lettered",
                hint="lower max_length in labels.json to the graph's positions, or re-export the model",
            ) from None


def max_length_text(max_length: int) -> str:
    """A text that tokenises to at least ``max_length`` tokens (one-character words, well under
    ``DEFAULT_MAX_CHARS``): the warm-up that proves the graph takes its longest input."""
    return " ".join(["a"] * (max_length + 8))


__all__ = [
    "Classifier",
    "Prediction",
    "SERVING_SENTIMENTS",
    "TextCache",
    "VARIANT_CHOICES",
    "check_serving_contract",
    "max_length_text",
    "session_options",
    "warm_up_max_length",
]
