"""The finsent event schema: the one module every package imports.

Three events travel on Kafka as UTF-8 JSON objects, each carrying ``"v"`` (the schema version):

* :class:`RawItem` on ``finsent.raw`` -- what an ingester saw (news article or social post).
* :class:`ScoredItem` on ``finsent.scored`` -- the raw item plus the classifier's output.
* :class:`Alert` on ``finsent.alerts`` -- a negative-sentiment spike for a topic.

Decoding is hand-written rather than reflective so that every rejection carries a short,
stable reason (it becomes the ``reason`` of the dead-letter record) and so that the hot
path stays cheap. All timestamps are timezone-aware UTC and travel as ISO 8601 strings
with a ``Z`` suffix.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from finsent.core.errors import InputError

SCHEMA_VERSION = 1
#: Largest encoded message the worker accepts; larger ones are dead-lettered as ``oversize``.
MAX_MESSAGE_BYTES = 1_000_000
#: Longest text kept; longer text is cut here and the item is flagged ``truncated``.
MAX_TEXT_CHARS = 20_000

SourceType = Literal["news", "social"]
SOURCE_TYPES: tuple[str, ...] = ("news", "social")
SENTIMENTS: tuple[str, ...] = ("negative", "neutral", "positive")


@dataclass(frozen=True, slots=True)
class EntityMention:
    """One entity an item is about, with how the item treats it (one row per (item, entity)).

    The agreed output shape of the entity layer: the model finds the span and its sentiment, the
    linker (``finsent.models.linking``) fills ``entity_id``/``name``, and relevance comes from where and
    how often the entity appears. Offsets are character offsets into the text that was scored
    (``title + "\\n\\n" + text`` when the item has a title), ``end`` exclusive, so
    ``scored_text[start:end] == text`` always holds.
    """

    #: the surface text as it appears in the scored text
    text: str
    start: int
    end: int
    #: negative / neutral / positive (:data:`SENTIMENTS`)
    sentiment: str
    sentiment_probs: dict[str, float]
    #: canonical id when linked (e.g. ``"AAPL"`` for a US listing, ``"X:BTC"`` for crypto), else ``None``
    entity_id: str | None
    #: canonical name when linked, else the normalised surface name (the key of an unlinked entity)
    name: str
    #: 0-100, from position (headline, first mention) and count
    relevance: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "start": self.start,
            "end": self.end,
            "sentiment": self.sentiment,
            "sentiment_probs": {k: round(float(v), 6) for k, v in self.sentiment_probs.items()},
            "entity_id": self.entity_id,
            "name": self.name,
            "relevance": int(self.relevance),
        }


#: Every reason a dead letter can carry: the decoder's (:class:`InvalidEvent`), then the worker's
#: catch-alls for a message that broke the decoder or the model in a way nobody foresaw.
DEAD_LETTER_REASONS: tuple[str, ...] = (
    "empty_message",
    "oversize",
    "invalid_utf8",
    "not_json",
    "not_object",
    "unsupported_version",
    "missing_field",
    "bad_type",
    "bad_id",
    "bad_source_type",
    "empty_text",
    "bad_time",
    "decode_error",
    "model_error",
)


class InvalidEvent(InputError):
    """A message that cannot become an event. ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def is_valid_unicode(text: str) -> bool:
    """True when ``text`` encodes as UTF-8 (no lone surrogates)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def clean_unicode(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (valid pairs are joined)."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_time(ts: datetime | None) -> str | None:
    """ISO 8601 in UTC with millisecond precision and a ``Z`` suffix (``None`` stays ``None``)."""
    if ts is None:
        return None
    if ts.tzinfo is None:
        raise ValueError("naive datetime: finsent timestamps must be timezone-aware")
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: Any, name: str) -> datetime:
    """Parse an ISO 8601 timestamp or epoch seconds into aware UTC; naive strings are taken as UTC."""
    if isinstance(value, bool):
        raise InvalidEvent("bad_type", f"{name} must be an ISO 8601 string")
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(float(value), tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise InvalidEvent("bad_time", f"{name}: {exc}") from None
    if not isinstance(value, str):
        raise InvalidEvent("bad_type", f"{name} must be an ISO 8601 string")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidEvent("bad_time", f"{name}={value[:40]!r} is not ISO 8601") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)


#: How far ahead of this host's clock an item's time may be (clock skew between hosts): beyond it the item is
#: refused as ``bad_time``. Event time (``published_at``, else ``ingested_at``) drives the entity detector's
#: watermark, which only moves forward: one item dated next year would make every later item "late".
MAX_FUTURE_SKEW = timedelta(minutes=5)


def _not_future(ts: datetime | None, name: str) -> None:
    if ts is not None and ts > utcnow() + MAX_FUTURE_SKEW:
        raise InvalidEvent(
            "bad_time",
            f"{name}={format_time(ts)} is more than "
            f"{int(MAX_FUTURE_SKEW.total_seconds() // 60)} min in the future; fix the source's clock "
            "or its time zone",
        )


def stable_id(*parts: str) -> str:
    """A deterministic 24-hex-char id from identifying parts (source, GUID, URL, file+row...)."""
    h = hashlib.blake2b(digest_size=12)
    for p in parts:
        h.update(p.encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class RawItem:
    """One piece of text from a source, normalised. ``id`` is stable: the same story gives the same id."""

    id: str
    source: str
    source_type: SourceType
    text: str
    ingested_at: datetime
    title: str | None = None
    url: str | None = None
    author: str | None = None
    published_at: datetime | None = None
    tickers: tuple[str, ...] = ()
    truncated: bool = False

    def __post_init__(self) -> None:
        # Whatever is stored must be publishable: every string is valid Unicode (a lone UTF-16
        # surrogate, legal in a JSON escape, cannot be encoded as UTF-8). Text is cleaned (U+FFFD);
        # an id is refused, because a cleaned id could collide with another item's.
        if not is_valid_unicode(self.id):
            raise InvalidEvent("bad_id", "id is not valid Unicode (a lone UTF-16 surrogate)")
        for name in ("source", "text", "title", "url", "author"):
            value = getattr(self, name)
            if value is not None and not is_valid_unicode(value):
                object.__setattr__(self, name, clean_unicode(value))
        if not all(is_valid_unicode(t) for t in self.tickers):
            object.__setattr__(self, "tickers", tuple(clean_unicode(t) for t in self.tickers))

    def to_dict(self) -> dict[str, Any]:
        # getattr per field, not dataclasses.asdict: asdict deep-copies every value (all immutable here),
        # which was the largest single cost of publishing a scored item (bench/RESULTS.md "Plumbing")
        d = {name: getattr(self, name) for name in _RAW_FIELDS}
        d["tickers"] = list(self.tickers)
        d["published_at"] = format_time(self.published_at)
        d["ingested_at"] = format_time(self.ingested_at)
        d["v"] = SCHEMA_VERSION
        return d

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


_RAW_FIELDS = tuple(f.name for f in fields(RawItem))


@dataclass(frozen=True, slots=True)
class ScoredItem:
    """A raw item with the classifier's verdict. ``model_version`` is on every row (re-scoring, hot reload)."""

    item: RawItem
    sentiment: str
    sentiment_probs: dict[str, float]
    topic: str
    topic_prob: float
    model_version: str
    scored_at: datetime = field(default_factory=utcnow)
    #: who the item is about and how it treats each of them (one per distinct entity; see EntityMention)
    entities: tuple[EntityMention, ...] = ()
    #: the ``finsent.raw`` partition the item was read from (None: not read from Kafka, or a record written
    #: before this field). The scored topic is keyed by item id, so it mixes every raw partition; the entity
    #: agent's watermark tracks event time per (scored, raw) partition pair with it (issue 26)
    raw_partition: int | None = None

    @property
    def id(self) -> str:
        return self.item.id

    @property
    def negative_prob(self) -> float:
        return float(self.sentiment_probs.get("negative", 0.0))

    def to_dict(self) -> dict[str, Any]:
        d = self.item.to_dict()
        d.update(
            sentiment=self.sentiment,
            sentiment_probs={k: round(float(v), 6) for k, v in self.sentiment_probs.items()},
            topic=self.topic,
            topic_prob=round(float(self.topic_prob), 6),
            model_version=self.model_version,
            scored_at=format_time(self.scored_at),
            entities=[e.to_dict() for e in self.entities],
        )
        if self.raw_partition is not None:  # absent when unknown: records and stored rows stay as before
            d["raw_partition"] = self.raw_partition
        return d

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Alert:
    """A negative-sentiment spike on one topic, as decided by a detector over a window of stored counts."""

    topic: str
    fired_at: datetime
    window_start: datetime
    window_end: datetime
    negative: int
    total: int
    negative_share: float
    baseline_share: float
    score: float
    detector: str
    severity: str = "warning"
    id: str = ""
    #: ``"topic"`` (a topic's spike) or ``"entity"`` (one named entity's negative surge; ``topic`` is then ``""``)
    kind: str = "topic"
    entity_id: str | None = None
    entity_name: str | None = None
    #: what an alert shows a reader: the top headlines with links (both kinds; issue 25 for topic alerts), and for an
    #: entity alert its counts and index; ``None`` when nothing was found (an alert raised without a store)
    evidence: dict[str, Any] | None = field(default=None, hash=False)  # a dict: not hashed
    #: the model version that scored the window's items (the most items when a hot reload split it); '' unknown
    model_version: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(
                self, "id", stable_id("alert", self.detector, self.topic, format_time(self.window_start) or "")
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("fired_at", "window_start", "window_end"):
            d[k] = format_time(getattr(self, k))
        d["v"] = SCHEMA_VERSION
        return d

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Decoding (the worker's front door: every failure is an InvalidEvent with a reason)
# ---------------------------------------------------------------------------------------------


def _load_object(data: bytes | str, max_bytes: int) -> dict[str, Any]:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if data is None or len(data) == 0:
        raise InvalidEvent("empty_message")
    if len(data) > max_bytes:
        raise InvalidEvent("oversize", f"{len(data)} bytes > {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent("invalid_utf8", str(exc)) from None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError also: an integer of more than 4,300 digits
        raise InvalidEvent("not_json", f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(obj, dict):
        raise InvalidEvent("not_object", f"top-level JSON is {type(obj).__name__}")
    return obj


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent("bad_type", f"{key} must be a string or null")
    return value


def _opt_dict(obj: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidEvent("bad_type", f"{key} must be an object or null")
    return value


def _req_str(obj: dict[str, Any], key: str) -> str:
    if key not in obj or obj[key] is None:
        raise InvalidEvent("missing_field", key)
    value = obj[key]
    if not isinstance(value, str):
        raise InvalidEvent("bad_type", f"{key} must be a string")
    return value


def raw_item_from_dict(
    obj: dict[str, Any], max_text_chars: int = MAX_TEXT_CHARS, default_ingested_at: datetime | None = None
) -> RawItem:
    """Validate a decoded JSON object as a :class:`RawItem`.

    A message without ``ingested_at`` gets ``default_ingested_at``: the worker passes the Kafka record's
    timestamp, which is the same on every redelivery, so the stored row (partitioned and sorted by
    ``ingested_at``) stays the same row and deduplicates. Only without it does "now" fill in.
    """
    version = obj.get("v", SCHEMA_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION or version < 1:
        raise InvalidEvent("unsupported_version", f"v={version!r}; this worker reads v<={SCHEMA_VERSION}")
    item_id = _req_str(obj, "id").strip()
    if not item_id or len(item_id) > 256:
        raise InvalidEvent("bad_id", "id must be 1..256 characters")
    source = _req_str(obj, "source")
    source_type = _req_str(obj, "source_type")
    if source_type not in SOURCE_TYPES:
        raise InvalidEvent("bad_source_type", f"{source_type!r} not in {SOURCE_TYPES}")
    text = _req_str(obj, "text")
    if not text.strip():
        raise InvalidEvent("empty_text")
    truncated = obj.get("truncated", False)
    if not isinstance(truncated, bool):  # bool("no") is True: only JSON true/false mean anything here
        raise InvalidEvent("bad_type", "truncated must be true or false")
    if len(text) > max_text_chars:
        text, truncated = text[:max_text_chars], True
    tickers = obj.get("tickers") or []
    if not isinstance(tickers, list) or not all(isinstance(t, str) for t in tickers):
        raise InvalidEvent("bad_type", "tickers must be a list of strings")
    published = obj.get("published_at")
    ingested = obj.get("ingested_at")
    published_at = None if published is None else parse_time(published, "published_at")
    ingested_at = (default_ingested_at or utcnow()) if ingested is None else parse_time(ingested, "ingested_at")
    _not_future(published_at, "published_at")
    _not_future(ingested_at, "ingested_at")
    return RawItem(
        id=item_id,
        source=source,
        source_type=source_type,  # type: ignore[arg-type]
        text=text,
        title=_opt_str(obj, "title"),
        url=_opt_str(obj, "url"),
        author=_opt_str(obj, "author"),
        published_at=published_at,
        ingested_at=ingested_at,
        tickers=tuple(tickers),
        truncated=truncated,
    )


def decode_raw(
    data: bytes | str,
    max_bytes: int = MAX_MESSAGE_BYTES,
    max_text_chars: int = MAX_TEXT_CHARS,
    default_ingested_at: datetime | None = None,
) -> RawItem:
    """Decode one ``finsent.raw`` message. Raises :class:`InvalidEvent` with a reason on any defect."""
    return raw_item_from_dict(_load_object(data, max_bytes), max_text_chars, default_ingested_at)


def decode_scored(data: bytes | str, max_bytes: int = MAX_MESSAGE_BYTES) -> ScoredItem:
    """Decode one ``finsent.scored`` message (used by the alert detector and tests)."""
    obj = _load_object(data, max_bytes)
    item = raw_item_from_dict(obj)
    probs = obj.get("sentiment_probs")
    if not isinstance(probs, dict):
        raise InvalidEvent("bad_type", "sentiment_probs must be an object")
    topic_prob = obj.get("topic_prob")
    if not isinstance(topic_prob, (int, float)) or isinstance(topic_prob, bool):
        raise InvalidEvent("bad_type", "topic_prob must be a number")
    return ScoredItem(
        item=item,
        sentiment=_req_str(obj, "sentiment"),
        sentiment_probs={str(k): float(v) for k, v in probs.items()},
        topic=_req_str(obj, "topic"),
        topic_prob=float(topic_prob),
        model_version=_req_str(obj, "model_version"),
        scored_at=parse_time(_req_str(obj, "scored_at"), "scored_at"),
        entities=_entities(obj.get("entities")),
        raw_partition=_raw_partition(obj.get("raw_partition")),
    )


def _raw_partition(value: Any) -> int | None:
    """The ``raw_partition`` of a scored message; absent (a message from before it) is None."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidEvent("bad_type", "raw_partition must be a non-negative integer")
    return value


def _entities(value: Any) -> tuple[EntityMention, ...]:
    """The ``entities`` of a scored message; absent (a message from before entities) is none."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidEvent("bad_type", "entities must be a list")
    out: list[EntityMention] = []
    for e in value:
        if not isinstance(e, dict):
            raise InvalidEvent("bad_type", "each entity must be an object")
        try:
            probs = e.get("sentiment_probs") or {}
            out.append(
                EntityMention(
                    text=str(e["text"]),
                    start=int(e["start"]),
                    end=int(e["end"]),
                    sentiment=str(e["sentiment"]),
                    sentiment_probs={str(k): float(v) for k, v in probs.items()},
                    entity_id=None if e.get("entity_id") is None else str(e["entity_id"]),
                    name=str(e["name"]),
                    relevance=int(e.get("relevance") or 0),
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidEvent("bad_type", f"bad entity: {type(exc).__name__}: {exc}") from None
    return tuple(out)


def decode_alert(data: bytes | str) -> Alert:
    obj = _load_object(data, MAX_MESSAGE_BYTES)
    try:
        return Alert(
            topic=_req_str(obj, "topic"),
            fired_at=parse_time(obj["fired_at"], "fired_at"),
            window_start=parse_time(obj["window_start"], "window_start"),
            window_end=parse_time(obj["window_end"], "window_end"),
            negative=int(obj["negative"]),
            total=int(obj["total"]),
            negative_share=float(obj["negative_share"]),
            baseline_share=float(obj["baseline_share"]),
            score=float(obj["score"]),
            detector=_req_str(obj, "detector"),
            severity=str(obj.get("severity", "warning")),
            id=str(obj.get("id", "")),
            # absent in payloads from before entity alerts: they decode as topic alerts
            kind=str(obj.get("kind") or "topic"),
            entity_id=_opt_str(obj, "entity_id"),
            entity_name=_opt_str(obj, "entity_name"),
            evidence=_opt_dict(obj, "evidence"),
            model_version=str(obj.get("model_version") or ""),  # absent in payloads from before issue 25
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidEvent("bad_alert", str(exc)) from None


def dead_letter(
    payload: bytes | None, reason: str, detail: str, source_topic: str, partition: int, offset: int
) -> bytes:
    """The JSON body of a ``finsent.dlq`` record: why it was rejected, where it came from, the original bytes."""
    original: str | None
    try:
        original = payload.decode("utf-8") if payload is not None else None
        encoding = "utf-8"
    except UnicodeDecodeError:
        original = payload.hex() if payload is not None else None
        encoding = "hex"
    if original is not None and len(original) > 64_000:
        original = original[:64_000]
    body = {
        "v": SCHEMA_VERSION,
        "reason": reason,
        "detail": detail[:500],
        "topic": source_topic,
        "partition": partition,
        "offset": offset,
        "payload": original,
        "payload_encoding": encoding,
        "failed_at": format_time(utcnow()),
    }
    # ASCII-escaped: a detail quoting a lone surrogate still makes a valid UTF-8 body
    return json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii")


__all__ = [
    "Alert",
    "InvalidEvent",
    "MAX_MESSAGE_BYTES",
    "MAX_FUTURE_SKEW",
    "MAX_TEXT_CHARS",
    "RawItem",
    "SCHEMA_VERSION",
    "SENTIMENTS",
    "SOURCE_TYPES",
    "ScoredItem",
    "dead_letter",
    "decode_alert",
    "decode_raw",
    "decode_scored",
    "clean_unicode",
    "is_valid_unicode",
    "format_time",
    "parse_time",
    "raw_item_from_dict",
    "stable_id",
    "utcnow",
]
