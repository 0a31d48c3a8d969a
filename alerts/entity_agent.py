"""Live entity alerts inside the Faust worker: ``attach(app, context)`` (issue 26).

Topology (two agents and a timer on every worker, next to the topic alert agent of :mod:`finsent.alerts.agent`)::

    finsent.scored --(mention agent: per batch, mentions grouped by owning partition)--> finsent.alerts.entity_counts
                                                                            (one record per partition and batch)
    finsent.alerts.entity_counts --(detect agent)--> reorder buffer (event time) --> novelty --> EntityDetector
    EntityDetector --> finsent.alerts (key = entity key), store ``insert_alerts``, gauges, Alertmanager (optional)

**Why re-key by entity.** ``finsent.scored`` is keyed by item id, so one name's items are spread over every
partition and every worker. Each entity key (``AAPL``, ``~genesis``:
:func:`~finsent.alerts.entity_detector.entity_key`) belongs to the one partition of the entity counts topic that
the default partitioner (murmur2) gives it, owned by one worker of the group. That worker alone holds the
entity's buckets, baseline, novelty chains and episode: several workers agree because one of them decides,
exactly as the topic counts are re-keyed by topic. The mention agent sends each batch's mentions as **one record
per owning partition** (:func:`entity_records`, format version 2), keyed so that it lands there -- not one record
per entity, whose per-record cost (a send, a confirmation, a Faust event and ack at the owner) was most of the
entity stage's in ``bench entities --plumbing``. A record carries the mentions themselves (item id, event
time, sentiment, relevance, source, title, link, model version and the first 1,000 characters of text, each item
once per record as a positional row), not bare counts: the detector counts an item once per bucket
(redeliveries), its alerts quote headlines, and novelty needs the text. Version 1 records (one entity's mentions,
or a watermark alone) still decode; a record that cannot be read goes to ``finsent.dlq`` with its reason.

**Event time, in order.** Each partition of the entity counts topic has its own unit (:class:`EntityUnit`: buffer,
watermark, novelty, detector), whichever worker owns it. A unit keeps mentions in a reorder buffer until the
watermark, less ``entity_lateness_s``, passes the end of their bucket, then releases them sorted by (event time,
item id): story clusters and novelty (:mod:`finsent.alerts.novelty`) are computed in event-time order whatever
order the partitions were read in -- which is what the backtest does over stored items -- and only then fed to the
detector.

**The watermark, per origin.** A scored partition mixes every raw partition (the scorer keys by item id), so the
event time it has reached says nothing about items of another raw partition still unscored: a raw backlog drained
unevenly (a backfill replayed at full speed, one raw partition read weeks of event time ahead of the other) would
make them late. So, as Flink keeps a watermark per input channel, each scored record carries its
``raw_partition`` (:class:`~finsent.core.events.ScoredItem`), and the watermark is the event time every *origin* --
(scored partition, raw partition) pair -- has reached: with each batch a mention agent sends, to every partition
of the entity counts topic (:func:`watermark_keys`; inside the batch's record, after its mentions, so it never
overtakes them), the newest event time it has read per origin (``"3/1"``:
scored 3, raw 1; ``"3"`` for a record from a scorer without the field), and the owner takes the oldest of them.
Every scored partition, and (once records name them) every raw partition -- the raw topic is assumed to have
``settings.kafka.partitions`` partitions, as ``ensure_topics`` makes it -- holds the watermark until heard from (at most
:data:`UNHEARD_S`): a backlog's fetches may drain one raw partition before reading the other's first record. So
a raw or scored backlog read one partition ahead of another (a backfill, a worker joining late) makes nothing
late, and 1 or 3 workers release the same mentions in the same order (a crafted two-raw-partition backlog: 122
mentions late with a watermark per scored partition, 0 per origin, with the default 1 h). **Limit:** an origin
that stops for :data:`IDLE_S` in the middle of a backlog (a fetch stalled that long) stops holding it, as below;
and a lateness covers only disorder *within* a raw partition (a producer writing history out of event-time order
needs ``entity_lateness_s`` of its spread). ``finsent bench entities --through-stack --stack-default-lateness``
(the crypto news at full speed, 1 h) measured 933 to 1,160 of 5,340 mentions late before; the cause there was
the restore (*Restart*, below: a first start took this run's own stored items for the previous life), now 0.

An origin that has not moved for :data:`IDLE_S` stops holding the watermark back; when none moves (a finished
replay, a quiet night) the newest event time moves on with the wall clock, so the last buckets close ``lateness +
bucket`` after their end. A mention whose bucket was already released is *late*: counted in
``finsent_entity_mentions_late_total`` and ignored (a released bucket never changes, so an alert stays raised).

**Delivery.** At-least-once, as the topic agent: the mention agent waits for the broker to confirm its records
(:func:`finsent.alerts.agent.send_confirmed`) before its batch of ``finsent.scored`` is acknowledged, and the
detect agent confirms an alert on the alerts topic before it takes the next record. A redelivered mention is
counted once (the detector's per-bucket item set; novelty returns its first answer), and an alert's id is
stable per (entity, episode start), so the store, which inserts alerts idempotently by id, keeps one row.
Story clusters are formed among the items a unit sees (those mentioning its entities); a single-process backtest
clusters all items, so the two can differ only when a story about one name is a near-duplicate of a story about
another that links two of the first name's stories.

**Restart.** A unit starts from the store, not cold (:meth:`EntityAlerts.restore`, before its partition's first
record): the stored mentions of its entities over :meth:`~finsent.alerts.entity_detector.EntityDetector.history_s`
(four baseline half-lives: four weeks of 1 h buckets) of event time up to the watermark below, replayed in
(event time, item id, entity key) order through novelty and the detector as the backtest does
(:func:`finsent.alerts.backtest.stored_mentions`: both engines), read a day at a time (the days that hold a mention)
in one pass that builds
every partition's unit (memory: a day of items, the units, and one id pair per restored mention). Buckets the
watermark had closed are closed again, that watermark taken as the newest event time of the items scored *before
this worker started* (the previous life): not the store's newest, which on a first start is this run's scorer
filling the store ahead of the entity stage (a backfill: weeks of event time), which closed the stream's own
mentions as restored and made them late; younger mentions wait in the reorder buffer as if just read. Without
this a restarted worker judged every name by the prior alone: a name always in bad news alerted again, and an episode in
progress alerted twice. Alerts raised by the replay are not sent again, except those of an episode still in
progress whose id is not in the store (the worker stopped between closing the bucket and delivering it). A
mention the replay counted and the broker redelivers is counted once (the bucket's item set, or the restored ids
for buckets already closed). A store that cannot be read leaves the unit cold, with a warning.

**Prometheus.** Thousands of names must not become thousands of label values: only aggregates
(``finsent_entity_mentions_total{sentiment}``, ``finsent_entities_tracked``, ``finsent_entity_alerts_total``,
``finsent_entities_alerting``) and the names in an episode *now* (``finsent_entity_alert_active{entity,
entity_id}``, at most :data:`MAX_ALERTING_LABELS`, removed when the episode ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from finsent.alerts.agent import send_confirmed
from finsent.alerts.entity_detector import (
    EntityDetector,
    EntityState,
    Mention,
    Thresholds,
    entity_key,
    make_mention,
    story_title,
)
from finsent.alerts.novelty import Novelty
from finsent.alerts.runner import EPOCH
from finsent.alerts.sinks import AlertmanagerSink, _headline, _link
from finsent.alerts.watchlist import Watchlist
from finsent.core.events import (
    MAX_FUTURE_SKEW,
    SENTIMENTS,
    Alert,
    InvalidEvent,
    dead_letter,
    decode_scored,
    format_time,
    parse_time,
    utcnow,
)
from finsent.core.settings import EntitySettings, Settings
from finsent.stream.context import WorkerContext

log = logging.getLogger(__name__)

ALERTNAME = "FinsentEntityNegativeSurge"
#: the most entity label sets ``finsent_entity_alert_active`` holds (the highest index wins a place)
MAX_ALERTING_LABELS = 50
#: items per record on the entity counts topic (each item at most ~6 kB, 1,000 characters of text: a record stays
#: far below Kafka's 1 MB)
ITEMS_PER_RECORD = 100
TEXT_CHARS = 1000
#: the mention agent's longest wait to fill a batch of ``finsent.scored``: a batch costs one record per partition
#: (not one per entity), so short waits are cheap, and a long one delayed a burst's last mentions (1 s before: a
#: third of ``bench entities --plumbing``'s window)
MENTIONS_WITHIN_S = 0.05
#: an input (a (scored, raw) partition pair) whose newest event time has not moved for this long no longer holds
#: the watermark
IDLE_S = 30.0
#: a scored partition never heard from holds it this long (a loaded worker may take a while to read its first
#: batch; a partition with no traffic at all must not hold it forever)
UNHEARD_S = 300.0
#: a restore's pass over the store serves the other partitions restored within this many seconds (the units it
#: built for partitions this worker was not given are then dropped)
RESTORE_REUSE_S = 120.0

#: where a scored record's event time comes from, for the watermark: its (scored partition, raw partition) pair, or
#: its scored partition alone when the record does not say its raw partition (a scorer from before the field)
Origin = int | tuple[int, int]


def origin_name(origin: Origin) -> str:
    """An origin as a watermark record names it: ``"3"`` (scored partition 3), ``"3/1"`` (scored 3, raw 1)."""
    return f"{origin[0]}/{origin[1]}" if isinstance(origin, tuple) else str(origin)


# --- the mention side (every worker, on its share of finsent.scored) ---------------------------------------------
#: the entity counts record format this worker writes (see :func:`entity_records`); 1 = the records before it (one
#: entity's mentions per record, or a watermark alone), still read
RECORD_VERSION = 2


class BadRecord(ValueError):
    """An entity counts record that cannot be read; ``reason`` is one of
    :data:`~finsent.core.events.DEAD_LETTER_REASONS` (the dead letter's)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def entity_records(
    values: Iterable[bytes | None],
    partitions: Iterable[int] | None = None,
    count_partitions: int = 1,
    seen: dict[Origin, datetime] | None = None,
) -> tuple[list[tuple[bytes, bytes]], int, int, dict[Origin, datetime]]:
    """A batch of ``finsent.scored`` values as records for the entity counts topic: **one record per partition**
    of it (``count_partitions``) that owns an entity of the batch -- chunks of :data:`ITEMS_PER_RECORD` items --
    keyed by that partition's :func:`watermark_keys` key, so the default partitioner puts it there.

    Returns (records, mentions, bad values, the newest event time per origin) -- ``partitions`` gives each
    value's scored partition; the origin is (scored partition, the record's ``raw_partition``), or the scored
    partition alone for a record without one. Undecodable values are skipped and counted (the scorer wrote
    them: a bug or a foreign producer); mentions without a name are skipped (no key to own them).

    ``seen`` (the sender's newest event time per origin so far, updated here with this batch's) makes every
    partition's last record carry the watermark, and every partition get one: a watermark rides *with* the
    mentions it covers, so it can never overtake them, and a batch costs one confirmed send.

    **Why one record per partition, not per entity** (version 1 sent one per entity, ~600 per batch of 512 items
    over 300 names): each record is a Faust send, a broker confirmation, a Faust event at the owner with its own
    ack, and a JSON document. ``bench entities --plumbing`` measured that per-record cost as most of the entity
    stage's. Version 2 (``{"v": 2, "i": items, "m": mentions, "wm": watermark}``) carries each item once per
    partition as a positional row ``[id, event time, source, title, url, text, model version]`` and each mention
    as ``[item index, entity key, entity id, name, sentiment, relevance]``: no per-field keys, the text (for
    novelty) once even when two of the item's names live in the same partition.
    """
    owner_of = _partition_finder(count_partitions)
    per: dict[int, tuple[list[list[Any]], list[list[Any]]]] = {}
    newest: dict[Origin, datetime] = {}
    bad = n = 0
    parts = iter(partitions) if partitions is not None else None
    future = utcnow() + MAX_FUTURE_SKEW
    for v in values:
        part = next(parts, None) if parts is not None else None
        try:
            s = _scored_view(v, future)
        except InvalidEvent:
            bad += 1
            continue
        item_id, event_time, source, title, url, text, version, raw_partition, entities = s
        if part is not None:
            origin: Origin = part if raw_partition is None else (part, raw_partition)
            if origin not in newest or event_time > newest[origin]:
                newest[origin] = event_time
        if not entities:
            continue
        row: list[Any] | None = None
        index: dict[int, int] = {}  # partition -> this item's row index in its record
        seen_keys: set[str] = set()
        for eid, name, sentiment, relevance in entities:
            if not name.strip():
                continue
            if sentiment not in SENTIMENTS:
                bad += 1  # the owner could not count it (version 1 lost the entity's whole record to it)
                continue
            key = entity_key(eid, name)
            if key in seen_keys:
                continue  # one mention per (item, entity)
            seen_keys.add(key)
            dest = owner_of(key)
            rows, ments = per.get(dest) or per.setdefault(dest, ([], []))
            i = index.get(dest)
            if i is None:
                if row is None:
                    row = [item_id, format_time(event_time), source, title[:300], url, text[:TEXT_CHARS], version]
                i = index[dest] = len(rows)
                rows.append(row)
            ments.append([i, key, eid, name, sentiment, relevance])
            n += 1
    wm: dict[str, str] | None = None
    if seen is not None:
        for origin, at in newest.items():
            if origin not in seen or at > seen[origin]:
                seen[origin] = at
        if seen:
            wm = dict(sorted((origin_name(o), format_time(t)) for o, t in seen.items()))
    keys = watermark_keys(count_partitions)
    records: list[tuple[bytes, bytes]] = []
    for dest in sorted(per if wm is None else set(per) | set(range(count_partitions))):
        rows, ments = per.get(dest, ([], []))
        chunks = _chunks(rows, ments) or [([], [])]
        for c, (r, m) in enumerate(chunks):
            body: dict[str, Any] = {"v": RECORD_VERSION, "i": r, "m": m}
            if wm is not None and c == len(chunks) - 1:
                body["wm"] = wm
            records.append((keys[dest], json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()))
    return records, n, bad, newest


