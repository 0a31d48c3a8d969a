"""Negative-news surges about one named entity, on event time: per-entity buckets, a baseline, one alert per episode.

A topic detector is blind to a single name (60 negative JPMorgan headlines landed in six topics, issue 26). This
detector is keyed by entity and fed one :class:`Mention` per (item, entity), each with its sentiment toward that
entity, its relevance (0-100) and its novelty (0-100, :mod:`finsent.alerts.novelty`).

**Buckets on event time.** A mention lands in the bucket (``bucket_s``, default 1 h) of its event time
(``published_at``, else ``ingested_at``). A bucket is *closed* when the watermark -- the largest event time seen
minus ``lateness_s`` (default 1 h) -- passes its end; only then is it counted and tested. A mention that arrives
within the lateness updates its bucket; one that arrives later (its bucket already closed) is counted in
:attr:`EntityDetector.late` and otherwise **ignored**: a closed bucket never changes, so an alert once raised
stays raised, and a replay gives the alerts a live run gave. :meth:`EntityDetector.flush` closes every open
bucket (the end of a backtest). The same mention (item id) twice in one bucket counts once. The watermark only
moves forward, so an event time far in the future would make every later mention "late": times beyond a small
clock skew must be refused before they reach the detector (the event-time stage of issue 26 does that).

**Per entity and bucket** (:class:`BucketStats`, handed to ``on_bucket`` for the entity series): buzz (every
mention), counts by sentiment, novel mentions (novelty >= ``novel_min``, default 100: the first telling of a
story for this entity) and novel negatives, the relevance-weighted net sentiment
``sum(rel * (pos - neg)) / sum(rel)`` in [-1, 1], and the sources of the novel negatives.

**The index** is a Bayesian rate test of the novel-negative count of the last ``window_buckets`` buckets (default
6: 6 h) against the entity's own history. The entity's rate per bucket has a Gamma prior -- ``prior_rate``
novel negatives per bucket with the weight of ``prior_buckets`` buckets -- updated by exponentially decayed sums
(half-life ``halflife_buckets``, a week) of the buckets *before* the window, so a surge never raises its own
bar. The window's count then has a negative-binomial predictive distribution, and the index is the surprise
``-log10 P(X >= k)``. A name never seen before is judged by the prior alone (0.1 per hour: 0.6 expected in 6 h,
so 3 stories score about 1.3, far below the default 4); a name seen daily needs a surge against its own level.
News is about 2:1 positive and some names are always in the news: a baseline-relative test is what makes one
threshold fit all of them.

**Firing** needs, over the window (:class:`Thresholds`): index >= ``score``; at least ``min_novel_negative``
novel negative mentions from at least ``min_sources`` distinct sources (one outlet's series of posts is not
corroboration); the count at least ``min_ratio`` times its expectation; and novel negatives at least
``min_negative_share`` of the window's novel mentions of the entity (big *positive* news brings a few
misread negatives along with a flood of buzz; it must not fire). Mentions below ``min_relevance`` (a name in
passing) count as buzz only.

**One alert per episode.** An entity that fires is in an episode until ``cooldown_s`` (default 24 h) of closed
buckets pass without the firing condition holding; then it re-arms. The alert's ``fired_at`` is the event time
of the detection (the window's end), not the wall clock, so live and backtest alerts are equal, with an id
stable per (entity, episode start).

Memory: open buckets span at most ``lateness_s`` plus one bucket; per entity a window of ``window_buckets``
summaries and two decayed sums; an entity unseen for ``forget_after_s`` (default 30 days) is forgotten.
Deterministic: the same mentions give the same alerts whatever their arrival order within the lateness.

Example::

    >>> from datetime import datetime, timedelta, timezone
    >>> det = EntityDetector()
    >>> t0 = datetime(2023, 1, 19, 20, 0, tzinfo=timezone.utc)
    >>> src = ["CoinDesk", "Decrypt", "Cointelegraph"]
    >>> ms = [Mention(f"g{i}", t0 + timedelta(minutes=7 * i), "~genesis", None, "genesis", "negative",
    ...               source=src[i % 3], title=f"Genesis story {i}") for i in range(12)]
    >>> alerts = [a for m in ms for a in det.add(m)] + det.flush()
    >>> [(a.kind, a.entity_name, a.negative, a.evidence["sources"]) for a in alerts]
    [('entity', 'genesis', 9, ['CoinDesk', 'Cointelegraph', 'Decrypt'])]
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from finsent.core.events import SENTIMENTS, Alert, EntityMention, format_time, stable_id

if TYPE_CHECKING:
    from finsent.alerts.watchlist import Watchlist

DETECTOR_NAME = "entity_surge"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def entity_key(entity_id: str | None, name: str) -> str:
    """One key per entity: its id when linked, else ``"~"`` + its normalised name (as the linker groups them)."""
    return entity_id if entity_id else "~" + name


def story_title(title: str, text: str, chars: int = 300) -> str:
    """What an alert quotes for a story: its title, or the start of its text when it has none (news without a
    headline field, tweets: an alert with blank headlines told a reader nothing)."""
    if title.strip():
        return title
    words = " ".join(text.split())
    return words if len(words) <= chars else words[: chars - 1].rsplit(" ", 1)[0] + "…"


@dataclass(frozen=True, slots=True)
class Mention:
    """One (item, entity) the detector counts: the entity, how the item treats it, and where the item came from."""

    item_id: str
    at: datetime  # event time: published_at, else ingested_at
    key: str
    entity_id: str | None
    name: str
    sentiment: str
    relevance: int = 100
    novelty: int = 100
    source: str = ""
    title: str = ""
    url: str | None = None
    #: the model version that scored the item ("" when unknown: a record or stored row without it)
    model_version: str = ""

    @classmethod
    def of(
        cls, m: EntityMention, item_id: str, at: datetime, source: str, title: str, url: str | None, novelty: int
    ) -> Mention:
        """The detector's record for one :class:`~finsent.core.events.EntityMention` of an item."""
        return cls(
            item_id,
            at,
            entity_key(m.entity_id, m.name),
            m.entity_id,
            m.name,
            m.sentiment,
            int(m.relevance),
            int(novelty),
            source,
            title,
            url,
        )


