"""Cut a call's length-sorted texts into model batches that waste the least work on padding.

Why: every text in a batch is padded to the batch's longest, and each ``session.run`` has a fixed
cost. Tweets run from 5 to 80+ tokens, so fixed batches of 32 over an arbitrary set of texts (what a
stream hands the worker) pad many short texts to a long one's width, while batches of one pay the
per-call cost every time. Measured on the shipped int8 model, 2 quiet cores (bench/RESULTS.md,
"Model"): calls of 128 random seed texts ran at 485 sentences/s in fixed batches of 32 and 627-664
with these cuts (calls of 32 texts: 316 -> 470-530); of the per-call costs tried (24, 64, 128, 256
tokens) 64 was best or level in every case.

:func:`length_batches` finds, for texts sorted by length, the cut points that minimise
``sum(overhead + rows x widest)`` over the batches -- an exact dynamic programme over contiguous runs
(optimal for sorted lengths, since any batch is best a contiguous run of them) -- with at most
``max_batch`` rows per batch.
"""

from __future__ import annotations

import numpy as np

#: A ``session.run`` call's fixed cost in tokens of work, CPU provider (measured, see the module doc).
CPU_CALL_OVERHEAD_TOKENS = 64


def length_batches(sorted_lengths: np.ndarray, max_batch: int, overhead_tokens: float) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` covering ``range(len(sorted_lengths))`` in order; lengths must be ascending."""
    n = len(sorted_lengths)
    if n == 0:
        return []
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    lengths = np.asarray(sorted_lengths, dtype=np.float64)
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        lo = max(0, j - max_batch)
        starts = np.arange(lo, j)
        costs = best[lo:j] + overhead_tokens + (j - starts) * lengths[j - 1]
        k = int(np.argmin(costs))
        best[j] = costs[k]
        cut[j] = lo + k
    out = []
    j = n
    while j > 0:
        out.append((int(cut[j]), j))
        j = int(cut[j])
    return out[::-1]


__all__ = ["CPU_CALL_OVERHEAD_TOKENS", "length_batches"]
