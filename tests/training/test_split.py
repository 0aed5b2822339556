"""The last-basket hold-out: hand-computed case and invariants on generated markets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from curatornet.synthetic import MarketConfig, generate
from training.data.formats import load_dataset
from training.split import holdout_mask, split_last_basket


def test_only_the_last_basket_of_users_with_two_baskets_is_held_out(ugallery_dir: Path) -> None:
    dataset = load_dataset(ugallery_dir)
    train, test = split_last_basket(dataset)
    held = list(
        zip(
            test.user_ids[test.purchase_user].tolist(),
            test.item_ids[test.purchase_item].tolist(),
            strict=True,
        )
    )
    assert held == [("u1", "a4")]
    assert train.n_purchases == 5
    assert train.n_items == dataset.n_items
    assert train.n_users == dataset.n_users


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_invariants_on_generated_markets(seed: int) -> None:
    dataset = generate(MarketConfig().scaled(0.1), seed=seed, features=False).dataset
    held = holdout_mask(dataset)
    train, test = split_last_basket(dataset)
    assert train.n_purchases + test.n_purchases == dataset.n_purchases
    assert held.any()
    assert not held.all()

    # No held-out purchase is in training: (user, time, item) triples are disjoint.
    def triples(d):
        return set(
            zip(
                d.purchase_user.tolist(),
                d.purchase_time.tolist(),
                d.purchase_item.tolist(),
                strict=True,
            )
        )

    assert triples(train).isdisjoint(triples(test))

    baskets = dataset.baskets
    per_user = np.bincount(baskets.user, minlength=dataset.n_users)
    last_time = np.full(dataset.n_users, -1, np.int64)
    np.maximum.at(last_time, baskets.user, baskets.time)
    # Every held-out purchase is in its user's last basket, and that user has >= 2 baskets.
    assert np.all(test.purchase_time == last_time[test.purchase_user])
    assert np.all(per_user[test.purchase_user] >= 2)
    # Each user with >= 2 baskets has exactly one held-out basket, whole.
    held_users = np.unique(test.purchase_user)
    np.testing.assert_array_equal(held_users, np.flatnonzero(per_user >= 2))
    for user in held_users[:50]:
        in_last = (dataset.purchase_user == user) & (dataset.purchase_time == last_time[user])
        assert held[in_last].all()
    # Every training purchase of a held-out user comes strictly before the held-out basket.
    mask = np.isin(train.purchase_user, held_users)
    assert np.all(train.purchase_time[mask] < last_time[train.purchase_user[mask]])