_M = tuple(Mention.__dict__[name].__set__ for name in Mention.__slots__)  # the slots' own setters, in field order
_new = object.__new__


def make_mention(
    item_id: str,
    at: datetime,
    key: str,
    entity_id: str | None,
    name: str,
    sentiment: str,
    relevance: int,
    novelty: int,
    source: str,
    title: str,
    url: str | None,
    model_version: str,
) -> Mention:
    """``Mention(...)`` with every field given, at about half the cost: the frozen dataclass's ``__init__`` sets
    each slot through ``object.__setattr__`` (2.6 us for twelve fields on this CPU), this calls the slots' setters
    directly (1.4 us). The entity stage builds one per mention it decodes and one per mention it releases, the
    largest part of decoding an entity counts record. Same object, same equality (tested field by field)."""
    m = _new(Mention)
    a, b, c, d, e, f, g, h, i, j, k, n = _M
    a(m, item_id)
    b(m, at)
    c(m, key)
    d(m, entity_id)
    e(m, name)
    f(m, sentiment)
    g(m, relevance)
    h(m, novelty)
    i(m, source)
    j(m, title)
    k(m, url)
    n(m, model_version)
    return m


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When a window of one entity fires (the module docstring says why each one is there)."""

    score: float = 4.0
    min_novel_negative: float = 4.0
    min_sources: int = 2
    min_ratio: float = 3.0
    min_negative_share: float = 0.4

    def stricter(self, factor: float) -> Thresholds:
        """Every bar raised by ``factor`` (shares capped at 0.95): the bar for names off a watchlist."""
        return Thresholds(
            score=self.score * factor,
            min_novel_negative=math.ceil(self.min_novel_negative * factor),
            min_sources=max(self.min_sources, math.ceil(self.min_sources * factor)),
            min_ratio=self.min_ratio * factor,
            min_negative_share=min(0.95, self.min_negative_share * factor),
        )


@dataclass(slots=True)
class BucketStats:
    """One entity's bucket: the entity series row (buzz, sentiment counts, novel counts, net sentiment, index)."""

    key: str
    entity_id: str | None
    name: str
    start: datetime
    buzz: int = 0
    negative: int = 0
    neutral: int = 0
    positive: int = 0
    novel: float = 0.0
    novel_negative: float = 0.0
    net_sentiment: float = 0.0
    #: the index after this bucket (surprise of the window ending here); set when the bucket is closed
    index: float = 0.0
    expected: float = 0.0
    sources: set[str] = field(default_factory=set)
    headlines: list[Mention] = field(default_factory=list)
    _items: set[str] = field(default_factory=set)
    _rel_sum: float = 0.0
    _rel_net: float = 0.0


