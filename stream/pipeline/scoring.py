"""Turning raw Kafka records into scored items: pure functions and the classifier holder (the model thread).

Nothing here knows Faust, Kafka or the store: a batch of :class:`RawMessage` goes in, scored items
and dead letters come out, so every rule about input (a defective message becomes a dead letter
with its reason; a model failure is narrowed to the items that cause it) is tested without a broker.
:func:`decode_and_score` is what the worker's model executor runs per model call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from finsent.core.events import InvalidEvent, RawItem, ScoredItem, dead_letter, decode_raw, utcnow
from finsent.stream.publish import Record, key_hash

log = logging.getLogger(__name__)


class ClassifierHolder:
    """The classifier in use, swappable atomically (a promoted model replaces it between batches)."""

    def __init__(self, classifier: Any) -> None:
        self._lock = threading.Lock()
        self._current = classifier

    @property
    def current(self) -> Any:
        return self._current

    def swap(self, new: Any) -> Any:
        """Install ``new``; batches already being scored finish with the old one. Returns the old one."""
        with self._lock:
            old, self._current = self._current, new
        log.info("classifier swapped: %s -> %s", getattr(old, "version", "?"), getattr(new, "version", "?"))
        return old


@dataclass(slots=True)
class RawMessage:
    """What the pipeline needs from one Kafka record."""

    value: bytes | None
    topic: str
    partition: int
    offset: int
    #: the record's Kafka timestamp (epoch seconds): the ``ingested_at`` of an item that lacks one,
    #: so a redelivered record decodes to the same stored row
    timestamp: float | None = None
    #: the record's key, carried onto its dead letter
    key: bytes | None = None


def raw_messages(events: Sequence[Any]) -> list[RawMessage]:
    """What the pipeline needs of each consumed event (Faust's ``Event``: value, key, message position)."""
    return [
        RawMessage(
            ev.value,
            ev.message.topic,
            ev.message.partition,
            ev.message.offset,
            ev.message.timestamp,
            ev.key if isinstance(ev.key, bytes) else None,
        )
        for ev in events
    ]


@dataclass(slots=True)
class DeadLetter:
    """A message that cannot be scored: why (``reason``), the dead-letter record's body, the original key."""

    reason: str
    body: bytes
    key: bytes | None = None


def decode_batch(
    messages: Sequence[RawMessage], max_bytes: int, max_text_chars: int, partitions: list[int] | None = None
) -> tuple[list[RawItem], list[DeadLetter]]:
    """Split a batch into valid items and dead letters (one per defective message, with its reason).

    The rule, not a list: whatever one message contains, it becomes an item or a dead letter.
    A defect the decoder knows has its own reason; anything else that goes wrong while decoding
    one message is ``decode_error`` with the exception's type, and the rest of the batch goes on.
    ``partitions``, when given, receives each item's raw partition (the scored record carries it: issue 26).
    """
    items: list[RawItem] = []
    dead: list[DeadLetter] = []
    for m in messages:
        try:
            default_ts = datetime.fromtimestamp(m.timestamp, UTC) if m.timestamp else None
            items.append(decode_raw(m.value if m.value is not None else b"", max_bytes, max_text_chars, default_ts))
            if partitions is not None:
                partitions.append(m.partition)
        except InvalidEvent as exc:
            reason, detail = exc.reason, exc.detail
        except Exception as exc:  # noqa: BLE001 - one message must never stop the worker
            reason, detail = "decode_error", f"{type(exc).__name__}: {exc}"
        else:
            continue
        dead.append(DeadLetter(reason, dead_letter(m.value, reason, detail, m.topic, m.partition, m.offset), m.key))
    return items, dead


def _to_scored(
    item: RawItem, pred: Any, version: str, scored_at: datetime | None = None, raw_partition: int | None = None
) -> ScoredItem:
    if pred.truncated and not item.truncated:
        item = replace(item, truncated=True)
    return ScoredItem(
        item=item,
        sentiment=pred.sentiment,
        sentiment_probs=dict(pred.sentiment_probs),
        topic=pred.topic,
        topic_prob=float(pred.topic_prob),
        model_version=version,
        scored_at=scored_at or utcnow(),
        entities=tuple(getattr(pred, "entities", ()) or ()),
        raw_partition=raw_partition,
    )


def score_items(
    classifier: Any, items: Sequence[RawItem], partitions: Sequence[int] | None = None
) -> tuple[list[ScoredItem], list[DeadLetter]]:
    """Score a batch with one classifier; if the batch fails, find and dead-letter the failing item(s).
    ``partitions``: each item's raw partition, carried onto its scored item.

    Blocking: runs in the model executor.
    """
    if not items:
        return [], []
    parts: Sequence[int | None] = partitions if partitions is not None else [None] * len(items)
    version = str(classifier.version)
    try:
        # the headline is what a reader sees first: scored together with the text (models.runtime.scored_text)
        titles = [it.title for it in items]
        texts = [it.text for it in items]
        preds = classifier.predict(texts, titles=titles) if any(titles) else classifier.predict(texts)
        scored_at = utcnow()  # one clock read per batch: the batch was scored at one moment
        return [_to_scored(it, p, version, scored_at, rp) for it, p, rp in zip(items, preds, parts, strict=True)], []
    except Exception:
        log.exception("classifier failed on a batch of %d; scoring items one by one", len(items))
    scored: list[ScoredItem] = []
    dead: list[DeadLetter] = []
    for it, rp in zip(items, parts, strict=True):
        try:
            (pred,) = classifier.predict([it.text], titles=[it.title]) if it.title else classifier.predict([it.text])
            scored.append(_to_scored(it, pred, version, raw_partition=rp))
        except Exception as exc:
            body = dead_letter(it.to_json(), "model_error", f"{type(exc).__name__}: {exc}", "", -1, -1)
            dead.append(DeadLetter("model_error", body, it.id.encode()))
    return scored, dead


def decode_and_score(
    classifier: Any, messages: Sequence[RawMessage], max_bytes: int, max_text_chars: int
) -> tuple[list[ScoredItem], list[DeadLetter], list[Record], float]:
    """Decode, score, and encode the scored topic's messages (none of it on the event loop).

    Returns the scored items, the dead letters, the ``finsent.scored`` records (key, value, key hash)
    and the seconds the model took.
    """
    parts: list[int] = []
    items, dead = decode_batch(messages, max_bytes, max_text_chars, parts)
    t0 = time.perf_counter()
    scored, model_dead = score_items(classifier, items, parts)
    infer_s = time.perf_counter() - t0
    dead.extend(model_dead)
    keys = [s.id.encode() for s in scored]
    payloads = [(k, s.to_json(), key_hash(k)) for k, s in zip(keys, scored, strict=True)]
    return scored, dead, payloads, infer_s
