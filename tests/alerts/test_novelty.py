"""Story clusters and novelty (issue 26): near-duplicates cluster, different stories do not, novelty decays."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finsent.alerts.novelty import (
    Novelty,
    NoveltyTracker,
    StoryClusterer,
    jaccard,
    normalise,
    novelty_value,
    shingles,
)

T0 = datetime(2023, 1, 19, 20, 0, tzinfo=UTC)


def _clusters(items: list[tuple[str, str, str | None, str]], **kw: float) -> dict[str, str]:
    """items: (id, source, title, text), one minute apart; returns id -> cluster id."""
    c = StoryClusterer(**kw)  # type: ignore[arg-type]
    return {
        i: c.assign(i, T0 + timedelta(minutes=n), title, text, src) for n, (i, src, title, text) in enumerate(items)
    }


SAME_STORY = [  # one event, told by five outlets
    ("a", "CoinDesk", "Crypto Lender Genesis Files for Bankruptcy Protection - CoinDesk", ""),
    ("b", "Decrypt", "Decrypt: Crypto lender Genesis files for bankruptcy protection", ""),  # syndicated copy
    ("c", "Cointelegraph", "Genesis, the crypto lender, filed for bankruptcy protection", ""),  # rewrite
    ("d", "U.Today", "Crypto lender Genesis filing for bankruptcy protection, says Bloomberg", ""),  # "X says" copy
    ("e", "newsBTC", "Bloomberg says crypto lender Genesis files for bankruptcy protection", ""),
]
OTHER_STORIES = [
    ("f", "CoinDesk", "Genesis lays off 30% of its staff in second round of cuts", ""),
    ("g", "Decrypt", "Coinbase to cut 950 jobs as crypto winter drags on", ""),
    ("h", "Cointelegraph", "Bitcoin price rises above $21,000 for the first time since November", ""),
    ("i", "CoinDesk", "Bitcoin price falls below $16,000 as FTX contagion spreads", ""),
    ("j", "Decrypt", "Crypto.com cuts 20% of workforce amid market downturn", ""),
]


def test_syndication_rewrites_and_says_copies_cluster() -> None:
    ids = _clusters(SAME_STORY)
    assert set(ids.values()) == {"a"}  # the cluster id is its first item's id


def test_different_stories_do_not_cluster_even_about_the_same_name() -> None:
    ids = _clusters(SAME_STORY[:1] + OTHER_STORIES)
    assert all(ids[i] == i for i in ids), ids


def test_a_story_with_a_body_clusters_with_its_copy_not_with_another_body() -> None:
    body = (
        "Genesis Global Capital filed for Chapter 11 bankruptcy protection in New York late on Thursday, "
        "listing more than 100,000 creditors. The lender froze withdrawals in November after FTX collapsed."
    )
    other = (
        "Coinbase will lay off 950 employees, about a fifth of its staff, chief executive Brian Armstrong "
        "wrote in a blog post on Tuesday, as the exchange braces for a long downturn in trading."
    )
    ids = _clusters(
        [
            ("a", "CoinDesk", "Genesis files for bankruptcy", body),
            ("b", "Decrypt", "Genesis Global Capital seeks Chapter 11 protection", body + " Shares of DCG fell."),
            ("c", "Cointelegraph", "Coinbase layoffs", other),
        ]
    )
    assert ids == {"a": "a", "b": "a", "c": "c"}


def test_the_same_story_after_the_window_opens_a_new_cluster() -> None:
    c = StoryClusterer(window_s=3600)
    assert c.assign("a", T0, "Genesis files for bankruptcy", "") == "a"
    assert c.assign("b", T0 + timedelta(minutes=30), "Genesis files for bankruptcy", "") == "a"
    assert c.assign("c", T0 + timedelta(hours=3), "Genesis files for bankruptcy", "") == "c"


def test_memory_is_bounded_by_event_time_and_by_the_cap() -> None:
    c = StoryClusterer(window_s=3600)
    for i in range(500):  # one distinct story a minute for 500 minutes
        c.assign(f"s{i}", T0 + timedelta(minutes=i), f"story number {i} word{i} other{i * 7}", "")
    assert len(c) <= 62  # the last hour, not 500
    capped = StoryClusterer(max_items=10)
    for i in range(100):
        capped.assign(f"s{i}", T0, f"story {i} word{i}", "")
    assert len(capped) == 10


def test_a_redelivered_item_keeps_its_cluster_and_novelty() -> None:
    nov = Novelty()
    a = nov.observe("a", T0, "CoinDesk", "Genesis files for bankruptcy", "", ["~genesis"])
    b = nov.observe("b", T0 + timedelta(minutes=1), "Decrypt", "Genesis files for bankruptcy", "", ["~genesis"])
    again = nov.observe("b", T0 + timedelta(minutes=1), "Decrypt", "Genesis files for bankruptcy", "", ["~genesis"])
    assert (a.cluster_id, a.novelty, a.duplicate) == ("a", {"~genesis": 100}, False)
    assert b == again and b.cluster_id == "a" and b.novelty == {"~genesis": 75} and b.duplicate


def test_novelty_values_decay_by_three_quarters_then_reset_after_the_window() -> None:
    assert [novelty_value(k) for k in range(6)] == [100, 75, 56, 42, 32, 24]
    tr = NoveltyTracker()
    got = [tr.score("c1", "~genesis", f"i{k}", T0 + timedelta(hours=k)) for k in range(5)]
    assert got == [100, 75, 56, 42, 32]
    assert tr.score("c1", "~genesis", "late", T0 + timedelta(hours=24, minutes=1)) == 100  # chain reset
    assert tr.score("c1", "~genesis", "next", T0 + timedelta(hours=25)) == 75


def test_novelty_is_per_entity_and_per_cluster() -> None:
    tr = NoveltyTracker()
    assert tr.score("c1", "~genesis", "i1", T0) == 100
    assert tr.score("c1", "~dcg", "i2", T0) == 100  # the first story of this cluster for another entity
    assert tr.score("c2", "~genesis", "i3", T0) == 100  # another story about the same entity
    assert tr.score("c1", "~genesis", "i4", T0) == 75


def test_novelty_chains_are_evicted_by_event_time() -> None:
    tr = NoveltyTracker(window_s=3600)
    for i in range(300):
        tr.score(f"c{i}", "x", f"i{i}", T0 + timedelta(minutes=i))
    assert len(tr) <= 62


def test_normalisation_removes_bylines_case_punctuation_and_attribution() -> None:
    assert normalise("SEC Sues Genesis, Gemini - Reuters", "", "Reuters") == ["sec", "sue", "genesi", "gemini"]
    assert normalise("Reuters: SEC sues Genesis and Gemini", "", "Reuters") == ["sec", "sue", "genesi", "gemini"]
    assert normalise("SEC sues Genesis, Gemini, says report", "", "x") == ["sec", "sue", "genesi", "gemini"]
    assert jaccard(shingles(normalise("bitcoin price rises", "")), shingles(normalise("bitcoin price falls", ""))) < 0.5


def test_same_input_same_clusters_in_another_process() -> None:
    """Hashes are keyed blake2b and a fixed seed, never Python's salted hash(): a restart clusters the same."""
    code = (
        "from datetime import datetime, timezone;from finsent.alerts.novelty import StoryClusterer;"
        "c=StoryClusterer();t=datetime(2023,1,1,tzinfo=timezone.utc);"
        "print(c._band_keys(frozenset([1, 2, 3]))[0].hex(), [c.assign(i, t, x, '') for i, x in "
        "[('a','Genesis files for bankruptcy'),('b','Genesis filed for bankruptcy'),('c','Bitcoin rises')]])"
    )
    outs = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outs.add(
            subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
        )
    assert len(outs) == 1 and "['a', 'a', 'c']" in outs.pop()


