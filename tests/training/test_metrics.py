"""Ranking metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import (
    auc,
    ndcg_at,
    ndcg_reference_at,
    positions_of,
    precision_at,
    recall_at,
)

# 10 candidates; the relevant ones landed at ranks 0, 3 and 7.
POSITIONS = np.array([0, 3, 7])


def test_auc_by_hand() -> None:
    # 7 irrelevant items. Rank 0: all 7 below. Rank 3: 2 irrelevant above -> 5 below.
    # Rank 7: 5 irrelevant above -> 2 below. AUC = (7 + 5 + 2) / (3 * 7) = 14 / 21.
    assert auc(POSITIONS, 10) == pytest.approx(14 / 21)
    assert auc(np.array([0, 1]), 5) == 1.0
    assert auc(np.array([3, 4]), 5) == 0.0
    assert auc(np.array([0, 1, 2]), 3) == 1.0
    with pytest.raises(ValueError, match="no relevant item"):
        auc(np.array([], dtype=np.int64), 5)


def test_precision_and_recall_by_hand() -> None:
    assert precision_at(POSITIONS, 1) == 1.0
    assert precision_at(POSITIONS, 4) == 2 / 4
    assert precision_at(POSITIONS, 20) == 3 / 20
    assert recall_at(POSITIONS, 3) == 1 / 3
    assert recall_at(POSITIONS, 7) == 2 / 3
    assert recall_at(POSITIONS, 8) == 1.0


def test_standard_ndcg_by_hand() -> None:
    dcg_4 = 1 / math.log2(2) + 1 / math.log2(5)
    ideal_3 = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at(POSITIONS, 4) == pytest.approx(dcg_4 / ideal_3)
    ideal_2 = 1 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at(POSITIONS, 2) == pytest.approx((1 / math.log2(2)) / ideal_2)
    assert ndcg_at(np.array([0, 1, 2]), 20) == pytest.approx(1.0)
    assert ndcg_at(np.array([5]), 5) == 0.0


def test_reference_ndcg_ignores_missed_items() -> None:
    # Top 4 holds ranks 0 and 3: its ideal is two hits at ranks 0 and 1.
    dcg_4 = 1 / math.log2(2) + 1 / math.log2(5)
    ideal_2 = 1 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_reference_at(POSITIONS, 4) == pytest.approx(dcg_4 / ideal_2)
    # One hit at rank 0 scores a perfect 1 even though two relevant items were missed.
    assert ndcg_reference_at(POSITIONS, 2) == 1.0
    assert ndcg_reference_at(np.array([5]), 5) == 0.0


def test_positions_of_ranks_best_first_and_breaks_ties_at_random() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.7])
    relevant = np.array([False, False, True, True])
    assert positions_of(scores, relevant, np.random.default_rng(0)).tolist() == [1, 2]
    flat = np.zeros(1000)
    relevant = np.zeros(1000, dtype=bool)
    relevant[:10] = True  # the first ten by index would always win a stable sort
    mean_rank = np.mean(
        [positions_of(flat, relevant, np.random.default_rng(s)).mean() for s in range(20)]
    )
    assert 350 < mean_rank < 650
