"""The story clusterer and novelty as they were before issue 26 made them cheaper: the reference the property test
in test_novelty.py holds the optimised module to (same clusters, same novelty). Frozen: do not optimise this copy."""

from __future__ import annotations

import functools
import hashlib
import re
from collections import deque
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


def _strip_byline(line: str, source: str) -> str:
    """``line`` without its byline: the item's own source as ``"Source: ..."``/``"... - Source"``, else one trailing
    ``" - Outlet"`` of at most four words."""
    line = " ".join(line.casefold().split())
    if source:
        src = re.escape(source)
        line = re.sub(rf"^(?:[(\[]{src}[)\]]\s*[:|\-–—]?|{src}\s*[:|\-–—])\s*", "", line)
        line = re.sub(rf"\s*[-|–—:(\[]\s*{src}[)\]]?\s*$", "", line)
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
    src = " ".join(source.casefold().split())
    parts = []
    for part in (title or "", text or ""):
        lines = part.split("\n", 1)
        lines[0] = _strip_byline(lines[0], src)
        parts.append(" ".join(lines))
    joined = _NON_WORD.sub(" ", _POSSESSIVE.sub("", " ".join(parts).casefold()))
    words = [w for w in joined.split() if w not in STOP_WORDS]
    return [_stem(w) for w in words[:max_words]]


@functools.lru_cache(maxsize=1 << 16)
def _h64(token: str) -> int:
    """A token's 64-bit hash (cached: news repeats its words, and hashing was a third of the clustering's cost)."""
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def shingles(words: list[str]) -> frozenset[int]:
    """64-bit hashes of the content words and of each adjacent pair (see the module docstring)."""
    out = {_h64(w) for w in words}
    out.update(_h64(a + " " + b) for a, b in zip(words, words[1:], strict=False))
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
        rng = np.random.default_rng(seed)
        # multiply-shift hashing: (a*h + b) mod 2^64, top 32 bits; a odd
        self._a = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
        self._buckets: dict[bytes, list[_Entry]] = {}
        self._by_id: dict[str, _Entry] = {}
        self._order: deque[_Entry] = deque()
        self._seq = 0
        self._latest: datetime | None = None

    def __len__(self) -> int:
        return len(self._by_id)

    def _band_keys(self, sh: frozenset[int]) -> tuple[bytes, ...]:
        hv = np.fromiter(sh, dtype=np.uint64, count=len(sh))
        with np.errstate(over="ignore"):
            sig = ((np.outer(hv, self._a) + self._b) >> np.uint64(32)).min(axis=0).astype(np.uint32)
        r = self.rows
        return tuple(bytes([i]) + sig[i * r : (i + 1) * r].tobytes() for i in range(self.bands))

    def assign(self, item_id: str, at: datetime, title: str | None, text: str, source: str = "") -> str:
        """The cluster id of this item: the id of the first item of its cluster (its own id if it is new)."""
        known = self._by_id.get(item_id)
        if known is not None:
            return known.cluster_id
        if self._latest is None or at > self._latest:
            self._latest = at
        self._evict()
        sh = shingles(normalise(title, text, source))
        if not sh:  # nothing but stop words and punctuation: a story of its own, never a candidate
            return item_id
        bands = self._band_keys(sh)
        best: _Entry | None = None
        best_sim = 0.0
        seen: set[int] = set()
        for key in bands:
            for cand in self._buckets.get(key, ()):
                if cand.seq in seen:
                    continue
                seen.add(cand.seq)
                if abs(cand.at - at) > self.window:
                    continue
                sim = jaccard(sh, cand.sh)
                if sim >= self.threshold and (
                    sim > best_sim or (sim == best_sim and best is not None and cand.seq < best.seq)
                ):
                    best, best_sim = cand, sim
        cluster = best.cluster_id if best is not None else item_id
        self._seq += 1
        entry = _Entry(item_id, at, self._seq, cluster, sh, bands)
        self._by_id[item_id] = entry
        self._order.append(entry)
        for key in bands:
            self._buckets.setdefault(key, []).append(entry)
        if len(self._order) > self.max_items:
            self._drop(self._order.popleft())
        return cluster

    def _evict(self) -> None:
        assert self._latest is not None
        cutoff = self._latest - self.window
        while self._order and self._order[0].at < cutoff:
            self._drop(self._order.popleft())

    def _drop(self, entry: _Entry) -> None:
        self._by_id.pop(entry.item_id, None)
        for key in entry.bands:
            lst = self._buckets.get(key)
            if lst is None:
                continue
            lst[:] = [e for e in lst if e is not entry]
            if not lst:
                del self._buckets[key]


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