@pytest.mark.parametrize("bad", [dict(threshold=0.0), dict(num_perm=10, bands=3), dict(window_s=0)])
def test_bad_parameters_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        StoryClusterer(**bad)  # type: ignore[arg-type]


HEADLINES = [
    "Crypto lender Genesis files for bankruptcy protection",
    "Coinbase to cut 950 jobs as crypto winter drags on",
    "Bitcoin price rises above $21,000 for the first time since November",
    "Sam Bankman-Fried arrested in the Bahamas at the request of US prosecutors",
    "Binance sees $3 billion of outflows as reserve audit questioned",
    "Ethereum developers set March date for Shanghai upgrade",
    "Genesis halts withdrawals",  # short: a byline left in would outweigh the story's own words
    "Kraken settles with SEC",
]
FORMS = ["{h}", "{h} - {s}", "{s}: {h}", "({s}) {h}", "{h} | {s}", "{h}, says analyst"]
WORD = st.text(
    alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters=".&'"), min_size=1, max_size=10
)
SOURCE = st.lists(WORD, min_size=1, max_size=5).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(
    tellings=st.lists(
        st.tuples(st.integers(0, len(HEADLINES) - 1), st.integers(0, len(FORMS) - 1), st.integers(0, 3)),
        min_size=2,
        max_size=14,
    ),
    names=st.lists(SOURCE, min_size=4, max_size=4, unique_by=str.casefold),
    renamed=st.lists(SOURCE, min_size=4, max_size=4, unique_by=str.casefold),
)
def test_renaming_sources_never_splits_a_cluster(
    tellings: list[tuple[int, int, int]], names: list[str], renamed: list[str]
) -> None:
    def run(sources: list[str]) -> list[str]:
        c = StoryClusterer()
        return [
            c.assign(f"i{n}", T0 + timedelta(minutes=n), FORMS[f].format(h=HEADLINES[h], s=sources[s]), "", sources[s])
            for n, (h, f, s) in enumerate(tellings)
        ]

    before, after = run(names), run(renamed)
    assert before == after
    # and the clusters are the stories: every telling of one headline in one cluster, no two headlines merged
    story_of = {}
    for (h, _, _), cid in zip(tellings, before, strict=True):
        assert story_of.setdefault(cid, h) == h
    assert len(set(before)) == len({h for h, _, _ in tellings})


