"""The paper's hold-out: each user's last basket, for users with at least two baskets.

Training and evaluation both call this one function, so they can never disagree on which
purchases are test data.
"""

from __future__ import annotations

import numpy as np

from curatornet.dataset import Dataset


def holdout_mask(dataset: Dataset) -> np.ndarray:
    """Boolean mask over purchases: True for purchases in a held-out (last) basket."""
    baskets = dataset.baskets
    if len(baskets) == 0:
        return np.zeros(0, dtype=bool)
    # Baskets are ordered by (user, time): a user's last basket is the one before the user changes.
    is_last = np.ones(len(baskets), dtype=bool)
    is_last[:-1] = baskets.user[1:] != baskets.user[:-1]
    baskets_per_user = np.bincount(baskets.user, minlength=dataset.n_users)
    held_out = is_last & (baskets_per_user[baskets.user] >= 2)
    return held_out[baskets.of_purchase]


def split_last_basket(dataset: Dataset) -> tuple[Dataset, Dataset]:
    """(training data, held-out data): same catalogue and users, disjoint purchases."""
    held_out = holdout_mask(dataset)
    return dataset.with_purchases(~held_out), dataset.with_purchases(held_out)
