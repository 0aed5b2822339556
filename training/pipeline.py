"""Data directory → trained, exported model directory: what `python -m training train` runs."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from curatornet.model_format import ARCHITECTURES
from training.clusters import ClusterConfig, load_or_compute_clusters
from training.data.formats import DataError, load_dataset
from training.data.stats import describe
from training.evaluate import replay
from training.export import export_model
from training.model import ModelConfig
from training.multi_interest import MultiInterestConfig
from training.sampling import PRESETS, SamplingConfig, sample_triples, split_validation
from training.split import split_last_basket
from training.train import TrainConfig, TrainResult, train_model
from training.train_multi_interest import train_multi_interest

log = logging.getLogger(__name__)

# Maximum epochs, and for the multi-interest model the triples per guideline: it learns from
# a softmax over each batch, so it needs far fewer rows than BPR on single triples.
EPOCHS = {"tiny": 8, "quick": 10, "default": 12, "paper": 10}
MULTI_INTEREST_TRIPLES = {"tiny": 4_000, "quick": 20_000, "default": 50_000, "paper": 50_000}
MULTI_INTEREST_EPOCHS = {"tiny": 4, "quick": 6, "default": 8, "paper": 8}


@dataclass(frozen=True)
class RunConfig:
    preset: str = "quick"
    architecture: str = "multi-interest"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    clusters: ClusterConfig = field(default_factory=ClusterConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    multi_interest: MultiInterestConfig = field(default_factory=MultiInterestConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_preset(
        cls,
        preset: str,
        *,
        architecture: str = "multi-interest",
        seed: int = 0,
        epochs: int | None = None,
        l2: float | None = None,
        strategy: str = "guidelines",
    ) -> RunConfig:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; choose from {ARCHITECTURES}")
        if architecture == "paper":
            per_guideline = PRESETS[preset]
            train = TrainConfig(epochs=epochs or EPOCHS[preset], seed=seed)
        else:
            per_guideline = MULTI_INTEREST_TRIPLES[preset]
            train = TrainConfig(
                epochs=epochs or MULTI_INTEREST_EPOCHS[preset],
                seed=seed,
                batch_size=1024,
                learning_rate=3e-4,
            )
        if l2 is not None:
            train = replace(train, l2=l2)
        return cls(
            preset=preset,
            architecture=architecture,
            sampling=SamplingConfig(per_guideline=per_guideline, strategy=strategy, seed=seed),
            clusters=ClusterConfig(seed=seed),
            train=train,
        )


@dataclass
class RunResult:
    manifest: dict
    result: TrainResult
    triples: int
    triples_per_second: float


def train_and_export(
    data_dir: Path | str,
    out_dir: Path | str,
    config: RunConfig,
    *,
    features_path: Path | str | None = None,
    allow_pickle: bool = False,
    progress: bool | None = None,
    image_encoder: Path | str | None = None,
) -> RunResult:
    """Train and export; `image_encoder` (an encoder manifest) is named in the exported
    manifest when the features came from it, so the service can take pictures."""
    data_dir = Path(data_dir)
    dataset = load_dataset(data_dir, features_path=features_path, allow_pickle=allow_pickle)
    extractor = _named_encoder(image_encoder, out_dir, dataset.feature_dim)
    train, held_out = split_last_basket(dataset)
    clusters = load_or_compute_clusters(dataset.features, config.clusters, data_dir)

    started = time.perf_counter()
    if config.architecture == "paper":
        triples = sample_triples(train, clusters.labels, clusters.reduced, config.sampling)
        sampling_seconds = time.perf_counter() - started
        fit, validation = split_validation(
            triples, config.sampling.validation_share, config.sampling.seed
        )
        result = train_model(
            dataset.features, fit, validation, config.model, config.train, progress=progress
        )
        validation_count = len(validation)
    else:
        # Each customer's last training basket is held back and replayed to select the model.
        fitted, held_back = split_last_basket(train)
        triples = sample_triples(fitted, clusters.labels, clusters.reduced, config.sampling)
        sampling_seconds = time.perf_counter() - started
        fit = triples
        cases = list(replay(train, fitted, held_back))
        if not cases:
            log.warning("no customer has two training baskets: the last epoch is kept")
        result = train_multi_interest(
            dataset.features, triples, cases, config.multi_interest, config.train, progress=progress
        )
        validation_count = len(cases)
    details = {
        "training": {
            "data": {
                "directory": data_dir.name,
                "all": describe(dataset).as_dict(),
                "held_out_purchases": held_out.n_purchases,
            },
            "preset": config.preset,
            "architecture": config.architecture,
            "seed": config.train.seed,
            "sampling": asdict(config.sampling),
            "triples": {
                "train": len(fit),
                "validation": validation_count,
                "per_guideline": {
                    str(int(code)): int(count)
                    for code, count in zip(
                        *np.unique(triples.guideline, return_counts=True), strict=True
                    )
                },
                "triples_per_second": len(triples) / max(sampling_seconds, 1e-9),
            },
            "clusters": {**asdict(config.clusters), "silhouette": clusters.silhouette},
            "hyperparameters": asdict(config.train),
        },
        "metrics": result.summary(),
    }
    manifest = export_model(result.model, out_dir, details, extractor)
    return RunResult(
        manifest=manifest,
        result=result,
        triples=len(triples),
        triples_per_second=len(triples) / max(sampling_seconds, 1e-9),
    )


def _named_encoder(
    encoder: Path | str | None, out_dir: Path | str, feature_dim: int
) -> dict | None:
    """The manifest entry naming the image encoder, by a path relative to the model."""
    if encoder is None:
        return None
    encoder = Path(encoder)
    try:
        described = json.loads(encoder.read_text())
        output_dim, name, sha256 = described["output_dim"], described["name"], described["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(encoder, f"not a readable image encoder manifest ({error})") from None
    if output_dim != feature_dim:
        raise DataError(encoder, f"gives {output_dim}-d features, the data has {feature_dim}-d")
    return {
        "name": name,
        "manifest": os.path.relpath(encoder.resolve(), Path(out_dir).resolve()),
        "sha256": sha256,
    }
