"""Visual clusters for the sampling guidelines (paper §3.5).

z-score → PCA(200) → KMeans(k=100), the best of several seeded restarts by silhouette
score. The result is cached beside the data, keyed by a hash of the features and every
parameter, so repeated training runs do not recompute it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler

log = logging.getLogger(__name__)

CACHE_DIR = ".curatornet-cache"


@dataclass(frozen=True)
class ClusterConfig:
    pca_dim: int = 200
    n_clusters: int = 100
    restarts: int = 20
    silhouette_sample: int = 5_000
    seed: int = 0


@dataclass(frozen=True, eq=False)
class VisualClusters:
    labels: np.ndarray  # int64 [N]
    reduced: np.ndarray  # float32 [N, pca_dim], z-scored then PCA-projected features
    silhouette: float


def cluster_features(features: np.ndarray, config: ClusterConfig) -> VisualClusters:
    standardized = StandardScaler().fit_transform(features.astype(np.float64))
    dim = min(config.pca_dim, *standardized.shape)
    reduced = PCA(n_components=dim, svd_solver="full", random_state=config.seed).fit_transform(
        standardized
    )
    k = min(config.n_clusters, len(features) - 1)
    sample = min(config.silhouette_sample, len(features))
    best: tuple[float, np.ndarray] | None = None
    for restart in range(config.restarts):
        labels = KMeans(n_clusters=k, n_init=1, random_state=config.seed + restart).fit_predict(
            reduced
        )
        score = float(
            silhouette_score(reduced, labels, sample_size=sample, random_state=config.seed)
        )
        log.debug("kmeans restart %d: silhouette %.4f", restart, score)
        if best is None or score > best[0]:
            best = (score, labels)
    assert best is not None
    return VisualClusters(
        labels=best[1].astype(np.int64), reduced=reduced.astype(np.float32), silhouette=best[0]
    )


def _cache_key(features: np.ndarray, config: ClusterConfig) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(features, dtype=np.float32).tobytes())
    digest.update(repr(sorted(vars(config).items())).encode())
    return digest.hexdigest()[:24]


def load_or_compute_clusters(
    features: np.ndarray, config: ClusterConfig, cache_root: Path | None
) -> VisualClusters:
    """Clusters from ``cache_root/.curatornet-cache`` when present, else computed and stored."""
    path = None
    if cache_root is not None:
        path = Path(cache_root) / CACHE_DIR / f"clusters-{_cache_key(features, config)}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as cached:
                log.info("visual clusters from cache %s", path)
                return VisualClusters(
                    labels=cached["labels"],
                    reduced=cached["reduced"],
                    silhouette=float(cached["silhouette"]),
                )
    clusters = cluster_features(features, config)
    log.info(
        "visual clusters: %d, best silhouette %.4f of %d restarts",
        len(np.unique(clusters.labels)),
        clusters.silhouette,
        config.restarts,
    )
    if path is not None:
        try:
            path.parent.mkdir(exist_ok=True)
            np.savez(
                path,
                labels=clusters.labels,
                reduced=clusters.reduced,
                silhouette=np.float64(clusters.silhouette),
            )
        except OSError as error:  # a read-only data directory is fine: just no cache
            log.warning("cannot cache visual clusters at %s: %s", path, error)
    return clusters
