"""Is this story new? Near-duplicate story clusters and RavenPack-like novelty per (item, entity).

A collapse is told many times: the wire story, its syndicated copies, rewrites by every outlet, and
"X says ..." copies of one quote. Counting each as fresh evidence turns one event into a surge, so the
entity detector (:mod:`finsent.alerts.entity_detector`) counts *novel* stories and this module says which
ones are.

**Clusters** (:class:`StoryClusterer`). Each item's title and text are normalised (:func:`normalise`: the
source's own name and trailing ``" - CoinDesk"``-style bylines removed, casefolded, punctuation stripped,
attribution verbs like "says" dropped, stop words dropped, a light suffix stemmer), then turned into a set of
shingles: the content words *and* each pair of adjacent content words. Words alone survive reordering
("Bitcoin will hit $100k, Novogratz says" vs "Novogratz says Bitcoin will hit $100k"); the pairs keep two
different stories made of the same words apart. Similarity is the Jaccard index of two shingle sets.

Finding the similar earlier items is O(1) per item, not O(n): a 64-value MinHash signature is cut into 16
bands of 4 values (locality-sensitive hashing); items sharing any band are the candidates, which are then
checked with their *exact* Jaccard (kept sets, so no estimate error decides a cluster). Two items with Jaccard
0.5 share a band with probability 1 - (1 - 0.5^4)^16 = 0.64, at 0.7 with 0.98, at 0.3 with 0.12: near
duplicates are found, unrelated items are rarely even compared. An item joins the cluster of its most
similar candidate at or above ``threshold`` (ties: the earliest); otherwise it opens a cluster whose id is its
own id. Only items of the last ``window_s`` of *event time* are candidates; older ones are evicted (bounded
memory, plus a hard cap of ``max_items``).

**Novelty** (:class:`NoveltyTracker`), after RavenPack's event novelty: per (cluster, entity) a chain; the
first story of the chain scores 100, each repeat ``decay`` times the one before (75, 56, 42, 32, ... with
0.75), and a story more than ``window_s`` (24 h) after the chain's first story starts a new chain at 100.

**Cost** (issue 26). An item is normalised, shingled and MinHashed once per process, not once per mention: the
entity stage observes an item once per entity, in the clusterer of the partition that owns the entity, and all
clusterers of a process share one signature cache (keyed by item id, checked against the item's words). Each
band has its own bucket dict of ``{seq: entry}`` (dropping an entry is O(1), not a scan of its bucket); stems and
each source's byline patterns are cached. Clusters and novelty are exactly those of the simpler code before it
(``tests/alerts/novelty_reference.py``, compared by a property test).

**Determinism.** Hashes are keyed blake2b and a fixed-seed permutation, never Python's salted ``hash``, so
the same items in the same order give the same clusters and novelty in every process. Feed items in
event-time order (the detector's lateness buffer gives that order); an item out of order is still
handled, against whatever is in memory then. The same item id seen again (a redelivery) gets its first
answer back while it is in memory.

Example::

    >>> from datetime import datetime, timedelta, timezone
    >>> nov = Novelty()
    >>> t0 = datetime(2023, 1, 19, 22, 0, tzinfo=timezone.utc)
    >>> a = nov.observe("a", t0, "CoinDesk", "Genesis files for bankruptcy protection - CoinDesk", "", ["~genesis"])
    >>> b = nov.observe("b", t0 + timedelta(minutes=5), "Decrypt", "Genesis Filed for Bankruptcy Protection", "",
    ...                 ["~genesis"])
    >>> (a.cluster_id, a.novelty["~genesis"]), (b.cluster_id, b.novelty["~genesis"])
    (('a', 100), ('a', 75))
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

#: words that carry no story: grammar, plus attribution ("X says", "according to") so quote copies match
_STOP_TEXT = """a an the and or but if of to in on at by for from with as into onto over under about after before than
    then so is are was were be been being has have had do does did will would can could may might must shall
    should it its this that these those there here he she they we you i his her their our your my me him them
    us who whom whose which what when where why how not no yes just also more most very up down out off new
    says say said saying tells told according reportedly report reports reported per via amid"""
STOP_WORDS: frozenset[str] = frozenset(_STOP_TEXT.split())
#: "Title - CoinDesk", "Title | Reuters", "Title — Bloomberg": one trailing byline of at most four words
_TRAILING_BYLINE = re.compile(r"\s+[-|–—]\s+[^\s|–—-][^|–—]{0,40}$")
_POSSESSIVE = re.compile(r"['’]s\b")
_NON_WORD = re.compile(r"[\W_]+")


def _stem(word: str) -> str:
    """A light suffix stemmer: "files", "filed", "filing" -> "fil"; enough to match rewrites, never used as text."""
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


@functools.lru_cache(maxsize=4096)
def _source_patterns(source: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """The compiled "Source: ..." and "... - Source" patterns of one (normalised) source name: compiled once per
    source, not looked up in re's cache and re-escaped for every title and text."""
    src = re.escape(source)
    return (
        re.compile(rf"^(?:[(\[]{src}[)\]]\s*[:|\-–—]?|{src}\s*[:|\-–—])\s*"),
        re.compile(rf"\s*[-|–—:(\[]\s*{src}[)\]]?\s*$"),
    )