#: what :func:`entity_records` reads of a scored item: id, event time, source, title, url, text, model version,
#: raw partition, and its entities as (entity id, name, sentiment, relevance)
ScoredView = tuple[
    str, datetime, str, str, "str | None", str, str, "int | None", list[tuple["str | None", str, str, int]]
]


def _scored_view(value: bytes | None, future: datetime) -> ScoredView:
    """The fields of a ``finsent.scored`` value the entity stage uses, read straight from its JSON.

    :func:`~finsent.core.events.decode_scored` validates every field of the item and builds it (~40 us of the
    ~60 us per item this side cost in ``bench entities --plumbing``); the scorer that wrote the record ran the same
    checks on the raw item. This reads only what it needs, with the checks that guard the entity stage: types, a
    non-empty id, readable times, none beyond :data:`~finsent.core.events.MAX_FUTURE_SKEW` ahead (one would move
    the watermark to the future). Anything unexpected goes to ``decode_scored``, whose answer (its fields, or an
    :class:`~finsent.core.events.InvalidEvent` with a reason) is then taken: a foreign or older record is judged
    exactly as before."""
    try:
        obj = json.loads(value or b"")
        item_id = obj["id"].strip()
        source, text, version = obj["source"], obj["text"], obj["model_version"]
        title, url = obj.get("title"), obj.get("url")
        published, raw_partition = obj.get("published_at"), obj.get("raw_partition")
        if not (
            item_id
            and type(source) is str
            and type(text) is str
            and type(version) is str
            and (title is None or type(title) is str)
            and (url is None or type(url) is str)
            and (raw_partition is None or (type(raw_partition) is int and raw_partition >= 0))
        ):
            raise TypeError("not the scorer's shape")
        event_time = parse_time(published if published is not None else obj["ingested_at"], "event time")
        if event_time > future:
            raise ValueError("in the future")
        entities = []
        for e in obj.get("entities") or ():
            eid, name, sentiment, relevance = e.get("entity_id"), e["name"], e["sentiment"], e.get("relevance") or 0
            if not ((eid is None or type(eid) is str) and type(name) is str and type(sentiment) is str) or type(
                relevance
            ) not in (int, float):
                raise TypeError("not the scorer's entity shape")
            entities.append((eid, name, sentiment, int(relevance)))
        return item_id, event_time, source, title or "", url, text, version, raw_partition, entities
    except Exception:  # noqa: BLE001 - any surprise: the full decoder decides, with its reason
        s = decode_scored(value or b"")
        it = s.item
        ents = [(e.entity_id, e.name, e.sentiment, int(e.relevance)) for e in s.entities]
        event_time = it.published_at or it.ingested_at
        return it.id, event_time, it.source, it.title or "", it.url, it.text, s.model_version, s.raw_partition, ents


