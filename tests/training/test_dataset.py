"""Baskets and the Dataset value, against hand-computed groupings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from curatornet.dataset import Dataset
from training.data.formats import load_dataset


def test_baskets_group_purchases_by_user_and_time(ugallery_dir: Path) -> None:
    dataset = load_dataset(ugallery_dir)
    baskets = dataset.baskets
    contents = [
        (
            str(dataset.user_ids[baskets.user[b]]),
            int(baskets.time[b]),
            sorted(dataset.item_ids[dataset.purchase_item[baskets.purchases_of(b)]].tolist()),
        )
        for b in range(len(baskets))
    ]
    assert contents == [
        ("u1", 1500001000, ["a1", "a3"]),
        ("u1", 1500002000, ["a4"]),
        ("u2", 1500001500, ["a2", "a4"]),
        ("u3", 1499999999, ["a5"]),
    ]
    assert baskets.sizes.tolist() == [2, 1, 2, 1]
    for purchase, basket in enumerate(baskets.of_purchase):
        assert purchase in baskets.purchases_of(basket)


def test_purchases_are_kept_in_time_order(ugallery_dir: Path) -> None:
    dataset = load_dataset(ugallery_dir)
    assert np.all(np.diff(dataset.purchase_time) >= 0)


def _tiny(**overrides) -> dict:
    fields = {
        "item_ids": np.array(["a", "b"]),
        "artist_ids": np.array(["x", "y"]),
        "upload_time": np.array([0, 1]),
        "edition_size": np.array([1, 3]),
        "features": np.zeros((2, 3), np.float32),
        "user_ids": np.array(["u"]),
        "purchase_user": np.array([0]),
        "purchase_item": np.array([1]),
        "purchase_time": np.array([5]),
    }
    fields.update(overrides)
    return fields


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"artist_ids": np.array(["x"])}, "artist_ids has 1 rows"),
        ({"features": np.zeros((3, 3), np.float32)}, "features must be"),
        ({"purchase_item": np.array([2])}, "outside the item table"),
        ({"purchase_user": np.array([1])}, "outside the user table"),
        ({"edition_size": np.array([0, 1])}, "edition_size must be >= 1"),
    ],
)
def test_inconsistent_arrays_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Dataset.build(**_tiny(**overrides))


def test_one_of_a_kind_follows_edition_size() -> None:
    dataset = Dataset.build(**_tiny())
    assert dataset.one_of_a_kind.tolist() == [True, False]