def _strip_byline(line: str, source: str) -> str:
    """``line`` without its byline: the item's own source as ``"Source: ..."``/``"... - Source"``, else one trailing
    ``" - Outlet"`` of at most four words."""
    line = " ".join(line.casefold().split())
    if source:
        head, tail = _source_patterns(source)
        line = tail.sub("", head.sub("", line))
    m = _TRAILING_BYLINE.search(line)
    if m and len(m.group(0).split()) <= 5:  # the dash plus at most four words
        line = line[: m.start()]
    return line


def normalise(title: str | None, text: str, source: str = "", max_words: int = 300) -> list[str]:
    """The content words of a story, in order: what two tellings of the same story share.

    The item's own ``source`` is removed where outlets put it (``"CoinDesk: ..."``, ``"... - CoinDesk"``, on the
    title and on the text's first line) and so is any trailing ``" - Outlet"`` byline of at most four words, so
    renaming a source cannot change a story's words; elsewhere the name is left alone (a story *about* an outlet
    keeps its subject). Only the first ``max_words`` words count (the lead decides what a story is, and it
    bounds the cost).
    """
    src = " ".join(source.casefold().split()) if source else ""
    parts = []
    for part in (title or "", text or ""):
        if not part:  # an empty part has no byline: skip the regexes (most items have no title or no text)
            parts.append("")
            continue
        lines = part.split("\n", 1)
        lines[0] = _strip_byline(lines[0], src)
        parts.append(" ".join(lines))
    joined = _NON_WORD.sub(" ", _POSSESSIVE.sub("", " ".join(parts).casefold()))
    words = [w for w in joined.split() if w not in STOP_WORDS]
    stems = _STEMS
    if len(stems) > _STEMS_MAX:  # bounded: a flood of unique tokens cannot grow it without end
        stems.clear()
    out = []
    for w in words[:max_words]:
        s = stems.get(w)
        if s is None:
            s = stems[w] = _stem(w)
        out.append(s)
    return out


#: word -> its stem (news repeats its words; the stemmer's suffix loop was a tenth of the clustering's cost)
_STEMS: dict[str, str] = {}
_STEMS_MAX = 1 << 17


@functools.lru_cache(maxsize=1 << 16)
def _h64(token: str) -> int:
    """A token's 64-bit hash (cached: news repeats its words, and hashing was a third of the clustering's cost)."""
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def shingles(words: list[str]) -> frozenset[int]:
    """64-bit hashes of the content words and of each adjacent pair (see the module docstring)."""
    h = _h64
    out = set(map(h, words))
    out.update(map(h, map(" ".join, zip(words, words[1:], strict=False))))  # "a b" for each adjacent pair
    return frozenset(out)


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


@dataclass(slots=True)
class _Entry:
    item_id: str
    at: datetime
    seq: int
    cluster_id: str
    sh: frozenset[int]
    bands: tuple[bytes, ...]


_SHIFT = np.uint64(32)