def _chunks(rows: list[list[Any]], ments: list[list[Any]]) -> list[tuple[list[list[Any]], list[list[Any]]]]:
    """One partition's items and mentions split into records of at most :data:`ITEMS_PER_RECORD` items (mentions
    re-indexed per record): a record stays far below Kafka's 1 MB however long the texts."""
    if len(rows) <= ITEMS_PER_RECORD:
        return [(rows, ments)] if rows else []
    out: list[tuple[list[list[Any]], list[list[Any]]]] = []
    for lo in range(0, len(rows), ITEMS_PER_RECORD):
        out.append((rows[lo : lo + ITEMS_PER_RECORD], []))
    for m in ments:
        chunk, i = divmod(m[0], ITEMS_PER_RECORD)
        out[chunk][1].append([i, *m[1:]])
    return out


@functools.lru_cache(maxsize=64)
def _partition_finder(partitions: int) -> Callable[[str], int]:
    """``key -> partition`` as the default partitioner (murmur2) places it, memoised per key (names repeat)."""
    from kafka.partitioner.default import murmur2

    @functools.lru_cache(maxsize=65536)
    def owner(key: str) -> int:
        return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % max(1, partitions)

    return owner


@functools.lru_cache(maxsize=64)
def _watermark_keys(partitions: int) -> tuple[bytes, ...]:
    from kafka.partitioner.default import murmur2

    keys: list[bytes] = []
    for i in range(partitions):
        j = 0
        while (murmur2(f"\x00wm{j}".encode()) & 0x7FFFFFFF) % partitions != i:
            j += 1
        keys.append(f"\x00wm{j}".encode())
    return tuple(keys)


def watermark_keys(partitions: int) -> list[bytes]:
    """One key per partition of the entity counts topic, found so that the default partitioner (murmur2 of the
    key, as Kafka's Java client and aiokafka compute it) puts key ``i`` on partition ``i``. The leading NUL keeps
    them apart from every entity key (which version 1 records were keyed by)."""
    return list(_watermark_keys(max(1, partitions)))


def watermark_records(keys: Sequence[bytes], newest: dict[Origin, datetime]) -> list[tuple[bytes, bytes]]:
    """The sender's newest event time per origin (see :data:`Origin`), alone, to every partition of the entity
    counts topic (a version 2 record without mentions; :func:`entity_records` with ``seen`` puts it in the
    batch's records instead)."""
    if not newest:
        return []
    named = dict(sorted((origin_name(o), format_time(t)) for o, t in newest.items()))
    body = json.dumps({"v": RECORD_VERSION, "i": [], "m": [], "wm": named}, separators=(",", ":")).encode()
    return [(k, body) for k in keys]


@dataclass(frozen=True, slots=True)
class Pending:
    """A mention waiting in the reorder buffer, with the text novelty needs (dropped once it is released)."""

    mention: Mention
    text: str


_pending_mention, _pending_text = Pending.__dict__["mention"].__set__, Pending.__dict__["text"].__set__


