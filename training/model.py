"""CuratorNet in Keras 3: an item tower and a user tower, scored by dot product.

Item tower: standardised features → 200 → 200 (SELU), shared by profile, positive and
negative items. User tower: concat(average, max) of the profile's item embeddings →
300 → 300 → 200 (SELU). The reference code's sizes; the paper's text says 300, 200, 200,
so the sizes are parameters.

Training embeds each distinct item of a batch once and pools profiles with segment
reductions over a flat list (no padding at all); the exported graphs take a padded
``history`` with a ``mask``. Both pool the same way, and the tests check it.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

FEATURE_STD_FLOOR = 1e-6
MASK_FILL = 1e9  # padded history slots sit this far below every real one before a pooling


@dataclass(frozen=True)
class ModelConfig:
    item_layers: tuple[int, ...] = (200, 200)
    user_layers: tuple[int, ...] = (300, 300, 200)

    def __post_init__(self) -> None:
        if self.item_layers[-1] != self.user_layers[-1]:
            raise ValueError(
                f"item and user embeddings must have one size, got {self.item_layers[-1]} "
                f"and {self.user_layers[-1]}"
            )

    @property
    def embedding_dim(self) -> int:
        return self.item_layers[-1]


def _tower(sizes: tuple[int, ...], input_dim: int, name: str) -> keras.Sequential:
    return keras.Sequential(
        [keras.Input((input_dim,))]
        + [
            keras.layers.Dense(size, activation="selu", kernel_initializer="lecun_normal")
            for size in sizes
        ],
        name=name,
    )


class CuratorNet:
    """The two towers plus the feature standardisation they are trained under."""

    def __init__(
        self, feature_mean: np.ndarray, feature_std: np.ndarray, config: ModelConfig
    ) -> None:
        self.config = config
        self.feature_mean = np.asarray(feature_mean, np.float32)
        self.feature_std = np.maximum(np.asarray(feature_std, np.float32), FEATURE_STD_FLOOR)
        feature_dim = len(self.feature_mean)
        self.item_tower = _tower(config.item_layers, feature_dim, "item_tower")
        self.user_tower = _tower(config.user_layers, 2 * config.embedding_dim, "user_tower")

    @classmethod
    def for_features(cls, features: np.ndarray, config: ModelConfig) -> CuratorNet:
        return cls(features.mean(axis=0), features.std(axis=0), config)

    @property
    def feature_dim(self) -> int:
        return len(self.feature_mean)

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        return self.item_tower.trainable_variables + self.user_tower.trainable_variables

    @property
    def kernels(self) -> list[tf.Variable]:
        return [layer.kernel for layer in (*self.item_tower.layers, *self.user_tower.layers)]

    def standardize(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.feature_mean) / self.feature_std).astype(np.float32)

    def l2_penalty(self, l2: float) -> tf.Tensor:
        """λ · ½‖W‖² over the kernels (biases are not regularised)."""
        return l2 * 0.5 * tf.add_n([tf.reduce_sum(tf.square(k)) for k in self.kernels])

    def user_from_segments(
        self, embeddings: tf.Tensor, segments: tf.Tensor, n_users: tf.Tensor, training: bool
    ) -> tf.Tensor:
        """User vectors from a flat list of profile embeddings and the row each belongs to."""
        average = tf.math.unsorted_segment_mean(embeddings, segments, n_users)
        maximum = tf.math.unsorted_segment_max(embeddings, segments, n_users)
        return self.user_tower(tf.concat([average, maximum], axis=1), training=training)

    # The functions below are the exported graphs' reference: raw features in, and a padded
    # history with its mask. The ONNX files must agree with them (the parity tests).

    def embed_items(self, features: np.ndarray) -> np.ndarray:
        standardized = self.standardize(np.asarray(features, np.float32))
        return np.asarray(self.item_tower(standardized, training=False))

    def embed_users(self, history: np.ndarray, mask: np.ndarray) -> np.ndarray:
        history = tf.convert_to_tensor(history, tf.float32)
        mask = tf.convert_to_tensor(mask, tf.float32)[:, :, None]
        count = tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
        average = tf.reduce_sum(history * mask, axis=1) / count
        maximum = tf.reduce_max(history * mask + (mask - 1.0) * MASK_FILL, axis=1)
        pooled = tf.concat([average, maximum], axis=1)
        return np.asarray(self.user_tower(pooled, training=False))

    def weights(self) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
        """Each tower's (kernel, bias) pairs as numpy, in layer order."""
        return {
            name: [(np.asarray(layer.kernel), np.asarray(layer.bias)) for layer in tower.layers]
            for name, tower in (("item", self.item_tower), ("user", self.user_tower))
        }
