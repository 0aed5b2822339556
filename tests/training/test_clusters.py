"""Visual clusters: the best restart by silhouette, and the per-data-set cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.training.helpers import TINY_CLUSTERS
from training import clusters as clusters_module
from training.clusters import CACHE_DIR, ClusterConfig, cluster_features, load_or_compute_clusters


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    """Three well separated blobs in 50-d, non-negative like CNN features."""
    rng = np.random.default_rng(0)
    centres = rng.gamma(2.0, 1.0, (3, 50))
    return np.abs(np.repeat(centres, 40, axis=0) + rng.normal(0, 0.1, (120, 50))).astype(np.float32)


def test_recovers_clear_clusters_and_reduces_dimension(features: np.ndarray) -> None:
    result = cluster_features(features, ClusterConfig(pca_dim=10, n_clusters=3, restarts=4))
    assert result.reduced.shape == (120, 10)
    truth = np.repeat(np.arange(3), 40)
    # Each true blob maps to exactly one cluster.
    assert all(len(np.unique(result.labels[truth == blob])) == 1 for blob in range(3))
    assert len(np.unique(result.labels)) == 3
    assert result.silhouette > 0.5


def test_pca_dimension_is_clamped_on_small_data(features: np.ndarray) -> None:
    result = cluster_features(features[:30], ClusterConfig(pca_dim=200, n_clusters=5, restarts=1))
    assert result.reduced.shape == (30, 30)


def test_keeps_the_restart_with_the_best_silhouette(features: np.ndarray, monkeypatch) -> None:
    scores = iter([0.1, 0.7, 0.3])
    monkeypatch.setattr(clusters_module, "silhouette_score", lambda *a, **k: next(scores))
    result = cluster_features(features, ClusterConfig(pca_dim=5, n_clusters=3, restarts=3))
    assert result.silhouette == 0.7


def test_second_run_reads_the_cache(features: np.ndarray, tmp_path: Path, monkeypatch) -> None:
    first = load_or_compute_clusters(features, TINY_CLUSTERS, tmp_path)
    assert len(list((tmp_path / CACHE_DIR).glob("clusters-*.npz"))) == 1

    def must_not_run(*args, **kwargs):
        raise AssertionError("clusters were recomputed despite the cache")

    monkeypatch.setattr(clusters_module, "cluster_features", must_not_run)
    second = load_or_compute_clusters(features, TINY_CLUSTERS, tmp_path)
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.reduced, second.reduced)
    assert first.silhouette == second.silhouette


def test_cache_key_follows_features_and_parameters(features: np.ndarray, tmp_path: Path) -> None:
    load_or_compute_clusters(features, TINY_CLUSTERS, tmp_path)
    load_or_compute_clusters(features * 2, TINY_CLUSTERS, tmp_path)
    load_or_compute_clusters(features, ClusterConfig(pca_dim=8, n_clusters=3, restarts=1), tmp_path)
    assert len(list((tmp_path / CACHE_DIR).glob("clusters-*.npz"))) == 3