def _make_pending(mention: Mention, text: str) -> Pending:
    """``Pending(mention, text)`` through the slots' setters (see :func:`~finsent.alerts.entity_detector.make_mention`:
    one per decoded mention)."""
    p = object.__new__(Pending)
    _pending_mention(p, mention)
    _pending_text(p, text)
    return p


def decode_batch(value: bytes | str | None) -> tuple[list[Pending], dict[str, datetime] | None]:
    """An entity counts record's mentions and the watermark it carries ({origin name: newest event time}, see
    :func:`origin_name`; None when it carries none). Reads version 2 (:func:`entity_records`) and version 1 (one
    entity's mentions, with or without the model version column, or a watermark alone: what a topic may still
    hold after an upgrade). :class:`BadRecord` (a ValueError) with a dead-letter reason on anything else."""
    if not value:
        raise BadRecord("empty_message", "an empty entity counts record")
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRecord("not_json", f"entity counts record: {exc}") from None
    if not isinstance(obj, dict):
        raise BadRecord("not_object", f"entity counts record is a JSON {type(obj).__name__}, not an object")
    version = obj.get("v", 1)
    try:
        if version == RECORD_VERSION:
            return _decode_v2(obj)
        if version == 1:
            return _decode_v1(obj)
    except BadRecord:
        raise
    except InvalidEvent as exc:
        raise BadRecord("bad_time", str(exc)) from None
    except KeyError as exc:
        raise BadRecord("missing_field", f"entity counts record without {exc}") from None
    except (TypeError, ValueError, IndexError, AttributeError) as exc:
        raise BadRecord("bad_type", f"entity counts record: {type(exc).__name__}: {exc}") from None
    raise BadRecord(
        "unsupported_version",
        f"entity counts record version {version!r}; this worker reads 1 and {RECORD_VERSION} (a newer finsent "
        "wrote it: upgrade this worker)",
    )


def _watermark(wm: Any) -> dict[str, datetime]:
    return {str(p): parse_time(t, "wm") for p, t in dict(wm).items()}


def _decode_v2(obj: dict[str, Any]) -> tuple[list[Pending], dict[str, datetime] | None]:
    items = []
    for row in obj["i"]:
        item_id, at, source, title, url, text, version = row
        items.append(
            (
                str(item_id),
                parse_time(at, "at"),
                str(source),
                str(title or ""),
                None if url is None else str(url),
                str(text or ""),
                str(version or ""),
            )
        )
    out = []
    for i, key, eid, name, sentiment, relevance in obj["m"]:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(items):
            raise BadRecord("bad_type", f"mention refers to item {i!r} of {len(items)}")
        key, name = str(key), str(name)
        if not key:
            raise BadRecord("bad_type", "empty entity key")
        if sentiment not in SENTIMENTS:
            raise BadRecord("bad_type", f"sentiment {sentiment!r} not in {SENTIMENTS}")
        item_id, ts, source, title, url, text, version = items[i]
        m = make_mention(
            item_id,
            ts,
            key,
            None if eid is None else str(eid),
            name,
            sentiment,
            int(relevance),
            100,
            source,
            title,
            url,
            version,
        )
        out.append(_make_pending(m, text))
    wm = obj.get("wm")
    return out, (_watermark(wm) if wm is not None else None)


def _decode_v1(obj: dict[str, Any]) -> tuple[list[Pending], dict[str, datetime] | None]:
    if "wm" in obj:
        return [], _watermark(obj["wm"])
    key, eid, name = str(obj["key"]), obj.get("id"), str(obj["name"])
    if not key:
        raise BadRecord("bad_type", "empty entity key")
    out = []
    for row in obj["m"]:
        # a 9th column, the model version, since the alerts name it (records from before decode with "")
        item_id, at, sentiment, relevance, source, title, url, text = row[:8] if len(row) == 9 else row
        version = str(row[8] or "") if len(row) == 9 else ""
        ts = parse_time(at, "at")
        if sentiment not in SENTIMENTS:
            raise BadRecord("bad_type", f"sentiment {sentiment!r} not in {SENTIMENTS}")
        m = Mention(
            str(item_id),
            ts,
            key,
            None if eid is None else str(eid),
            name,
            str(sentiment),
            int(relevance),
            100,
            str(source),
            str(title or ""),
            None if url is None else str(url),
            version,
        )
        out.append(Pending(m, str(text or "")))
    return out, None


def decode_record(value: bytes | str) -> list[Pending] | dict[str, datetime]:
    """The mentions of one entity counts record, or, for a record without mentions, the watermark it carries
    (:func:`decode_batch` gives both); :class:`BadRecord` (a ValueError) on a malformed one."""
    pending, wm = decode_batch(value)
    return pending if pending or wm is None else wm


# --- the owner side ---------------------------------------------------------------------------------------------
def make_entity_detector(
    entities: EntitySettings, on_bucket: Callable[[Any], None] | None = None, watchlist: Watchlist | None = None
) -> EntityDetector:
    """The detector the settings describe (``watchlist``: the loaded ``entities.entity_watchlist``, if any)."""
    return EntityDetector(
        bucket_s=entities.entity_bucket_s,
        window_buckets=entities.entity_window_buckets,
        lateness_s=entities.entity_lateness_s,
        cooldown_s=entities.entity_cooldown_s,
        thresholds=Thresholds(),
        watchlist=watchlist,
        watch_mode=entities.entity_watch_mode if watchlist is not None else "all",
        on_bucket=on_bucket,
    )