@dataclass(slots=True)
class EntityState:
    """What the detector believes about one entity (exported for the currently alerting entities only)."""

    key: str
    entity_id: str | None
    name: str
    index: float = 0.0
    active: bool = False
    since: datetime | None = None
    last_seen: datetime | None = None


@dataclass(slots=True)
class _Entity:
    state: EntityState
    window: deque[BucketStats] = field(default_factory=deque)
    base_k: float = 0.0  # decayed novel negatives of the buckets before the window
    base_n: float = 0.0  # decayed number of those buckets
    base_novel: float = 0.0  # decayed novel mentions of those buckets (the baseline negative share)
    base_upto: int | None = None  # the baseline covers buckets < base_upto
    last_hot: int | None = None  # last bucket where the firing condition held (the episode's clock)
    episode_start: datetime | None = None
    last_bucket: int = 0


def nb_surprise(k: float, mean: float, r: float) -> float:
    """``-log10 P(X >= k)`` for a negative binomial with ``mean`` and shape ``r`` (Gamma-Poisson predictive).

    Summed from ``k`` upward in log space, so a tail of 1e-30 is as exact as one of 0.1 (``1 - cdf`` would be 0).
    """
    if k <= 0 or mean <= 0:
        return 0.0 if k <= 0 else 300.0
    p = r / (r + mean)  # success probability in the (r, p) parametrisation
    log_p, log_q = math.log(p), math.log1p(-p)

    def log_pmf(x: float) -> float:
        return math.lgamma(x + r) - math.lgamma(r) - math.lgamma(x + 1) + r * log_p + x * log_q

    x0 = math.ceil(k - 1e-9)
    first = log_pmf(x0)
    total, x = 0.0, x0
    while True:  # terms decrease geometrically past the mode; stop when they no longer matter
        term = math.exp(log_pmf(x) - first)
        total += term
        x += 1
        if term < 1e-12 * total or x - x0 > 100_000:
            break
    log10_tail = (first + math.log(total)) / math.log(10)
    return min(300.0, max(0.0, -log10_tail))


