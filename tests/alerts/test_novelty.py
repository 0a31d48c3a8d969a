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
