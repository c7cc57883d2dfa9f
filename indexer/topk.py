"""Top-k selection under one rule, everywhere a ranked list is cut or joined: the higher score
first, and between equal scores the lower chunk id (its document id, then its place in the
document). The rule names chunks, not rows, so an answer does not depend on how the index is cut
into segments, on the order its documents came in, or on where a merge put their rows.

Selectors whose result another one joins (a segment's, a piece of the sentence table's) keep
every candidate tied with their k-th (`candidates`), so the join, which has seen them all, decides
between equal scores (`top_k`). It asks the store for the chunk ids (`TieKeys`) only of the rows
whose score another candidate shares: almost never more than a few. Scores that differ in their
last bits are not equal: two CPUs may sum a product in another order, which no rule can undo
(tests compare scores within 1e-5 for that reason).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

TieKeys = Callable[[np.ndarray], Sequence]  # rows → a sortable key per row: its chunk id, (document id, position)


def candidates(scores: np.ndarray, k: int) -> np.ndarray:
    """The positions of the k best scores and of every score tied with the k-th (so possibly more
    than k), in no particular order."""
    n = len(scores)
    if k <= 0 or n == 0:
        return np.zeros(0, np.int64)
    if n <= k:
        return np.arange(n)
    kth = np.partition(scores, n - k)[n - k]
    return np.flatnonzero(scores >= kth)


def top_k(scores: np.ndarray, rows: np.ndarray, k: int, ties: TieKeys | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k best (scores, rows) of these candidates, best first; equal scores in the order of
    their chunk ids, `ties(rows)` (None: of the rows themselves, for callers whose rows are the
    only names they have)."""
    scores, rows = np.asarray(scores), np.asarray(rows, np.int64)
    keep = candidates(scores, k)
    scores, rows = scores[keep], rows[keep]
    rank = rows
    if ties is not None and len(rows) > 1:
        _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
        shared = np.flatnonzero(counts[inverse] > 1)
        rank = np.zeros(len(rows), np.int64)
        if len(shared):
            keys = list(ties(rows[shared]))
            rank[shared[sorted(range(len(keys)), key=keys.__getitem__)]] = np.arange(len(keys))
    order = np.lexsort((rank, -scores))[:k]
    return scores[order], rows[order]


def best_first(ranked: Sequence[tuple[int, float]], n: int, ties: TieKeys | None = None) -> list[tuple[int, float]]:
    """The n best of (row, score) pairs under the rule, as (row, score) pairs, best first."""
    if not ranked:
        return []
    rows = np.fromiter((r for r, _ in ranked), np.int64, len(ranked))
    scores = np.fromiter((s for _, s in ranked), np.float64, len(ranked))
    top_s, top_r = top_k(scores, rows, n, ties)
    return list(zip(top_r.tolist(), top_s.tolist()))