# --- the optimised clusterer against the pre-#26 one (tests/alerts/novelty_reference.py) -----------------------
VOCAB = [
    "genesis",
    "bankruptcy",
    "bitcoin",
    "ether",
    "coinbase",
    "layoffs",
    "binance",
    "audit",
    "reserves",
    "kraken",
    "sec",
    "settles",
    "lender",
    "files",
    "protection",
    "withdrawals",
    "halts",
    "price",
    "rises",
    "falls",
    "record",
    "high",
    "low",
    "crypto",
    "exchange",
    "token",
    "court",
    "judge",
    "fraud",
    "ceo",
    "arrested",
    "bahamas",
    "shanghai",
    "upgrade",
    "march",
    "jobs",
    "cut",
    "winter",
    "drags",
    "market",
    "fund",
]
FILLER = ["the", "says", "of", "to", "a", "report", "Bloomberg", "analyst", "$21,000", "U.S.", "it's", "—"]
EDIT = st.tuples(st.sampled_from(["keep", "drop", "swap", "insert", "replace", "filler"]), st.integers(0, 40))


def _retell(words: list[str], edits: list[tuple[str, int]]) -> list[str]:
    """A near-duplicate telling of ``words``: a few words dropped, swapped, inserted, replaced or padded."""
    out = list(words)
    for op, k in edits:
        i = k % max(1, len(out))
        if op == "drop" and len(out) > 1:
            del out[i]
        elif op == "swap" and len(out) > 1:
            j = (i + 1) % len(out)
            out[i], out[j] = out[j], out[i]
        elif op == "insert":
            out.insert(i, VOCAB[k % len(VOCAB)])
        elif op == "replace" and out:
            out[i] = VOCAB[(k * 7) % len(VOCAB)]
        elif op == "filler":
            out.insert(i, FILLER[k % len(FILLER)])
    return out


TELLING = st.tuples(
    st.integers(0, 5),  # which story
    st.lists(EDIT, max_size=4),  # how this telling differs from it
    st.integers(0, len(FORMS) - 1),  # byline form
    st.integers(0, 3),  # source
    st.integers(-20, 400),  # minutes after the previous item (negative: out of event-time order)
    st.booleans(),  # headline as the title (else as the text, as social posts come)
    st.integers(0, 2),  # an earlier item's id again (1: same words, a redelivery; 2: other words)
    st.lists(st.sampled_from(["~genesis", "~coinbase", "E1", "E2"]), max_size=3),  # entity keys
)


