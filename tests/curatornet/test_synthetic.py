"""The synthetic art market: calibration, determinism, market rules, features, hidden tastes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from curatornet.synthetic import (
    TASTES_FILE,
    MarketConfig,
    catalogue_batches,
    generate,
    load_truth,
    lomax_quantiles,
)
from training.data.formats import (
    MARKET_CONFIG_FILE,
    load_dataset,
    purchases_before_upload,
    purchases_beyond_stock,
    save_market,
)
from training.data.stats import UGALLERY, describe

CALIBRATED = [
    "items",
    "users",
    "purchases",
    "baskets",
    "one_of_a_kind_items",
    "purchases_on_one_of_a_kind",
    "max_purchases_per_user",
    "max_basket_size",
]


@pytest.fixture(scope="module")
def tiny_market():
    return generate(MarketConfig().scaled(0.05), seed=7)


@pytest.mark.parametrize("seed", [0, 1])
def test_default_market_lands_within_ten_percent_of_ugallery(seed: int) -> None:
    stats = describe(generate(seed=seed, features=False).dataset).as_dict()
    off = {
        name: (stats[name], UGALLERY[name])
        for name in CALIBRATED
        if abs(stats[name] / UGALLERY[name] - 1) > 0.10
    }
    assert not off, f"figures more than 10 % from UGallery: {off}"


def test_same_seed_same_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    config = MarketConfig().scaled(0.03)
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        save_market(generate(config, seed=seed), tmp_path / name)
    files = sorted(path.name for path in (tmp_path / "a").iterdir())
    assert files == sorted(
        ["inventory.csv", "purchases.csv", "features.npz", TASTES_FILE, MARKET_CONFIG_FILE]
    )
    for file in files:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
    assert (tmp_path / "a" / "purchases.csv").read_bytes() != (
        tmp_path / "c" / "purchases.csv"
    ).read_bytes()


def test_written_market_reads_back_with_its_tastes(tmp_path: Path, tiny_market) -> None:
    save_market(tiny_market, tmp_path)
    dataset = load_dataset(tmp_path, expected_feature_dim=2048)
    np.testing.assert_array_equal(dataset.features, tiny_market.dataset.features)
    np.testing.assert_array_equal(dataset.purchase_item, tiny_market.dataset.purchase_item)
    np.testing.assert_array_equal(dataset.user_ids, tiny_market.dataset.user_ids)
    truth = load_truth(tmp_path, dataset)
    np.testing.assert_array_equal(truth.item_style, tiny_market.truth.item_style)
    assert truth.taste_width == tiny_market.config.taste_width


def test_market_rules_hold(tiny_market) -> None:
    dataset = tiny_market.dataset
    assert purchases_before_upload(dataset).sum() == 0
    assert purchases_beyond_stock(dataset) == 0
    sold = np.bincount(dataset.purchase_item, minlength=dataset.n_items)
    assert sold[dataset.one_of_a_kind].max() <= 1
    pairs = set(zip(dataset.purchase_user.tolist(), dataset.purchase_item.tolist(), strict=True))
    assert len(pairs) == dataset.n_purchases, "nobody buys the same artwork twice"
    assert np.all(np.diff(dataset.upload_time) >= 0), "inventory is in upload order"
    assert np.ptp(dataset.upload_time) > 600 * 86_400, "uploads spread over about two years"


def test_features_look_like_pooled_cnn_activations(tiny_market) -> None:
    features = tiny_market.dataset.features
    assert features.shape == (tiny_market.config.n_items, 2048)
    assert features.dtype == np.float32
    assert np.isfinite(features).all()
    assert features.min() >= 0
    assert 0.3 < (features == 0).mean() < 0.9, "sparse, but not empty"


def test_the_catalogue_in_batches_is_the_markets_own(tiny_market) -> None:
    """What a million-work benchmark renders batch by batch is the market `generate` makes."""
    batches = list(catalogue_batches(tiny_market.config, tiny_market.seed, batch=100))
    assert len(batches) == 7
    artists = np.concatenate([artist for artist, _ in batches])
    features = np.concatenate([rendered for _, rendered in batches])
    np.testing.assert_array_equal(artists, tiny_market.truth.item_artist)
    np.testing.assert_array_equal(features, tiny_market.dataset.features)


def test_visual_similarity_reflects_style_but_not_trivially() -> None:
    market = generate(MarketConfig().scaled(0.15), seed=1)
    artist = market.truth.item_artist
    unit = market.dataset.features / np.linalg.norm(market.dataset.features, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    feature_neighbour_same_artist = (artist[similarity.argmax(1)] == artist).mean()
    style = market.truth.item_style
    distance = ((style[:, None] - style[None]) ** 2).sum(-1)
    np.fill_diagonal(distance, np.inf)
    style_neighbour_same_artist = (artist[distance.argmin(1)] == artist).mean()
    chance = (np.bincount(artist) ** 2).sum() / len(artist) ** 2
    assert feature_neighbour_same_artist > 5 * chance
    assert feature_neighbour_same_artist < style_neighbour_same_artist - 0.1


def test_purchases_follow_the_hidden_tastes(tiny_market) -> None:
    """Bought items rank high among what was on sale by the true utility: tastes drive sales."""
    dataset, truth = tiny_market.dataset, tiny_market.truth
    ranks = []
    for k in range(dataset.n_purchases):
        on_sale = np.flatnonzero(dataset.upload_time <= dataset.purchase_time[k])
        utility = truth.utility(dataset.purchase_user[k : k + 1], on_sale)[0]
        bought = utility[on_sale == dataset.purchase_item[k]][0]
        ranks.append((utility < bought).mean())
    assert np.mean(ranks) > 0.8


def test_scale_grows_and_shrinks_everything() -> None:
    config = MarketConfig().scaled(0.1)
    assert (config.n_items, config.n_users, config.n_artists) == (1330, 292, 57)
    stats = describe(generate(config, seed=0, features=False).dataset)
    assert stats.items == 1330
    assert 0.9 * 292 <= stats.users <= 292
    assert stats.purchases / stats.users == pytest.approx(6535 / 2919, rel=0.15)
    with pytest.raises(ValueError, match="scale must be positive"):
        MarketConfig().scaled(0)


def test_lomax_quantiles_are_stratified() -> None:
    rng = np.random.default_rng(0)
    values = lomax_quantiles(1000, shape=2.0, scale=1.0, rng=rng)
    again = lomax_quantiles(1000, shape=2.0, scale=1.0, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(np.sort(values), np.sort(again))
    # floor((1 - 0.9995) ** -0.5 - 1) = floor(43.72) for the top quantile
    assert values.max() == 43
    assert values.min() == 0
