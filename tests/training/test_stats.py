"""`describe` against figures counted by hand on the fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data.formats import load_dataset
from training.data.stats import UGALLERY, describe, format_table


def test_figures_match_the_hand_count(ugallery_dir: Path) -> None:
    stats = describe(load_dataset(ugallery_dir))
    assert stats.items == 5
    assert stats.users == 3
    assert stats.purchases == 6
    assert stats.baskets == 4
    assert stats.artists == 3
    assert stats.items_per_artist == pytest.approx(5 / 3)
    assert stats.one_of_a_kind_items == pytest.approx(4 / 5)
    assert stats.purchases_on_one_of_a_kind == pytest.approx(4 / 6)
    assert stats.max_purchases_per_user == 3
    assert stats.max_basket_size == 2
    assert stats.purchases_per_user == pytest.approx(2.0)
    assert stats.feature_dim == 4
    assert stats.purchases_before_upload == 1
    assert stats.purchases_beyond_stock == 0
    assert stats.days_spanned == pytest.approx((1500002000 - 1499999999) / 86400)


def test_table_shows_this_data_beside_ugallery(ugallery_dir: Path) -> None:
    table = format_table(describe(load_dataset(ugallery_dir)))
    lines = table.splitlines()
    assert lines[0].split() == ["figure", "this", "data", "set", "UGallery", "(published)", "ratio"]
    row = next(line for line in lines if line.startswith("one-of-a-kind items"))
    assert row.split()[-5:] == [
        "80.0",
        "%",
        "78.0",
        "%",
        f"{0.8 / UGALLERY['one_of_a_kind_items']:.2f}",
    ]
    assert any(line.startswith("items ") and "13,297" in line for line in lines)