class EntityUnit:
    """What one partition of the entity counts topic owns: its reorder buffer, watermark, novelty and detector.

    The partition, not the worker, is the unit: a worker may own several, and a watermark is ordered after the
    mentions it covers only within one partition. Which worker owns a partition changes nothing in what its
    unit computes, so 1 or 3 workers raise the same alerts.
    """

    def __init__(self, owner: EntityAlerts, via: int, detector: EntityDetector) -> None:
        self.owner = owner
        self.via = via
        self.detector = detector
        self.novelty = Novelty()
        self.pending: list[Pending] = []
        self.released_upto: datetime | None = None  # mentions before this were released: later ones are late
        #: (item id, entity key) of the mentions a restore counted in closed buckets: redelivered, not late
        self.restored: set[tuple[str, str]] = set()
        #: the newest event time per input (an origin -- "scored/raw" partition pair, or "scored" from a record
        #: without its raw partition -- from watermark records; "" = the mentions themselves) and the clock
        #: reading when it last moved forward (None: never heard from)
        self.inputs: dict[str, tuple[datetime | None, float]] = {}
        #: whether the raw partitions ("/1": raw partition 1, not heard from yet) were added as inputs to wait for
        self._raw_awaited = False

    def offer(self, pending: Iterable[Pending]) -> list[Alert]:
        o = self.owner
        newest: datetime | None = None
        counted: dict[str, int] = {}
        for p in pending:
            m = p.mention
            if self.released_upto is not None and m.at < self.released_upto:
                if (m.item_id, m.key) in self.restored:
                    o.redelivered += 1  # counted by the restore from the store: the broker redelivered it
                    continue
                o.late += 1
                o.metrics.late.inc()
                if o.late & (o.late - 1) == 0:  # the 1st, 2nd, 4th, 8th...: visible, never a flood
                    log.warning(
                        "mention of %s in item %s at %s came after its bucket closed (released up to %s; "
                        "FINSENT_ENTITY_LATENESS_S=%d): ignored (%d late so far)",
                        m.key,
                        m.item_id,
                        format_time(m.at),
                        format_time(self.released_upto),
                        o.settings.entities.entity_lateness_s,
                        o.late,
                    )
                continue
            self.pending.append(p)
            o.mentions += 1
            counted[m.sentiment] = counted.get(m.sentiment, 0) + 1
            newest = m.at if newest is None or m.at > newest else newest
        for sentiment, k in counted.items():  # once per sentiment and record, not per mention
            o.metrics.mention_counter(sentiment).inc(k)
        if newest is not None:
            self._advance_input("", newest)
        return self.tick()

    def offer_watermark(self, newest: dict[str, datetime]) -> list[Alert]:
        if self.owner.partitions and not any(k for k in self.inputs):
            now = self.owner.clock()  # every scored partition holds the watermark until heard from
            self.inputs.update({str(i): (None, now) for i in range(self.owner.partitions)})
        for origin, at in newest.items():
            scored, _, raw = origin.partition("/")
            if raw and not self._raw_awaited and self.owner.partitions:
                # records name their raw partition: every raw partition holds the watermark until heard from too
                # (a backlog's fetches may drain one raw partition before reading the other's first record)
                self._raw_awaited = True
                now = self.owner.clock()
                self.inputs.update({f"/{i}": (None, now) for i in range(self.owner.partitions)})
            for waiting in (scored, f"/{raw}") if raw else ():
                if waiting in self.inputs and self.inputs[waiting][0] is None:
                    del self.inputs[waiting]  # heard from: its (scored, raw) pairs hold the watermark from now on
            self._advance_input(origin, at)
        return self.tick()

    def _advance_input(self, name: str, at: datetime) -> None:
        old = self.inputs.get(name)
        if old is None or old[0] is None or at > old[0]:
            self.inputs[name] = (at, self.owner.clock())

    def watermark(self) -> datetime | None:
        """The event time every input has reached: the oldest of the inputs that moved in the last ``idle_s``
        (None while one was never heard from, for at most ``unheard_s``); when none moved (a finished replay, a
        quiet night), the newest event time moving on with the wall clock. Inputs are the origins (scored/raw
        partition pairs) when watermark records arrive, else the mentions themselves."""
        o = self.owner
        parts = {k: v for k, v in self.inputs.items() if k}
        if not parts and not o.partitions:
            parts = self.inputs
        if not parts:
            return None
        now = o.clock()
        active = [at for at, moved in parts.values() if now - moved < (o.idle_s if at else o.unheard_s)]
        if active:
            return None if any(at is None for at in active) else min(at for at in active if at is not None)
        known = [(at, moved) for at, moved in parts.values() if at is not None]
        if not known:
            return None
        newest = max(at for at, _ in known)
        return newest + timedelta(seconds=max(0.0, now - max(moved for _, moved in known)))

    def tick(self) -> list[Alert]:
        upto = self.watermark()
        return self._release(upto) if upto is not None else []

    def _release(self, upto: datetime) -> list[Alert]:
        bucket_s = self.detector.bucket_s
        wm = int(((upto - self.owner.lateness) - EPOCH).total_seconds() // bucket_s) * bucket_s
        cut = EPOCH + timedelta(seconds=wm)  # buckets that end at or before the watermark close
        if self.released_upto is not None and cut <= self.released_upto:
            return []
        ready = sorted(
            (p for p in self.pending if p.mention.at < cut),
            key=lambda p: (p.mention.at, p.mention.item_id, p.mention.key),
        )
        self.pending = [p for p in self.pending if p.mention.at >= cut]
        new: list[Alert] = []
        for p in ready:
            m = p.mention
            story = self.novelty.observe(m.item_id, m.at, m.source, m.title, p.text, [m.key])
            new += self.detector.add(
                make_mention(  # replace(m, novelty=..., title=...) at half the cost
                    m.item_id,
                    m.at,
                    m.key,
                    m.entity_id,
                    m.name,
                    m.sentiment,
                    m.relevance,
                    story.novelty[m.key],
                    m.source,
                    story_title(m.title, p.text),
                    m.url,
                    m.model_version,
                )
            )
        new += self.detector.advance(upto)
        self.released_upto = cut
        return new


class EntityAlerts:
    """One worker's entity state: a unit per owned partition of the entity counts topic, and the outputs."""

    def __init__(
        self,
        settings: Settings,
        store_getter: Callable[[], Any] | None = None,
        sinks: Sequence[Callable[[Sequence[Alert], dict[str, EntityState]], None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        idle_s: float = IDLE_S,
        unheard_s: float = UNHEARD_S,
        partitions: int | None = None,
    ) -> None:
        self.settings = settings
        self.watchlist = None
        if settings.entities.entity_watchlist:
            from finsent.alerts.watchlist import Watchlist

            self.watchlist = Watchlist(settings.entities.entity_watchlist)  # a broken file: ConfigError naming the line
        self.units: dict[int, EntityUnit] = {}
        self.store_getter = store_getter
        self.sinks = list(sinks) if sinks is not None else None
        self.clock = clock
        self.metrics = entity_metrics()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finsent-entity-alerts")
        self.lateness = timedelta(seconds=settings.entities.entity_lateness_s)
        self.idle_s = idle_s
        self.unheard_s = unheard_s
        #: the scored topic's partitions (each one's watermark is awaited); None: the mentions drive it alone
        self.partitions = partitions
        self.alerts: list[Alert] = []  # raised by this worker (bounded: tests and the demo read it)
        self.unstored: list[Alert] = []
        self.bad_values = 0
        self.late = 0
        self.mentions = 0
        self.restored_units = 0
        self.restore_s = 0.0  # seconds spent restoring units from the store (a start-up cost: the benches show it)
        self.redelivered = 0  # mentions a restore had counted, read again from the broker (ignored, not late)
        #: a restore closes the buckets of what was scored before this instant (see :meth:`_rebuild`)
        self.started = utcnow()
        self._restore_cache: tuple[float, datetime | None, dict[int, tuple[EntityUnit, list[Alert]]]] | None = None

    def unit(self, via: int) -> EntityUnit:
        u = self.units.get(via)
        if u is None:
            u = self.units[via] = EntityUnit(
                self, via, make_entity_detector(self.settings.entities, watchlist=self.watchlist)
            )
        return u

    def partition_of(self, key: str) -> int:
        """The entity counts partition that owns ``key`` (the default partitioner: murmur2 of the key, as
        :func:`watermark_keys`; :func:`entity_records` sends each mention there)."""
        return _partition_finder(max(1, self.partitions or self.settings.kafka.partitions))(key)

    def _rebuild(self) -> tuple[datetime | None, dict[int, tuple[EntityUnit, list[Alert]]]]:
        """Every partition's unit rebuilt from the store in one pass (see the module doc, *Restart*): the stored
        mentions of :meth:`~finsent.alerts.entity_detector.EntityDetector.history_s` of event time up to the
        newest stored one, read a day at a time (memory: one day of items, not four weeks) and replayed in
        (event time, item id, entity key) order into the unit of the partition that owns each entity. Returns
        the newest stored event time and, per partition, its unit and the alerts its replay raised."""
        from finsent.alerts.backtest import stored_mentions

        store = self._store()
        if store is None:
            return None, {}
        # the newest event time of what was scored before this worker started: the previous life's watermark. Not
        # the store's newest: on a fresh start the scorer of this very run fills it before the entity stage reads
        # its first record, and a raw partition drained ahead (a backfill) put it weeks past mentions still in the
        # stream -- closed as restored, they came late (933 of 5,340 in the bench)
        rows = store.query(
            f"SELECT max(event_time) FROM {store.database}.items "
            "WHERE scored_at <= toDateTime({started:UInt32}, 'UTC')",  # seconds: the start's own second counts
            {"started": int(self.started.timestamp())},
        )
        newest = rows[0][0] if rows and rows[0] else None
        if not isinstance(newest, datetime) or newest.timestamp() <= 0:
            return None, {}
        newest = min(newest, utcnow() + timedelta(minutes=5))
        probe = make_entity_detector(self.settings.entities, watchlist=self.watchlist)
        bucket_s = probe.bucket_s
        cut = EPOCH + timedelta(seconds=int(((newest - self.lateness) - EPOCH).total_seconds() // bucket_s) * bucket_s)
        units: dict[int, tuple[EntityUnit, list[Alert]]] = {}
        # whole seconds: the day windows below then match the store's day numbers exactly
        start = (newest - timedelta(seconds=probe.history_s())).replace(microsecond=0)
        day = timedelta(days=1)
        end = newest + timedelta(seconds=1)
        # the days of the history that hold a mention: a day without one costs no read of its items (a young or
        # sparse store: 28 empty days were 56 queries, most of a first start's restore)
        rows = store.query(
            f"SELECT DISTINCT intDiv(toUInt32(event_time) - {{lo:UInt32}}, 86400) FROM {store.database}.mentions "
            "WHERE event_time >= toDateTime({lo:UInt32}, 'UTC') AND event_time < toDateTime({hi:UInt32}, 'UTC')",
            {"lo": int(start.timestamp()), "hi": int(end.timestamp()) + 1},
        )
        days = sorted({int(r[0]) for r in rows})
        for d in days:
            lo = start + d * day
            hi = min(lo + day, end)
            for p in stored_mentions(store, lo, hi):  # sorted by (event time, item id, entity key)
                m = p.mention
                via = self.partition_of(m.key)
                entry = units.get(via)
                if entry is None:
                    unit = EntityUnit(self, via, make_entity_detector(self.settings.entities, watchlist=self.watchlist))
                    entry = units[via] = (unit, [])
                unit, raised = entry
                if m.at >= cut:
                    unit.pending.append(Pending(m, p.text))  # an open bucket: the live watermark releases it
                    continue
                story = unit.novelty.observe(m.item_id, m.at, m.source, m.title, p.text, [m.key])
                raised += unit.detector.add(
                    replace(m, novelty=story.novelty[m.key], title=story_title(m.title, p.text))
                )
                # every one: the entity stage may lag the store by any amount (its scored offsets are its own),
                # so all it re-reads after the restart may be a redelivery (memory: one pair per stored mention)
                unit.restored.add((m.item_id, m.key))
        for unit, raised in units.values():
            raised += unit.detector.advance(newest)
            unit.released_upto = cut
        return newest, units

    def restore(self, via: int) -> list[Alert]:
        """Make partition ``via``'s unit from the store (see the module doc, *Restart*); returns the alerts of
        episodes in progress that the store does not hold (to be sent). Blocking: run off the loop. One pass over
        the store serves every partition restored within :data:`RESTORE_REUSE_S`."""
        if via in self.units:
            return []
        if self.store_getter is None:
            self.unit(via)
            return []
        t0 = time.monotonic()
        cached = self._restore_cache
        try:
            if cached is None or self.clock() - cached[0] >= RESTORE_REUSE_S:
                newest, rebuilt = self._rebuild()
                cached = self._restore_cache = (self.clock(), newest, rebuilt)
        except Exception as exc:  # noqa: BLE001 - a store that cannot be read must not stop the worker
            log.warning(
                "entity partition %d starts cold: its baselines could not be read from the store (%s); names are "
                "judged by the prior until their history refills (check the store, then restart the worker)",
                via,
                exc,
            )
            self.unit(via)
            return []
        _, newest, rebuilt = cached
        entry = rebuilt.pop(via, None)
        if entry is None or newest is None:
            self.unit(via)
            return []
        u, raised = entry
        self.units[via] = u
        active = u.detector.states()
        resend = [a for a in raised if str((a.evidence or {}).get("entity_key")) in active]
        if resend:
            store = self._store()
            stored = {
                r[0]
                for r in store.query(
                    f"SELECT DISTINCT id FROM {store.database}.alerts WHERE has({{ids:Array(String)}}, id)",
                    {"ids": [a.id for a in resend]},
                )
            }
            resend = [a for a in resend if a.id not in stored]
        self.restored_units += 1
        self.restore_s += time.monotonic() - t0
        log.info(
            "entity partition %d restored from the store in %.1f s: mentions up to %s, %d entities, %d waiting in "
            "open buckets, %d in an episode, %d alert(s) not delivered before the restart sent now",
            via,
            time.monotonic() - t0,
            format_time(newest),
            len(u.detector),
            len(u.pending),
            len(active),
            len(resend),
        )
        return resend

    def close(self) -> None:
        """The worker is closing: start no other delivery (one in progress ends in its thread)."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    def offer(self, pending: Iterable[Pending], via: int = 0) -> list[Alert]:
        """Buffer mentions read from partition ``via``; returns the alerts of the buckets its watermark closes."""
        return self._raised(self.unit(via).offer(pending))

    def offer_watermark(self, newest: dict[str, datetime], via: int = 0) -> list[Alert]:
        """A sender's newest event time per origin, read from partition ``via``; returns new alerts."""
        return self._raised(self.unit(via).offer_watermark(newest))

    def tick(self) -> list[Alert]:
        """Release what each watermark passed (the timer calls this: quiet streams close their buckets too)."""
        if self._restore_cache is not None and self.clock() - self._restore_cache[0] >= RESTORE_REUSE_S:
            self._restore_cache = None  # the units rebuilt for partitions this worker was not given
        return self._raised([a for u in list(self.units.values()) for a in u.tick()])

    def states(self) -> dict[str, EntityState]:
        """The entities in an alert episode now, over every unit."""
        return {k: st for u in self.units.values() for k, st in u.detector.states().items()}

    def _raised(self, new: list[Alert]) -> list[Alert]:
        if new:
            self.alerts = (self.alerts + new)[-1000:]
            for a in new:
                self.metrics.alerts.labels(severity=a.severity).inc()
        self.metrics.tracked.set(sum(len(u.detector) for u in self.units.values()))
        return new

    # -- output (blocking: run off the event loop) ---------------------------------------------------
    def _store(self) -> Any:
        return self.store_getter() if self.store_getter is not None else None

    def deliver(self, alerts: Sequence[Alert], states: dict[str, EntityState]) -> None:
        """Write alerts to the store (idempotent by id; kept and retried when it is down), then run the sinks."""
        store = None
        try:
            store = self._store()
        except Exception:  # noqa: BLE001 - a store that cannot open is retried with the next delivery
            log.exception("could not open the store for entity alerts")
        batch = self.unstored + list(alerts)
        if batch and store is not None:
            try:
                store.insert_alerts(batch)
                self.unstored = []
            except Exception:  # noqa: BLE001
                self.unstored = batch[-10_000:]
                log.exception(
                    "could not store %d entity alert(s); retrying with the next delivery (they are on "
                    "the alerts topic already)",
                    len(batch),
                )
        elif batch:
            self.unstored = batch[-10_000:]
        if self.sinks is None:
            self.sinks = build_entity_sinks(self.settings)
        for sink in self.sinks:
            try:
                sink(alerts, states)
            except Exception:  # noqa: BLE001 - one sink failing must not stop the others
                log.exception("entity alert sink %r failed", sink)


# --- Prometheus: aggregates, and the names alerting now only ----------------------------------------------------
@dataclass(frozen=True)
class EntityMetrics:
    mentions: Any
    late: Any
    tracked: Any
    alerts: Any
    alerting: Any
    active: Any

    def mention_counter(self, sentiment: str) -> Any:
        """``finsent_entity_mentions_total{sentiment}``'s child (``labels()`` per mention was 3% of the loop)."""
        return _mention_children.get(sentiment) or _mention_children.setdefault(
            sentiment, self.mentions.labels(sentiment=sentiment)
        )


_mention_children: dict[str, Any] = {}


_metrics_lock = threading.Lock()
_metrics: EntityMetrics | None = None


def entity_metrics() -> EntityMetrics:
    """The entity metrics in the default registry (created once per process: several workers in a test share them)."""
    global _metrics
    with _metrics_lock:
        if _metrics is None:
            from prometheus_client import Counter, Gauge

            _metrics = EntityMetrics(
                mentions=Counter(
                    "finsent_entity_mentions", "Entity mentions counted by the entity detector", ["sentiment"]
                ),
                late=Counter(
                    "finsent_entity_mentions_late",
                    "Entity mentions ignored: their event-time bucket "
                    "had closed (later than FINSENT_ENTITY_LATENESS_S)",
                ),
                tracked=Gauge("finsent_entities_tracked", "Entities whose baseline this worker holds"),
                alerts=Counter("finsent_entity_alerts", "Entity alerts raised (one per episode)", ["severity"]),
                alerting=Gauge("finsent_entities_alerting", "Entities in an alert episode on this worker"),
                active=Gauge(
                    "finsent_entity_alert_active",
                    "1 (2 when critical) while an entity is in an alert "
                    f"episode; at most {MAX_ALERTING_LABELS} names, removed when it ends",
                    ["entity", "entity_id"],
                ),
            )
        return _metrics


def _label(text: str | None) -> str:
    return " ".join((text or "").split())[:100]


class EntityGaugeSink:
    """``finsent_entity_alert_active`` for the (at most 50) entities in an episode; labels removed when it ends."""

    def __init__(self, limit: int = MAX_ALERTING_LABELS) -> None:
        self.metrics = entity_metrics()
        self.limit = limit
        self.severity: dict[str, str] = {}
        self._labels: dict[str, tuple[str, str]] = {}

    def __call__(self, alerts: Sequence[Alert], states: dict[str, EntityState]) -> None:
        for a in alerts:
            self.severity[str((a.evidence or {}).get("entity_key") or a.entity_id or a.entity_name)] = a.severity
        self.metrics.alerting.set(len(states))
        shown = sorted(states.values(), key=lambda st: (-st.index, st.key))[: self.limit]
        now: dict[str, tuple[str, str]] = {}
        for st in shown:
            labels = (_label(st.name), _label(st.entity_id))
            now[st.key] = labels
            self.metrics.active.labels(*labels).set(2 if self.severity.get(st.key) == "critical" else 1)
        for key, labels in self._labels.items():
            if key not in now or now[key] != labels:
                with contextlib.suppress(KeyError):
                    self.metrics.active.remove(*labels)
        self._labels = now
        self.severity = {k: v for k, v in self.severity.items() if k in states}


class EntityAlertmanagerSink(AlertmanagerSink):
    """Entity episodes on Alertmanager: posted while active (re-posted every ``repost_s``), resolved when over."""

    def __init__(
        self, url: str, bucket_s: int, dashboard_url: str, repost_s: float = 60.0, timeout_s: float = 5.0
    ) -> None:
        super().__init__(url, bucket_s, dashboard_url, None, timeout_s)
        self.repost_s = repost_s
        self._alert: dict[str, Alert] = {}
        self._posted = 0.0

    def entity_payload(self, a: Alert, ends_in_s: float) -> dict[str, Any]:
        ev = a.evidence or {}
        name = a.entity_name or ""
        link = (
            f"{self.dashboard_url}?var-entity={urllib.parse.quote(str(ev.get('entity_key') or name), safe='')}"
            f"&from={int(a.window_start.timestamp() * 1000)}&to=now"
        )
        lines = [f"- {_headline(h)}{_link(h)}" for h in ev.get("headlines", [])[:5]]
        desc = (
            f"{name}{f' ({a.entity_id})' if a.entity_id else ''}: {a.negative} novel negative stories from "
            f"{len(ev.get('sources', []))} sources between {format_time(a.window_start)} and "
            f"{format_time(a.window_end)} (expected {ev.get('expected_novel_negative', 0)}; index {a.score:.1f}; "
            f"buzz {ev.get('buzz', 0)})."
        )
        if lines:
            desc += "\nTop negative headlines:\n" + "\n".join(lines)
        now = utcnow()
        return {
            "labels": {
                "alertname": ALERTNAME,
                "entity": _label(name),
                "entity_id": _label(a.entity_id),
                "severity": a.severity,
                "source": "stream",
                "kind": "entity",
            },
            "annotations": {
                "summary": f"Negative news surge about {name}",
                "description": desc,
                "index": f"{a.score:.2f}",
                "negative": str(a.negative),
                "dashboard": link,
            },
            "startsAt": format_time(a.fired_at),
            "endsAt": format_time(now + timedelta(seconds=ends_in_s)),
            "generatorURL": link,
        }

    def __call__(self, alerts: Sequence[Alert], states: dict[str, EntityState]) -> None:  # type: ignore[override]
        for a in alerts:
            self._alert[str((a.evidence or {}).get("entity_key") or a.entity_id or a.entity_name)] = a
        body = [self.entity_payload(a, 0) for k, a in list(self._alert.items()) if k not in states]
        self._alert = {k: a for k, a in self._alert.items() if k in states}
        if alerts or body or time.monotonic() - self._posted >= self.repost_s:
            body += [self.entity_payload(a, 3 * self.repost_s) for a in self._alert.values()]
            if body:
                self._posted = time.monotonic()
                self.post(body)


def build_entity_sinks(settings: Settings) -> list[Callable[[Sequence[Alert], dict[str, EntityState]], None]]:
    """Gauges always; Alertmanager when ``settings.alerts.alertmanager_url`` is set."""
    sinks: list[Callable[[Sequence[Alert], dict[str, EntityState]], None]] = [EntityGaugeSink()]
    if settings.alerts.alertmanager_url:
        sinks.append(
            EntityAlertmanagerSink(
                settings.alerts.alertmanager_url,
                settings.entities.entity_bucket_s,
                settings.entities.entity_dashboard_url,
            )
        )
    return sinks


def _alert_key(a: Alert) -> bytes:
    return str((a.evidence or {}).get("entity_key") or a.entity_id or a.entity_name or "").encode("utf-8")


def attach(app: Any, ctx: WorkerContext, **kwargs: Any) -> EntityAlerts | None:
    """Add the mention and detect agents and the watermark timer to the Faust ``app`` (see the module doc).

    Registered as extension ``"entity_alerts"``; nothing is added when ``FINSENT_ENTITY_ALERTS`` is off.
    """
    settings = ctx.settings
    if not settings.entities.entity_alerts:
        return None
    kwargs.setdefault("partitions", settings.kafka.partitions)
    state = EntityAlerts(settings, store_getter=kwargs.pop("store_getter", None) or ctx.store.get, **kwargs)
    scored = app.topic(settings.kafka.topic_scored, key_type=bytes, value_type=bytes)
    # declared by ensure_topics with the other finsent topics (stream.kafka.finsent_topics: at start and after a
    # broker restart), not by Faust: one more internal topic created at start-up delayed the app's start
    counts = app.topic(settings.kafka.topic_entity_counts, key_type=bytes, value_type=bytes)
    alerts_topic = app.topic(settings.kafka.topic_alerts, key_type=bytes, value_type=bytes)
    ctx.extensions.register("entity_alerts", state, close=state.close)
    loop_lock = asyncio.Lock()  # the detect agent and the timer take turns on the detector and the outputs

    async def publish(new: list[Alert]) -> None:
        await send_confirmed(alerts_topic, [(_alert_key(a), a.to_json()) for a in new], "entity alerts")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(state.pool, state.deliver, new, state.states())

    count_partitions = settings.kafka.partitions
    dlq = app.topic(settings.kafka.topic_dlq, key_type=bytes, value_type=bytes)

    @app.agent(scored, name="finsent.entities.mentions")
    async def mentions(stream: Any) -> None:
        seen: dict[Origin, datetime] = {}  # newest event time per origin this worker has read
        async for events in stream.take_events(max(settings.worker.batch_max * 4, 256), within=MENTIONS_WITHIN_S):
            records, _, bad, _ = entity_records(
                (e.value for e in events), (e.message.partition for e in events), count_partitions, seen
            )
            state.bad_values += bad
            # one record per partition, the watermark in it after the mentions it covers; confirmed before take
            # acks this batch
            await send_confirmed(counts, records, "entity mentions")

    @app.agent(counts, name="finsent.entities.detect")
    async def detect(stream: Any) -> None:
        async for event in stream.events():
            try:
                pending, wm = decode_batch(event.value)
            except BadRecord as exc:
                state.bad_values += 1
                if state.bad_values & (state.bad_values - 1) == 0:  # the 1st, 2nd, 4th...: visible, never a flood
                    log.warning(
                        "entity counts record at partition %d offset %d dead-lettered to %s (%s; %d so far)",
                        event.message.partition,
                        event.message.offset,
                        settings.kafka.topic_dlq,
                        exc,
                        state.bad_values,
                    )
                body = dead_letter(
                    event.value,
                    exc.reason,
                    exc.detail,
                    settings.kafka.topic_entity_counts,
                    event.message.partition,
                    event.message.offset,
                )
                await send_confirmed(dlq, [(event.key or b"", body)], "entity dead letter")
                continue
            async with loop_lock:
                via = event.message.partition
                if via not in state.units:  # first record of this partition: start from the store, not cold
                    loop = asyncio.get_running_loop()
                    resend = await loop.run_in_executor(state.pool, state.restore, via)
                    if resend:
                        await publish(state._raised(resend))
                new = state.offer(pending, via) if pending else []
                if wm is not None:
                    new += state.offer_watermark(wm, via)
                if new:
                    await publish(new)  # confirmed before the next record is taken (and this one acked)

    last_sink = [0.0]

    @app.timer(interval=1.0)
    async def watermark() -> None:
        async with loop_lock:
            new = state.tick()
            if new or time.monotonic() - last_sink[0] >= 5.0:
                last_sink[0] = time.monotonic()
                await publish(new)

    return state


__all__ = [
    "ALERTNAME",
    "BadRecord",
    "EntityAlertmanagerSink",
    "EntityAlerts",
    "EntityGaugeSink",
    "EntityUnit",
    "MAX_ALERTING_LABELS",
    "Pending",
    "attach",
    "build_entity_sinks",
    "RECORD_VERSION",
    "decode_batch",
    "decode_record",
    "entity_metrics",
    "entity_records",
    "make_entity_detector",
    "origin_name",
    "watermark_keys",
    "watermark_records",
]