class _Signer:
    """An item's shingles and LSH band keys, computed once per process and shared by every clusterer with the
    same ``(num_perm, bands, seed)``.

    Why: the entity stage keeps one :class:`StoryClusterer` per partition and observes an item once per mention,
    so an item naming two entities owned by two partitions was normalised, shingled and MinHashed twice. The
    cache is keyed by item id and checked against the item's (source, title, text), so a reused id with other
    words is computed afresh: the answer is always what :func:`shingles` and the MinHash give for those words.
    """

    def __init__(self, num_perm: int, bands: int, seed: int, cache_items: int = 8192) -> None:
        rng = np.random.default_rng(seed)
        # multiply-shift hashing: (a*h + b) mod 2^64, top 32 bits; a odd
        self._a = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
        self.bands = bands
        self._width = 4 * (num_perm // bands)  # bytes of one band: rows uint32 values
        self._cache: OrderedDict[str, tuple[str, str | None, str, frozenset[int], tuple[bytes, ...]]] = OrderedDict()
        self._cache_items = cache_items
        self._lock = threading.Lock()

    def band_keys(self, sh: frozenset[int]) -> tuple[bytes, ...]:
        """The ``bands`` keys of a non-empty shingle set: band i's ``rows`` MinHash values (uint32) as bytes."""
        hv = np.fromiter(sh, dtype=np.uint64, count=len(sh))
        m = np.multiply.outer(hv, self._a)  # wraps mod 2^64, as the hash means; in place from here (no copies)
        m += self._b
        m >>= _SHIFT
        raw, w = m.min(axis=0).astype(np.uint32).tobytes(), self._width
        return tuple([raw[i : i + w] for i in range(0, len(raw), w)])

    def sign(self, item_id: str, title: str | None, text: str, source: str) -> tuple[frozenset[int], tuple[bytes, ...]]:
        """(shingles, band keys) of an item; band keys are ``()`` when it has no content words."""
        cache = self._cache
        hit = cache.get(item_id)
        if hit is not None and hit[0] == source and hit[1] == title and hit[2] == text:
            return hit[3], hit[4]
        sh = shingles(normalise(title, text, source))
        bands = self.band_keys(sh) if sh else ()
        with self._lock:  # several workers (threads) of one process share the cache: keep its order consistent
            cache[item_id] = (source, title, text, sh, bands)
            cache.move_to_end(item_id)
            if len(cache) > self._cache_items:
                cache.popitem(last=False)
        return sh, bands


@functools.lru_cache(maxsize=16)
def _signer(num_perm: int, bands: int, seed: int) -> _Signer:
    """The process's one signer per parameter set (the cache is shared by every partition's clusterer)."""
    return _Signer(num_perm, bands, seed)


class StoryClusterer:
    """Near-duplicate clusters by MinHash LSH over normalised shingles, within a window of event time."""

    def __init__(
        self,
        threshold: float = 0.5,
        window_s: float = 24 * 3600,
        num_perm: int = 64,
        bands: int = 16,
        max_items: int = 200_000,
        seed: int = 26,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError("threshold must be in (0, 1]")
        if num_perm < 1 or bands < 1 or num_perm % bands:
            raise ValueError("num_perm must be a positive multiple of bands")
        if window_s <= 0 or max_items < 1:
            raise ValueError("window_s and max_items must be positive")
        self.threshold = threshold
        self.window = timedelta(seconds=window_s)
        self.bands = bands
        self.rows = num_perm // bands
        self.max_items = max_items
        self._signer = _signer(num_perm, bands, seed)
        #: one dict per band: band key -> {seq: entry} (a dict, so that dropping an entry is O(1))
        self._buckets: list[dict[bytes, dict[int, _Entry]]] = [{} for _ in range(bands)]
        self._by_id: dict[str, _Entry] = {}
        self._order: deque[_Entry] = deque()
        self._seq = 0
        self._latest: datetime | None = None

    def __len__(self) -> int:
        return len(self._by_id)

    def _band_keys(self, sh: frozenset[int]) -> tuple[bytes, ...]:
        return self._signer.band_keys(sh)

    def assign(self, item_id: str, at: datetime, title: str | None, text: str, source: str = "") -> str:
        """The cluster id of this item: the id of the first item of its cluster (its own id if it is new)."""
        known = self._by_id.get(item_id)
        if known is not None:
            return known.cluster_id
        if self._latest is None or at > self._latest:
            self._latest = at
        self._evict()
        sh, bands = self._signer.sign(item_id, title, text, source)
        if not sh:  # nothing but stop words and punctuation: a story of its own, never a candidate
            return item_id
        best: _Entry | None = None
        best_sim = 0.0
        seen: set[int] = set()
        window, threshold, n = self.window, self.threshold, len(sh)
        buckets = self._buckets
        for i, key in enumerate(bands):
            bucket = buckets[i].get(key)
            if not bucket:
                continue
            for seq, cand in bucket.items():
                if seq in seen:
                    continue
                seen.add(seq)
                if abs(cand.at - at) > window:
                    continue
                inter = len(sh & cand.sh)  # the exact Jaccard (see jaccard(); both sets are non-empty)
                sim = inter / (n + len(cand.sh) - inter)
                if sim >= threshold and (sim > best_sim or (sim == best_sim and best is not None and seq < best.seq)):
                    best, best_sim = cand, sim
        cluster = best.cluster_id if best is not None else item_id
        self._seq += 1
        seq = self._seq
        entry = _Entry(item_id, at, seq, cluster, sh, bands)
        self._by_id[item_id] = entry
        self._order.append(entry)
        for i, key in enumerate(bands):
            bucket = buckets[i].get(key)
            if bucket is None:
                buckets[i][key] = {seq: entry}
            else:
                bucket[seq] = entry
        if len(self._order) > self.max_items:
            self._drop(self._order.popleft())
        return cluster

    def _evict(self) -> None:
        assert self._latest is not None
        cutoff = self._latest - self.window
        while self._order and self._order[0].at < cutoff:
            self._drop(self._order.popleft())

    def _drop(self, entry: _Entry) -> None:
        if self._by_id.get(entry.item_id) is entry:
            del self._by_id[entry.item_id]
        for i, key in enumerate(entry.bands):
            bucket = self._buckets[i].get(key)
            if bucket is None:
                continue
            bucket.pop(entry.seq, None)
            if not bucket:
                del self._buckets[i][key]


@dataclass(slots=True)
class _Chain:
    start: datetime
    repeats: int = 0
    members: dict[str, int] = field(default_factory=dict)


def novelty_value(repeats: int, decay: float = 0.75) -> int:
    """100 for the first story of a chain, then ``100 * decay**repeats`` rounded (75, 56, 42, 32, ...)."""
    return int(round(100.0 * decay**repeats))


class NoveltyTracker:
    """RavenPack-like novelty chains per (cluster, entity), reset ``window_s`` after a chain's first story."""

    def __init__(self, window_s: float = 24 * 3600, decay: float = 0.75, max_chains: int = 500_000) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError("decay must be in (0, 1)")
        if window_s <= 0 or max_chains < 1:
            raise ValueError("window_s and max_chains must be positive")
        self.window = timedelta(seconds=window_s)
        self.decay = decay
        self.max_chains = max_chains
        self._chains: dict[tuple[str, str], _Chain] = {}
        self._order: deque[tuple[datetime, tuple[str, str]]] = deque()
        self._latest: datetime | None = None

    def __len__(self) -> int:
        return len(self._chains)

    def score(self, cluster_id: str, entity_key: str, item_id: str, at: datetime) -> int:
        """Novelty 0-100 of ``item_id`` (in ``cluster_id``) for ``entity_key``; a repeated item id: the same value."""
        if self._latest is None or at > self._latest:
            self._latest = at
        cutoff = self._latest - self.window
        while self._order and (self._order[0][0] < cutoff or len(self._chains) > self.max_chains):
            start, key = self._order.popleft()
            chain = self._chains.get(key)
            if chain is not None and chain.start == start:
                del self._chains[key]
        key = (cluster_id, entity_key)
        chain = self._chains.get(key)
        if chain is not None and item_id in chain.members:
            return chain.members[item_id]
        if chain is None or at - chain.start > self.window:
            chain = self._chains[key] = _Chain(start=at)
            self._order.append((at, key))
            value = 100
        else:
            chain.repeats += 1
            value = novelty_value(chain.repeats, self.decay)
        chain.members[item_id] = value
        return value


@dataclass(frozen=True, slots=True)
class Story:
    """What :meth:`Novelty.observe` says about one item: its cluster and its novelty per entity key."""

    cluster_id: str
    novelty: dict[str, int]
    #: True when an earlier item opened this item's cluster (a retelling, not a new story)
    duplicate: bool = False


class Novelty:
    """Clusters and novelty together: one call per item, in event-time order."""

    def __init__(self, clusterer: StoryClusterer | None = None, tracker: NoveltyTracker | None = None) -> None:
        self.clusterer = clusterer or StoryClusterer()
        self.tracker = tracker or NoveltyTracker()

    def observe(
        self, item_id: str, at: datetime, source: str, title: str | None, text: str, entity_keys: Iterable[str]
    ) -> Story:
        cluster = self.clusterer.assign(item_id, at, title, text, source)
        novelty = {k: self.tracker.score(cluster, k, item_id, at) for k in dict.fromkeys(entity_keys)}
        return Story(cluster, novelty, cluster != item_id)


__all__ = [
    "Novelty",
    "NoveltyTracker",
    "STOP_WORDS",
    "Story",
    "StoryClusterer",
    "jaccard",
    "normalise",
    "novelty_value",
    "shingles",
]
