"""The padding-aware batch cuts: a cover of the texts in order, within the size cap, and optimal."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from finsent.models.batching import length_batches


def _cost(lengths: list[int], cuts: list[tuple[int, int]], overhead: float) -> float:
    return sum(overhead + (b - a) * lengths[b - 1] for a, b in cuts)


def _brute(lengths: list[int], max_batch: int, overhead: float) -> float:
    n, best = len(lengths), float("inf")
    for mask in itertools.product((0, 1), repeat=n - 1):  # 1 = cut after position i
        bounds = [0] + [i + 1 for i, m in enumerate(mask) if m] + [n]
        cuts = list(itertools.pairwise(bounds))
        if all(b - a <= max_batch for a, b in cuts):
            best = min(best, _cost(lengths, cuts, overhead))
    return best


@pytest.mark.parametrize("seed", range(40))
def test_cuts_cover_in_order_respect_the_cap_and_match_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 11)
    lengths = sorted(rng.randint(3, 90) for _ in range(n))
    max_batch, overhead = rng.randint(1, 6), rng.choice([0, 8, 24, 64, 1e6])
    cuts = length_batches(np.array(lengths), max_batch, overhead)
    assert cuts[0][0] == 0 and cuts[-1][1] == n
    assert all(a < b and b - a <= max_batch for a, b in cuts)
    assert all(prev[1] == nxt[0] for prev, nxt in itertools.pairwise(cuts))
    assert _cost(lengths, cuts, overhead) == pytest.approx(_brute(lengths, max_batch, overhead))


def test_equal_lengths_make_full_batches_and_a_long_outlier_gets_its_own() -> None:
    assert length_batches(np.full(64, 20), 32, 64) == [(0, 32), (32, 64)]
    cuts = length_batches(np.array([10] * 31 + [120]), 32, 64)
    assert cuts == [(0, 31), (31, 32)]  # padding 31 texts to 120 tokens costs far more than one more call
    assert length_batches(np.array([], dtype=np.int64), 32, 64) == []
    with pytest.raises(ValueError):
        length_batches(np.array([1]), 0, 64)
