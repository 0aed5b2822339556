"""The training loops: the epoch loop both architectures share (Adam, LR decay, early stopping,
the best weights kept), and the paper architecture's BPR steps on (profile, positive,
negative) triples, selected on validation pairwise accuracy. The multi-interest model's
steps are in `training.train_multi_interest`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from training.model import CuratorNet, ModelConfig
from training.sampling import Triples

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 4096
    learning_rate: float = 1e-4
    l2: float = 1e-4
    lr_decay: float = 0.6
    lr_patience: int = 2  # epochs without validation improvement before the LR is decayed
    max_decays: int = 10
    stop_patience: int = 4  # epochs without validation improvement before stopping
    seed: int = 0


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    train_loss: float
    train_accuracy: float  # share of triples whose positive outscored their negative
    validation: float  # the run's validation metric (TrainResult.validation_metric)
    learning_rate: float
    seconds: float


@dataclass
class TrainResult:
    model: Any  # CuratorNet or MultiInterestNet, holding the best weights
    validation_metric: str
    history: list[EpochLog] = field(default_factory=list)
    best_epoch: int = 0
    best_validation: float = -np.inf

    @property
    def seconds_per_epoch(self) -> float:
        return float(np.mean([e.seconds for e in self.history])) if self.history else 0.0

    def summary(self) -> dict:
        return {
            "best_epoch": self.best_epoch,
            "validation_metric": self.validation_metric,
            "validation": self.best_validation,
            "seconds_per_epoch": self.seconds_per_epoch,
            "epochs": [asdict(e) for e in self.history],
        }


@dataclass(frozen=True)
class Batch:
    """A batch in the form the compiled step takes: distinct items are embedded once."""

    items: np.ndarray  # int32 [M], distinct catalogue indices touched by the batch
    profile: np.ndarray  # int32 [P], index into ``items`` of each flattened profile entry
    segment: np.ndarray  # int32 [P], which triple each profile entry belongs to
    positive: np.ndarray  # int32 [B], index into ``items``
    negative: np.ndarray  # int32 [B], index into ``items``

    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.items, self.profile, self.segment, self.positive, self.negative


def make_batch(triples: Triples, rows: np.ndarray) -> Batch:
    flat, segment = triples.gather_profiles(rows)
    touched = np.concatenate([flat, triples.positive[rows], triples.negative[rows]])
    items, inverse = np.unique(touched, return_inverse=True)
    n_flat, n_rows = len(flat), len(rows)
    return Batch(
        items=items.astype(np.int32),
        profile=inverse[:n_flat].astype(np.int32),
        segment=segment.astype(np.int32),
        positive=inverse[n_flat : n_flat + n_rows].astype(np.int32),
        negative=inverse[n_flat + n_rows :].astype(np.int32),
    )


# What a compiled step takes: a Batch's five arrays, in field order (Batch.arrays).
BATCH_SIGNATURE = [tf.TensorSpec([None], tf.int32) for _ in range(5)]


class _Steps:
    """Compiled train and evaluation steps over a constant standardised feature matrix."""

    def __init__(self, model: CuratorNet, features: np.ndarray, config: TrainConfig) -> None:
        self.model = model
        self.features = tf.constant(model.standardize(features))
        self.l2 = config.l2
        self.optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)
        self.optimizer.build(model.trainable_variables)
        self.train = tf.function(self._train, input_signature=BATCH_SIGNATURE)
        self.evaluate = tf.function(self._evaluate, input_signature=BATCH_SIGNATURE)

    def _score_difference(self, items, profile, segment, positive, negative, training: bool):
        embeddings = self.model.item_tower(tf.gather(self.features, items), training=training)
        users = self.model.user_from_segments(
            tf.gather(embeddings, profile), segment, tf.shape(positive)[0], training
        )
        positive_score = tf.reduce_sum(users * tf.gather(embeddings, positive), axis=1)
        negative_score = tf.reduce_sum(users * tf.gather(embeddings, negative), axis=1)
        return positive_score - negative_score

    def _train(self, items, profile, segment, positive, negative):
        with tf.GradientTape() as tape:
            difference = self._score_difference(items, profile, segment, positive, negative, True)
            # Sigmoid cross-entropy with label 1 on the score difference, i.e. BPR.
            loss = tf.reduce_mean(tf.nn.softplus(-difference))
            total = loss + self.model.l2_penalty(self.l2)
        variables = self.model.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(total, variables), variables, strict=True))
        return loss, tf.reduce_mean(tf.cast(difference > 0, tf.float32))

    def _evaluate(self, items, profile, segment, positive, negative):
        difference = self._score_difference(items, profile, segment, positive, negative, False)
        return tf.reduce_sum(tf.cast(difference > 0, tf.float32))

    def run(self, step, batch: Batch):
        return step(*batch.arrays())


def pairwise_accuracy(steps: _Steps, triples: Triples, batch_size: int) -> float:
    """Share of triples whose positive outscores their negative."""
    if len(triples) == 0:
        return float("nan")
    correct = 0.0
    for start in range(0, len(triples), batch_size):
        rows = np.arange(start, min(start + batch_size, len(triples)))
        correct += float(steps.run(steps.evaluate, make_batch(triples, rows)))
    return correct / len(triples)


def train_model(
    features: np.ndarray,
    train_triples: Triples,
    validation_triples: Triples,
    model_config: ModelConfig,
    config: TrainConfig,
    *,
    progress: bool | None = None,
) -> TrainResult:
    """The paper's CuratorNet from scratch, BPR on triples, selected on validation pairwise
    accuracy; returns the model holding the best weights seen."""
    keras.utils.set_random_seed(config.seed)
    model = CuratorNet.for_features(features, model_config)
    steps = _Steps(model, features, config)
    return fit(
        TrainResult(model, "pairwise accuracy"),
        model.trainable_variables,
        steps.optimizer,
        lambda rows: steps.run(steps.train, make_batch(train_triples, rows)),
        len(train_triples),
        lambda: pairwise_accuracy(steps, validation_triples, config.batch_size),
        config,
        progress,
    )


def fit(
    result: TrainResult,
    variables: list[tf.Variable],
    optimizer: keras.optimizers.Optimizer,
    train_step: Callable[[np.ndarray], tuple[Any, Any]],
    n_rows: int,
    validate: Callable[[], float],
    config: TrainConfig,
    progress: bool | None,
) -> TrainResult:
    """The epoch loop both architectures share: shuffled batches of rows, a validation score
    after each epoch, the learning rate decayed after `lr_patience` epochs without a new
    best, a stop after `stop_patience`, and the best weights restored at the end."""
    rng = np.random.default_rng(config.seed)
    best_weights = [v.numpy() for v in variables]
    learning_rate = config.learning_rate
    since_best = decays = 0
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        order = rng.permutation(n_rows)  # reshuffled every epoch
        starts = range(0, len(order), config.batch_size)
        losses, accuracies, sizes = [], [], []
        bar = tqdm(
            starts,
            desc=f"epoch {epoch}/{config.epochs}",
            unit="batch",
            disable=None if progress is None else not progress,
        )
        for start in bar:
            rows = order[start : start + config.batch_size]
            loss, accuracy = train_step(rows)
            losses.append(float(loss))
            accuracies.append(float(accuracy))
            sizes.append(len(rows))
            bar.set_postfix(loss=f"{losses[-1]:.4f}", acc=f"{accuracies[-1]:.3f}")
        validation = validate()
        entry = EpochLog(
            epoch=epoch,
            train_loss=float(np.average(losses, weights=sizes)),
            train_accuracy=float(np.average(accuracies, weights=sizes)),
            validation=validation,
            learning_rate=learning_rate,
            seconds=time.perf_counter() - started,
        )
        result.history.append(entry)
        log.info(
            "epoch %d: loss %.4f, train acc %.4f, validation %s %.4f, lr %.2e, %.1f s",
            epoch,
            entry.train_loss,
            entry.train_accuracy,
            result.validation_metric,
            validation,
            learning_rate,
            entry.seconds,
        )
        # Without a validation set (NaN) every epoch counts as the best: the last is kept.
        if validation > result.best_validation or np.isnan(validation):
            result.best_validation = validation
            result.best_epoch = epoch
            best_weights = [v.numpy() for v in variables]
            since_best = 0
            continue
        since_best += 1
        if since_best >= config.stop_patience:
            log.info("early stop: %d epochs without validation improvement", since_best)
            break
        if since_best % config.lr_patience == 0 and decays < config.max_decays:
            learning_rate *= config.lr_decay
            decays += 1
            optimizer.learning_rate.assign(learning_rate)
    for variable, value in zip(variables, best_weights, strict=True):
        variable.assign(value)
    return result