@settings(max_examples=150, deadline=None)
@given(
    stories=st.lists(st.lists(st.sampled_from(VOCAB), min_size=1, max_size=12), min_size=6, max_size=6),
    tellings=st.lists(TELLING, min_size=1, max_size=40),
    params=st.sampled_from(
        [{}, {"threshold": 0.3, "window_s": 3600.0}, {"threshold": 0.8, "max_items": 5}, {"bands": 32, "num_perm": 64}]
    ),
    sources=st.lists(SOURCE, min_size=4, max_size=4),
)
def test_clusters_and_novelty_equal_the_reference_on_near_duplicate_corpora(
    stories: list[list[str]],
    tellings: list[tuple[int, list[tuple[str, int]], int, int, int, bool, int, list[str]]],
    params: dict[str, float],
    sources: list[str],
) -> None:
    """The optimised clusterer (shared signatures, per-band buckets, cached stems and patterns) gives exactly the
    clusters, duplicate flags and novelty of the pre-#26 code, item by item: also across two units of one process
    that see the same items (the signature cache), with redeliveries, reused ids and out-of-order times."""
    from tests.alerts import novelty_reference as ref

    def make(mod):  # type: ignore[no-untyped-def]
        return [mod.Novelty(mod.StoryClusterer(**params)) for _ in range(2)]  # type: ignore[arg-type]

    new_units, ref_units = make(__import__("finsent.alerts.novelty", fromlist=["Novelty"])), make(ref)
    at = T0
    seen: list[tuple[str, str, str, str]] = []
    for n, (story, edits, form, s, minutes, as_title, reuse, keys) in enumerate(tellings):
        at += timedelta(minutes=minutes)
        line = FORMS[form].format(h=" ".join(_retell(stories[story], edits)), s=sources[s])
        item = (f"i{n}", sources[s], line, "") if as_title else (f"i{n}", sources[s], "", f"{line}\nmore {n}")
        if reuse and seen:
            prev = seen[n % len(seen)]
            item = prev if reuse == 1 else (prev[0], *item[1:])
        seen.append(item)
        item_id, src, title, text = item
        for u in (n % 2, 1 - n % 2) if keys else (n % 2,):  # both units, in either order: the shared cache
            got = new_units[u].observe(item_id, at, src, title or None, text, keys)
            want = ref_units[u].observe(item_id, at, src, title or None, text, keys)
            assert (got.cluster_id, got.duplicate, got.novelty) == (want.cluster_id, want.duplicate, want.novelty)
    for new_u, ref_u in zip(new_units, ref_units, strict=True):
        assert len(new_u.clusterer) == len(ref_u.clusterer)


def test_a_reused_id_with_other_words_is_not_answered_from_the_signature_cache() -> None:
    """The per-process signature cache is keyed by item id but checked against the words: an id reused for another
    story (another source's id space, a bug upstream) is clustered by its own words in every unit."""
    a, b = StoryClusterer(), StoryClusterer()
    assert a.assign("x", T0, "Genesis files for bankruptcy protection", "") == "x"
    assert b.assign("y", T0, "Coinbase cuts 950 jobs as crypto winter drags on", "") == "y"
    # "x" again, in b, with the words of y's story: a stale cached signature would make it a story of its own
    assert b.assign("x", T0 + timedelta(minutes=1), "Coinbase cuts 950 jobs as crypto winter drags on", "") == "y"


def test_the_signature_cache_is_bounded() -> None:
    c = StoryClusterer(seed=9)  # its own signer: other tests' items do not count
    signer = c._signer
    for i in range(signer._cache_items + 50):
        c.assign(f"s{i}", T0, f"story {i} word{i}", "")
    assert len(signer._cache) == signer._cache_items


def test_a_tie_between_two_clusters_goes_to_the_earlier_one() -> None:
    """Both earlier stories are 0.6 like the third (and 0.2 like each other): it joins the earlier one's cluster,
    whatever order its band buckets are read in."""
    c = StoryClusterer()
    assert [
        c.assign(i, T0 + timedelta(minutes=n), t, "")
        for n, (i, t) in enumerate(
            [("a", "Genesis Kraken"), ("b", "Coinbase Genesis"), ("c", "Coinbase Genesis Kraken")]
        )
    ] == ["a", "b", "a"]
