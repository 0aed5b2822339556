"""Invariants of every sampling guideline, checked triple by triple on a generated market."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from curatornet.dataset import Dataset
from tests.training.helpers import TINY_CLUSTERS
from training.clusters import cluster_features
from training.data.formats import load_dataset
from training.sampling import (
    RANDOM,
    SamplingConfig,
    Triples,
    _first_occurrences,
    sample_triples,
    split_validation,
)
from training.split import split_last_basket

PER_GUIDELINE = 3_000


@dataclass
class Setup:
    train: Dataset
    labels: np.ndarray
    reduced: np.ndarray
    triples: Triples

    def history(self, user: int) -> set[int]:
        return set(self.train.purchase_item[self.train.purchase_user == user].tolist())

    def rows(self, guideline: int) -> np.ndarray:
        rows = np.flatnonzero(self.triples.guideline == guideline)
        assert len(rows) > 0.9 * PER_GUIDELINE, f"guideline {guideline}: only {len(rows)} triples"
        return rows


@pytest.fixture(scope="module")
def setup(tiny_market_dir: Path) -> Setup:
    dataset = load_dataset(tiny_market_dir)
    train, _ = split_last_basket(dataset)
    clusters = cluster_features(dataset.features, TINY_CLUSTERS)
    triples = sample_triples(
        train, clusters.labels, clusters.reduced, SamplingConfig(per_guideline=PER_GUIDELINE)
    )
    return Setup(train, clusters.labels, clusters.reduced, triples)


def test_negatives_are_never_bought_by_the_user(setup: Setup) -> None:
    t = setup.triples
    histories = {u: setup.history(u) for u in np.unique(t.user).tolist()}
    for row in range(len(t)):
        assert t.negative[row] not in histories[t.user[row]]
        assert t.negative[row] != t.positive[row]


def test_guideline_1_positive_is_in_the_users_full_history(setup: Setup) -> None:
    t = setup.triples
    for row in setup.rows(1):
        history = setup.history(t.user[row])
        assert set(t.profile_of(row).tolist()) == history
        assert t.positive[row] in history


def test_guideline_2_one_item_profile_predicts_itself(setup: Setup) -> None:
    t = setup.triples
    for row in setup.rows(2):
        assert t.profile_of(row).tolist() == [t.positive[row]]
        assert t.positive[row] in setup.history(t.user[row])


def test_guideline_3_favourite_artist_and_cluster_versus_neither(setup: Setup) -> None:
    t = setup.triples
    _, artist = setup.train.artist_index
    cluster = setup.labels
    for row in setup.rows(3):
        history = setup.history(t.user[row])
        assert set(t.profile_of(row).tolist()) == history
        bought_artists = artist[list(history)]
        favourite = np.bincount(bought_artists).max()
        assert t.positive[row] not in history
        assert np.sum(bought_artists == artist[t.positive[row]]) == favourite
        assert cluster[t.positive[row]] in set(cluster[list(history)].tolist())
        assert artist[t.negative[row]] not in set(bought_artists.tolist())
        assert cluster[t.negative[row]] not in set(cluster[list(history)].tolist())


def test_guideline_4_same_artist_with_a_visual_margin(setup: Setup) -> None:
    t = setup.triples
    _, artist = setup.train.artist_index
    unit = setup.reduced / np.linalg.norm(setup.reduced, axis=1, keepdims=True)
    margin = SamplingConfig().margin
    for row in setup.rows(4):
        (anchor,) = t.profile_of(row).tolist()
        positive, negative = t.positive[row], t.negative[row]
        assert anchor in setup.history(t.user[row])
        assert positive != anchor
        assert artist[positive] == artist[anchor]
        assert artist[negative] != artist[anchor]
        assert unit[anchor] @ unit[positive] >= unit[anchor] @ unit[negative] + margin - 1e-5


def test_guideline_5_next_basket_from_the_earlier_ones(setup: Setup) -> None:
    t, train = setup.triples, setup.train
    for row in setup.rows(5):
        user, positive = t.user[row], t.positive[row]
        bought_at = train.purchase_time[
            (train.purchase_user == user) & (train.purchase_item == positive)
        ]
        (when,) = bought_at.tolist()
        earlier = train.purchase_item[(train.purchase_user == user) & (train.purchase_time < when)]
        assert set(t.profile_of(row).tolist()) == set(earlier.tolist())
        assert len(earlier) > 0


def test_guideline_6_hidden_item_from_the_rest(setup: Setup) -> None:
    t = setup.triples
    for row in setup.rows(6):
        history = setup.history(t.user[row])
        assert t.positive[row] in history
        assert set(t.profile_of(row).tolist()) == history - {t.positive[row]}


def test_fine_grained_rule_draws_60_percent_of_negatives_from_the_positives_cluster(
    setup: Setup,
) -> None:
    t, cluster = setup.triples, setup.labels
    rows = np.flatnonzero(np.isin(t.guideline, [1, 2, 5, 6]))
    same = (cluster[t.negative[rows]] == cluster[t.positive[rows]]).mean()
    # 0.6 by rule, plus the uniform draws that land in the same cluster by chance
    chance = np.mean((np.bincount(cluster) / len(cluster))[cluster[t.positive[rows]]])
    assert same == pytest.approx(0.6 + 0.4 * chance, abs=0.03)


def test_no_duplicate_triples(setup: Setup) -> None:
    t = setup.triples
    seen = {
        (tuple(t.profile_of(row).tolist()), t.positive[row], t.negative[row])
        for row in range(len(t))
    }
    assert len(seen) == len(t)


def test_exact_deduplication_keeps_first_occurrences() -> None:
    profile = np.array([3, 1, 3, 1, 3])
    positive = np.array([5, 5, 5, 5, 5])
    negative = np.array([7, 7, 7, 8, 9])
    assert _first_occurrences(profile, positive, negative).tolist() == [0, 1, 3, 4]


def test_random_strategy_uses_uniform_negatives(setup: Setup) -> None:
    triples = sample_triples(
        setup.train,
        setup.labels,
        setup.reduced,
        SamplingConfig(per_guideline=500, strategy="random"),
    )
    assert set(np.unique(triples.guideline).tolist()) == {RANDOM}
    assert len(triples) > 0.9 * 3_000
    same = (setup.labels[triples.negative] == setup.labels[triples.positive]).mean()
    assert same < 0.3
    for row in range(0, len(triples), 7):
        history = setup.history(triples.user[row])
        assert triples.positive[row] in history
        assert triples.negative[row] not in history


def test_same_seed_same_triples(setup: Setup) -> None:
    config = SamplingConfig(per_guideline=400, seed=5)
    a = sample_triples(setup.train, setup.labels, setup.reduced, config)
    b = sample_triples(setup.train, setup.labels, setup.reduced, config)
    for name in ("profile", "positive", "negative", "guideline", "profile_items"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_validation_split_is_disjoint_and_five_percent(setup: Setup) -> None:
    fit, validation = split_validation(setup.triples, 0.05, seed=0)
    assert len(fit) + len(validation) == len(setup.triples)
    assert len(validation) == round(0.05 * len(setup.triples))

    def key(t: Triples) -> set[tuple[int, int, int]]:
        return set(zip(t.profile.tolist(), t.positive.tolist(), t.negative.tolist(), strict=True))

    assert key(fit).isdisjoint(key(validation))


def test_gather_profiles_flattens_a_batch() -> None:
    triples = Triples(
        profile=np.array([1, 0, 1]),
        positive=np.zeros(3, np.int64),
        negative=np.ones(3, np.int64),
        guideline=np.ones(3, np.int8),
        user=np.zeros(3, np.int64),
        profile_offsets=np.array([0, 2, 5]),
        profile_items=np.array([10, 11, 20, 21, 22]),
    )
    flat, segment = triples.gather_profiles(np.array([0, 1, 2]))
    assert flat.tolist() == [20, 21, 22, 10, 11, 20, 21, 22]
    assert segment.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