class EntityDetector:
    """Per-entity negative-surge detector on event time (see the module docstring)."""

    name = DETECTOR_NAME

    def __init__(
        self,
        bucket_s: int = 3600,
        window_buckets: int = 6,
        lateness_s: int = 3600,
        cooldown_s: int = 24 * 3600,
        halflife_buckets: float = 24 * 7,
        prior_rate: float = 0.1,
        prior_buckets: float = 24.0,
        novel_min: int = 100,
        novelty_weighted: bool = False,
        min_relevance: int = 40,
        thresholds: Thresholds | None = None,
        watchlist: Watchlist | None = None,
        watch_mode: str = "all",
        unlisted_factor: float = 1.5,
        top_headlines: int = 5,
        forget_after_s: int = 30 * 24 * 3600,
        on_bucket: Callable[[BucketStats], None] | None = None,
    ) -> None:
        if bucket_s < 1 or window_buckets < 1 or lateness_s < 0 or cooldown_s < 0:
            raise ValueError("bucket_s and window_buckets must be >= 1, lateness_s and cooldown_s >= 0")
        if prior_rate <= 0 or prior_buckets <= 0 or halflife_buckets <= 0:
            raise ValueError("prior_rate, prior_buckets and halflife_buckets must be > 0")
        if watch_mode not in ("all", "only", "wider"):
            raise ValueError(f"watch_mode must be all, only or wider, got {watch_mode!r}")
        if watch_mode != "all" and watchlist is None:
            raise ValueError(f"watch_mode {watch_mode!r} needs a watchlist")
        self.bucket_s = bucket_s
        self.window_buckets = window_buckets
        self.lateness = timedelta(seconds=lateness_s)
        self.cooldown_buckets = math.ceil(cooldown_s / bucket_s)
        self.halflife_buckets = halflife_buckets
        self.decay = 0.5 ** (1.0 / halflife_buckets)
        self.prior_k = prior_rate * prior_buckets
        self.prior_n = prior_buckets
        self.novel_min = novel_min
        self.novelty_weighted = novelty_weighted
        self.min_relevance = min_relevance
        self.thresholds = thresholds or Thresholds()
        self.watchlist = watchlist
        self.watch_mode = watch_mode
        self.unlisted = self.thresholds.stricter(unlisted_factor)
        self.top_headlines = top_headlines
        self.forget_buckets = max(window_buckets + self.cooldown_buckets, math.ceil(forget_after_s / bucket_s))
        self.on_bucket = on_bucket
        #: mentions ignored because their bucket had already closed (later than the allowed lateness)
        self.late = 0
        self._open: dict[int, dict[str, BucketStats]] = {}
        self._entities: dict[str, _Entity] = {}
        self._max_at: datetime | None = None
        self._closed_upto: int | None = None  # buckets < this are closed
        self._sweep_at = 0

    # -- input ------------------------------------------------------------------------------------
    def _bucket(self, at: datetime) -> int:
        return int((at - _EPOCH).total_seconds() // self.bucket_s)

    def _bucket_start(self, idx: int) -> datetime:
        return _EPOCH + timedelta(seconds=idx * self.bucket_s)

    def add(self, m: Mention) -> list[Alert]:
        """Count one mention; returns the alerts of the buckets this mention's event time closes."""
        if m.at.tzinfo is None:
            raise ValueError(f"mention of {m.key!r} in item {m.item_id!r}: event time must be timezone-aware")
        if m.sentiment not in SENTIMENTS:
            raise ValueError(
                f"mention of {m.key!r} in item {m.item_id!r}: sentiment {m.sentiment!r} not in {SENTIMENTS}"
            )
        if not m.key:
            raise ValueError(f"mention in item {m.item_id!r} has an empty entity key")
        idx = self._bucket(m.at)
        if self._closed_upto is not None and idx < self._closed_upto:
            self.late += 1
            return []
        self._count(idx, m)
        if self._max_at is None or m.at > self._max_at:
            self._max_at = m.at
        return self._close_until(self._last_closable())

    def add_all(self, mentions: Iterable[Mention]) -> list[Alert]:
        out: list[Alert] = []
        for m in mentions:
            out += self.add(m)
        return out

    def advance(self, now: datetime) -> list[Alert]:
        """Move the watermark as if a mention at ``now`` had arrived (quiet streams still close their buckets)."""
        if self._max_at is None or now > self._max_at:
            self._max_at = now
        return self._close_until(self._last_closable())

    def flush(self) -> list[Alert]:
        """Close every open bucket (the end of a replay or backtest)."""
        return self._close_until(max(self._open) if self._open else None)

    def _last_closable(self) -> int | None:
        """The last bucket whose end is at or before the watermark."""
        if self._max_at is None:
            return None
        watermark = self._max_at - self.lateness
        return self._bucket(watermark) - 1

    def _count(self, idx: int, m: Mention) -> None:
        b = self._open.setdefault(idx, {}).get(m.key)
        if b is None:
            b = self._open[idx][m.key] = BucketStats(m.key, m.entity_id, m.name, self._bucket_start(idx))
        if m.item_id in b._items:
            return  # the same item again (a redelivery): counted once
        b._items.add(m.item_id)
        b.buzz += 1
        rel = max(0, min(100, int(m.relevance)))
        sign = 1 if m.sentiment == "positive" else -1 if m.sentiment == "negative" else 0
        if m.sentiment == "negative":
            b.negative += 1
        elif m.sentiment == "positive":
            b.positive += 1
        else:
            b.neutral += 1
        b._rel_sum += rel
        b._rel_net += rel * sign
        if rel < self.min_relevance:
            return
        nov = max(0, min(100, int(m.novelty)))
        weight = nov / 100.0 if self.novelty_weighted else float(nov >= self.novel_min)
        b.novel += weight
        if m.sentiment == "negative" and weight > 0:
            b.novel_negative += weight
            b.sources.add(m.source)
            b.headlines.append(m)

    # -- closing buckets --------------------------------------------------------------------------
    def _close_until(self, last: int | None) -> list[Alert]:
        """Close every open bucket <= ``last`` in time order (``None``: nothing to close yet)."""
        if last is None:
            return []
        if self._closed_upto is not None and last < self._closed_upto:
            return []
        alerts: list[Alert] = []
        for idx in sorted(i for i in self._open if i <= last):
            for key in sorted(self._open[idx]):  # sorted: the same alert order whatever the arrival order
                alert = self._close(idx, self._open[idx][key])
                if alert is not None:
                    alerts.append(alert)
            del self._open[idx]
        self._closed_upto = max(last + 1, self._closed_upto or last + 1)
        if self._closed_upto - self._sweep_at >= 24:
            self._sweep(self._closed_upto)
        return alerts

    def _sweep(self, now_idx: int) -> None:
        """Forget entities unseen for ``forget_after_s`` and not in an episode (bounded memory over name churn)."""
        self._sweep_at = now_idx
        stale = [k for k, e in self._entities.items() if now_idx - e.last_bucket > self.forget_buckets]
        for k in stale:
            del self._entities[k]

    def _advance_baseline(self, e: _Entity, upto: int) -> None:
        """Make the baseline cover every bucket < ``upto`` (buckets with no mention count as zero)."""
        if e.base_upto is None:
            e.base_upto = upto
            return
        gap = upto - e.base_upto
        if gap <= 0:
            return
        f = self.decay**gap
        e.base_k *= f
        e.base_novel *= f
        e.base_n = e.base_n * f + (1.0 - f) / (1.0 - self.decay)
        e.base_upto = upto

    def _close(self, idx: int, b: BucketStats) -> Alert | None:
        e = self._entities.get(b.key)
        if e is None:
            e = self._entities[b.key] = _Entity(EntityState(b.key, b.entity_id, b.name))
        e.last_bucket = idx
        e.state.last_seen = b.start
        b.net_sentiment = round(b._rel_net / b._rel_sum, 6) if b._rel_sum > 0 else 0.0
        b.headlines.sort(key=lambda m: (-m.relevance, -m.novelty, m.at, m.item_id))
        del b.headlines[self.top_headlines :]
        first = idx - self.window_buckets + 1
        while e.window and e.window[0].start < self._bucket_start(first):
            old = e.window.popleft()
            self._advance_baseline(e, self._bucket(old.start) + 1)
            e.base_k += old.novel_negative
            e.base_novel += old.novel
        self._advance_baseline(e, first)
        e.window.append(b)
        k = sum(w.novel_negative for w in e.window)
        novel = sum(w.novel for w in e.window)
        rate = (self.prior_k + e.base_k) / (self.prior_n + e.base_n)
        expected = rate * self.window_buckets
        r = self.prior_k + e.base_k
        index = nb_surprise(k, expected, r)
        b.index, b.expected = round(index, 4), round(expected, 6)
        e.state.index = b.index
        if self.on_bucket is not None:
            self.on_bucket(b)
        th = self._thresholds_for(b)
        st = e.state
        if st.active and e.last_hot is not None and idx - e.last_hot > self.cooldown_buckets:
            st.active, st.since, e.episode_start = False, None, None  # the episode ended: re-armed
        if th is None:
            return None
        sources = set().union(*(w.sources for w in e.window))
        hot = (
            index >= th.score
            and k >= th.min_novel_negative
            and len(sources) >= th.min_sources
            and k >= th.min_ratio * expected
            and novel > 0
            and k / novel >= th.min_negative_share
        )
        if not hot:
            return None
        e.last_hot = idx
        if st.active:
            return None  # the same episode: one alert
        window_start = self._bucket_start(first)
        window_end = self._bucket_start(idx + 1)
        st.active, st.since, e.episode_start = True, window_end, window_start
        return self._alert(e, th, window_start, window_end, k, novel, expected, index, sorted(sources))

    def _thresholds_for(self, b: BucketStats) -> Thresholds | None:
        if self.watchlist is None or self.watch_mode == "all":
            return self.thresholds
        entry = self.watchlist.lookup(b.entity_id, b.name)
        if entry is None:
            return None if self.watch_mode == "only" else self.unlisted
        return replace(self.thresholds, **entry.overrides) if entry.overrides else self.thresholds

    def _alert(
        self,
        e: _Entity,
        th: Thresholds,
        start: datetime,
        end: datetime,
        k: float,
        novel: float,
        expected: float,
        index: float,
        sources: list[str],
    ) -> Alert:
        window = list(e.window)
        kept = [m for w in window for m in w.headlines]  # the window's novel negative stories (top per bucket)
        heads = sorted(kept, key=lambda m: (-m.relevance, -m.novelty, m.at, m.item_id))[: self.top_headlines]
        versions: dict[str, int] = {}
        for m in kept:
            if m.model_version:
                versions[m.model_version] = versions.get(m.model_version, 0) + 1
        rel_sum = sum(w._rel_sum for w in window)
        evidence: dict[str, Any] = {
            "entity_key": e.state.key,
            "buzz": sum(w.buzz for w in window),
            "negative": sum(w.negative for w in window),
            "neutral": sum(w.neutral for w in window),
            "positive": sum(w.positive for w in window),
            "novel": round(novel, 4),
            "novel_negative": round(k, 4),
            "expected_novel_negative": round(expected, 4),
            "ratio": round(k / expected, 2) if expected > 0 else None,
            "net_sentiment": round(sum(w._rel_net for w in window) / rel_sum, 4) if rel_sum else 0.0,
            "sources": sources,
            "headlines": [
                {
                    "title": m.title,
                    "url": m.url,
                    "source": m.source,
                    "at": format_time(m.at),
                    "relevance": m.relevance,
                    "novelty": m.novelty,
                }
                for m in heads
            ],
        }
        severity = "critical" if index >= 2.0 * th.score else "warning"
        return Alert(
            topic="",
            fired_at=end,
            window_start=start,
            window_end=end,
            negative=int(round(k)),
            total=int(round(novel)),
            negative_share=round(k / novel, 6) if novel else 0.0,
            baseline_share=round(e.base_k / e.base_novel, 6) if e.base_novel > 0 else 0.0,
            score=round(index, 4),
            detector=self.name,
            severity=severity,
            id=stable_id("alert", self.name, e.state.key, format_time(start) or ""),
            kind="entity",
            entity_id=e.state.entity_id,
            entity_name=e.state.name,
            evidence=evidence,
            # the version that scored most of the stories the alert quotes (a hot reload may split a window)
            model_version=min(versions, key=lambda v: (-versions[v], v)) if versions else "",
        )

    # -- what the gauges and the API read ---------------------------------------------------------
    def states(self) -> dict[str, EntityState]:
        """The entities in an episode now (only those: thousands of names must not become label values)."""
        now = self._closed_upto or 0
        return {
            k: e.state
            for k, e in self._entities.items()
            if e.state.active and e.last_hot is not None and now - 1 - e.last_hot <= self.cooldown_buckets
        }

    def __len__(self) -> int:
        return len(self._entities)

    def history_s(self, halflives: float = 4.0) -> int:
        """Seconds of event time whose mentions rebuild this detector's state (a restarted worker replays them).

        ``halflives`` half-lives of the baseline (4: the older rest weighs 1/16), at least the window plus the
        cool-down (so an episode in progress is known), at most ``forget_after_s`` (older names are forgotten).
        """
        buckets = max(self.window_buckets + self.cooldown_buckets, math.ceil(halflives * self.halflife_buckets))
        return min(buckets, self.forget_buckets) * self.bucket_s


__all__ = [
    "BucketStats",
    "DETECTOR_NAME",
    "EntityDetector",
    "EntityState",
    "Mention",
    "make_mention",
    "Thresholds",
    "entity_key",
    "nb_surprise",
]
