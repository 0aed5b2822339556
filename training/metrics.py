"""Ranking metrics, as pure functions of where the relevant items landed.

Every function takes ``positions``: the 0-based ranks of one basket's relevant items in a
ranking of ``n_candidates`` items (best first). Keeping the input this small makes each
metric easy to check by hand.
"""

from __future__ import annotations

import numpy as np


def positions_of(scores: np.ndarray, relevant: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sorted 0-based ranks of the ``relevant`` candidates when ranking by ``scores``, best first.

    Ties are broken at random (seeded): a method that scores many candidates alike (most
    popular on a catalogue of unsold works) must not gain or lose by the catalogue's order.
    """
    order = np.lexsort((rng.random(len(scores)), -np.asarray(scores, dtype=np.float64)))
    rank = np.empty(len(scores), dtype=np.int64)
    rank[order] = np.arange(len(scores))
    return np.sort(rank[relevant])


def _hits(positions: np.ndarray, k: int) -> int:
    return int(np.searchsorted(positions, k))


def auc(positions: np.ndarray, n_candidates: int) -> float:
    """Share of (relevant, irrelevant) pairs ranked the right way round."""
    n = len(positions)
    negatives = n_candidates - n
    if n == 0:
        raise ValueError("no relevant item")
    if negatives == 0:
        return 1.0
    # The i-th relevant item (0-based, sorted) has positions[i] - i irrelevant items above it.
    above = positions - np.arange(n)
    return float(np.mean((negatives - above) / negatives))


def precision_at(positions: np.ndarray, k: int) -> float:
    return _hits(positions, k) / k


def recall_at(positions: np.ndarray, k: int) -> float:
    return _hits(positions, k) / len(positions)


def _dcg(positions: np.ndarray, k: int) -> float:
    top = positions[: _hits(positions, k)]
    return float(np.sum(1.0 / np.log2(top + 2)))


def _ideal_dcg(count: int) -> float:
    return float(np.sum(1.0 / np.log2(np.arange(count) + 2)))


def ndcg_at(positions: np.ndarray, k: int) -> float:
    """Standard nDCG@k: the ideal ranks min(relevant, k) items first."""
    return _dcg(positions, k) / _ideal_dcg(min(len(positions), k))


def ndcg_reference_at(positions: np.ndarray, k: int) -> float:
    """The reference implementation's variant: the ideal has only as many items as were hit
    in the top k, so missed relevant items do not lower the score. Reported apart, labelled."""
    hits = _hits(positions, k)
    return _dcg(positions, k) / _ideal_dcg(hits) if hits else 0.0
