"""Training the multi-interest model: what it optimises and how it is selected.

Rows are the sampler's (profile, positive, negative) triples, so the paper's guidelines stay
the sources of positives and hard negatives. The loss is a softmax over every item the
batch touches (in-batch negatives, as in two-tower retrieval; the row's own profile is never
a negative) plus BPR against the row's guideline negative, which keeps the whole catalogue
in order and not only its top. The model is selected after each epoch on what the
evaluation measures: a replay of held-back baskets (each customer's last training basket,
ranked against the inventory of that moment), scored by the mean of AUC and recall@100.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from training.evaluate import Case, case_metrics
from training.metrics import positions_of
from training.model import MASK_FILL
from training.multi_interest import MultiInterestConfig, MultiInterestNet
from training.sampling import Triples
from training.train import BATCH_SIGNATURE, TrainConfig, TrainResult, fit, make_batch

VALIDATION_METRIC = "replay mean of AUC and R@100"
EMBED_CHUNK = 8192


@dataclass(frozen=True)
class LossConfig:
    bpr_weight: float = 1.0  # BPR against the guideline negative, beside the softmax


class _Steps:
    def __init__(
        self, model: MultiInterestNet, features: np.ndarray, config: TrainConfig, loss: LossConfig
    ) -> None:
        self.model = model
        self.projected = tf.constant(model.project(features))
        self.l2, self.bpr_weight = config.l2, loss.bpr_weight
        self.optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)
        self.optimizer.build(model.trainable_variables)
        self.train = tf.function(self._train, input_signature=BATCH_SIGNATURE)

    def _train(self, items, profile, segment, positive, negative):
        model = self.model
        with tf.GradientTape() as tape:
            style, bias = model.parts(tf.gather(self.projected, items), True)
            embeddings = model.item_embedding(style, bias)  # [M, E']
            n_rows, n_items = tf.shape(positive)[0], tf.shape(embeddings)[0]
            users = model.users_from_segments(tf.gather(style, profile), segment, n_rows)
            scores = tf.reduce_max(tf.einsum("bke,me->bkm", users, embeddings), axis=1)
            own = tf.one_hot(positive, n_items)  # [B, M]
            owned = tf.scatter_nd(
                tf.stack([segment, profile], axis=1),
                tf.ones_like(profile, tf.float32),
                tf.stack([n_rows, n_items]),
            )
            logits = scores - MASK_FILL * tf.cast(owned - own > 0, tf.float32)
            softmax = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(own, logits))
            difference = tf.gather(scores, positive, batch_dims=1) - tf.gather(
                scores, negative, batch_dims=1
            )
            loss = softmax + self.bpr_weight * tf.reduce_mean(tf.nn.softplus(-difference))
            total = loss + model.l2_penalty(self.l2)
        variables = model.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(total, variables), variables, strict=True))
        return loss, tf.reduce_mean(tf.cast(difference > 0, tf.float32))


def replay_score(
    model: MultiInterestNet, features: np.ndarray, cases: list[Case], history_limit: int = 300
) -> float:
    """Mean of AUC and recall@100 over replayed baskets, scored as the service scores them."""
    if not cases:
        return float("nan")
    embeddings = np.concatenate(
        [
            model.embed_items(features[s : s + EMBED_CHUNK])
            for s in range(0, len(features), EMBED_CHUNK)
        ]
    )
    rows = []
    for n, case in enumerate(cases):
        history = embeddings[case.query.profile[-history_limit:]][None]
        interests = model.embed_users(history, np.ones(history.shape[:2], np.float32))[0]
        scores = (embeddings[case.query.candidates] @ interests.T).max(axis=1)
        positions = positions_of(scores, case.relevant, np.random.default_rng(n))
        rows.append(case_metrics(positions, len(case.query.candidates)))
    return float(np.mean([(row["AUC"] + row["R@100"]) / 2 for row in rows]))


def train_multi_interest(
    features: np.ndarray,
    triples: Triples,
    validation: list[Case],
    model_config: MultiInterestConfig,
    config: TrainConfig,
    loss: LossConfig | None = None,
    *,
    progress: bool | None = None,
) -> TrainResult:
    """Train from scratch; returns the model holding the weights that replayed best."""
    keras.utils.set_random_seed(config.seed)
    model = MultiInterestNet.for_features(features, model_config, config.seed)
    steps = _Steps(model, features, config, loss or LossConfig())
    return fit(
        TrainResult(model, VALIDATION_METRIC),
        model.trainable_variables,
        steps.optimizer,
        lambda rows: steps.train(*make_batch(triples, rows).arrays()),
        len(triples),
        lambda: replay_score(model, features, validation),
        config,
        progress,
    )
