"""Small configurations for tests: the real code paths, sized for seconds."""

from __future__ import annotations

from dataclasses import replace

from training.clusters import ClusterConfig
from training.pipeline import RunConfig

TINY_CLUSTERS = ClusterConfig(pca_dim=32, n_clusters=12, restarts=3, seed=0)


def tiny_run_config(seed: int = 0, epochs: int = 8, strategy: str = "guidelines") -> RunConfig:
    config = RunConfig.from_preset("tiny", seed=seed, epochs=epochs, strategy=strategy)
    return replace(
        config,
        clusters=TINY_CLUSTERS,
        train=replace(config.train, batch_size=512, learning_rate=1e-3),
    )
