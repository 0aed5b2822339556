"""CuratorNet with several interests per customer: the project's default architecture.

Why not the paper's single user vector: a collector's taste is often a few separate places in
style space, and one vector has to average them, which is how a nearest-neighbour rule on the
raw features (VisRank) came to beat the paper's model. Here, as in MIND (CIKM 2019) and
ComiRec (KDD 2020), the user tower returns K interest vectors and a work's score is the
largest of its K dot products; the service retrieves with one FAISS search of K queries.

Item embedding [N, E'] (E' = style_dim + 1), from raw features x [N, F]:

- style: x / ‖x‖, projected on the first ``projection_dim`` principal directions of the
  catalogue's unit feature vectors (fixed when training starts), then one linear map to
  ``style_dim``, brought to unit length and scaled by a learned w. The linear map starts
  as the identity on the first ``style_dim`` directions, so the untrained model *is*
  VisRank (cosine similarity of the raw features, which those directions preserve); training
  only bends that metric. A deep tower from standardised features, the paper's choice,
  memorises its triples instead (training accuracy 1.0, held-out ranking below VisRank).
- bias: the same projection → SELU layer → 1: how much any customer likes works that look
  like this, whoever they are.

User tower, from the history's item embeddings [B, L, E'] and mask [B, L]: the style parts
are divided back to unit length, K attention heads (a tanh layer, then K logits per item,
softmax over the history) pool them into K interests, each is brought to unit length again,
and a constant 1 meets the item's bias: [B, K, E']. So ``max_k <user_k, item>`` is
w·cos(interest, item) + bias for the best interest; w plays the role of a softmax temperature.

Training pools profiles by segment (no padding), as the paper architecture does; the padded
``embed_users`` is the exported graph's reference and the parity tests hold them together.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from training.model import MASK_FILL

NORM_FLOOR = 1e-12  # squared norm below which a vector is left (nearly) zero, not divided
PROJECTION_SAMPLE = 5_000  # works the principal directions are computed from


@dataclass(frozen=True)
class MultiInterestConfig:
    projection_dim: int = 128
    style_dim: int = 64
    bias_hidden: int = 64
    interests: int = 4
    attention_dim: int = 64
    projection_scale: float = 10.0  # unit projections have components well below 1
    initial_scale: float = 10.0  # w at the start (a softmax temperature of 0.1)

    def __post_init__(self) -> None:
        if self.style_dim > self.projection_dim:
            raise ValueError(
                f"style_dim ({self.style_dim}) cannot exceed projection_dim "
                f"({self.projection_dim}): the style map starts as the identity on them"
            )

    @property
    def embedding_dim(self) -> int:
        """E', the length of an item embedding and of an interest vector (style + bias)."""
        return self.style_dim + 1


def unit_rows(x: tf.Tensor) -> tf.Tensor:
    """Rows scaled to unit length (the exported graphs compute exactly this)."""
    squared = tf.reduce_sum(tf.square(x), -1, keepdims=True)
    return x / tf.sqrt(tf.maximum(squared, NORM_FLOOR))


def principal_directions(features: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
    """[F, dim] the first principal directions (uncentred) of the unit feature vectors, from a
    seeded sample of works: inner products of the projections approximate the raw features'
    cosine similarity. Zero columns pad it when there are fewer works or features than dim."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(features), min(PROJECTION_SAMPLE, len(features)), replace=False))
    sample = np.asarray(unit_rows(tf.constant(features[rows], tf.float32)), np.float64)
    _, _, vt = np.linalg.svd(sample, full_matrices=False)
    directions = vt[:dim].T
    return np.pad(directions, ((0, 0), (0, dim - directions.shape[1]))).astype(np.float32)


class MultiInterestNet:
    """The towers and the fixed projection they share."""

    def __init__(self, projection: np.ndarray, config: MultiInterestConfig) -> None:
        self.config = c = config
        self.projection = np.asarray(projection, np.float32)  # [F, projection_dim], scaled
        identity = np.eye(c.projection_dim, c.style_dim, dtype=np.float32)
        self.style = keras.layers.Dense(
            c.style_dim,
            use_bias=False,
            kernel_initializer=keras.initializers.Constant(identity),
            name="style",
        )
        self.style.build((None, c.projection_dim))
        self.bias_tower = keras.Sequential(
            [
                keras.Input((c.projection_dim,)),
                keras.layers.Dense(c.bias_hidden, "selu", kernel_initializer="lecun_normal"),
                keras.layers.Dense(1),
            ],
            name="bias_tower",
        )
        # tanh(h W1 + b1) W2 + b2: K attention logits per history item.
        self.attention = keras.Sequential(
            [
                keras.Input((c.style_dim,)),
                keras.layers.Dense(c.attention_dim, "tanh"),
                keras.layers.Dense(c.interests),
            ],
            name="attention",
        )
        self.log_scale = tf.Variable(np.float32(np.log(c.initial_scale)), name="log_scale")

    @classmethod
    def for_features(
        cls, features: np.ndarray, config: MultiInterestConfig, seed: int = 0
    ) -> MultiInterestNet:
        directions = principal_directions(features, config.projection_dim, seed)
        return cls(directions * config.projection_scale, config)

    @property
    def feature_dim(self) -> int:
        return int(self.projection.shape[0])

    @property
    def scale(self) -> float:
        return float(np.exp(self.log_scale.numpy()))

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        return [
            *self.style.trainable_variables,
            *self.bias_tower.trainable_variables,
            *self.attention.trainable_variables,
            self.log_scale,
        ]

    @property
    def kernels(self) -> list[tf.Variable]:
        """What weight decay applies to: the bias and attention kernels. The style map is
        pulled towards its starting point (the identity) instead; see `l2_penalty`."""
        return [layer.kernel for layer in (*self.bias_tower.layers, *self.attention.layers)]

    def l2_penalty(self, l2: float) -> tf.Tensor:
        """λ·½‖W‖² on the kernels, and on the style map's distance from the identity, so that
        regularisation pulls towards VisRank's metric rather than towards nothing."""
        c = self.config
        identity = tf.eye(c.projection_dim, c.style_dim)
        squares = [tf.reduce_sum(tf.square(k)) for k in self.kernels]
        squares.append(tf.reduce_sum(tf.square(self.style.kernel - identity)))
        return l2 * 0.5 * tf.add_n(squares)

    def project(self, features: np.ndarray) -> np.ndarray:
        """[N, F] raw features → [N, projection_dim], what both item parts start from."""
        unit = unit_rows(tf.constant(np.asarray(features, np.float32)))
        return np.asarray(unit @ self.projection)

    def parts(self, projected: tf.Tensor, training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        """(unit style part [N, style_dim], bias [N, 1])."""
        style = unit_rows(self.style(projected))
        return style, self.bias_tower(projected, training=training)

    def item_embedding(self, style: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
        return tf.concat([tf.exp(self.log_scale) * style, bias], axis=-1)

    def _attention(self, profile: tf.Tensor) -> tf.Tensor:
        """[..., style_dim] unit style parts → [..., K] attention logits."""
        flat = tf.reshape(profile, [-1, self.config.style_dim])
        logits = self.attention(flat)
        return tf.reshape(logits, tf.concat([tf.shape(profile)[:-1], [-1]], axis=0))

    @staticmethod
    def _interests(pooled: tf.Tensor) -> tf.Tensor:
        """[..., K, style_dim] pooled style parts → [..., K, E'] interests."""
        return tf.concat([unit_rows(pooled), tf.ones_like(pooled[..., :1])], axis=-1)

    def users_from_segments(
        self, profile: tf.Tensor, segments: tf.Tensor, n_users: tf.Tensor
    ) -> tf.Tensor:
        """profile [P, style_dim] unit style parts of the flattened profiles, and the row
        each belongs to → [n_users, K, E'] interests."""
        logits = self._attention(profile)  # [P, K]
        peak = tf.math.unsorted_segment_max(logits, segments, n_users)
        weights = tf.exp(logits - tf.gather(peak, segments))
        weights /= tf.gather(tf.math.unsorted_segment_sum(weights, segments, n_users), segments)
        pooled = tf.math.unsorted_segment_sum(
            weights[:, :, None] * profile[:, None, :], segments, n_users
        )
        return self._interests(pooled)

    # The exported graphs' reference: raw features in; a padded history of item embeddings
    # (as the item tower wrote them) with its mask.

    def embed_items(self, features: np.ndarray) -> np.ndarray:
        """[N, F] raw features → [N, E'] item embeddings."""
        style, bias = self.parts(tf.constant(self.project(features)), False)
        return np.asarray(self.item_embedding(style, bias))

    def embed_users(self, history: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """history [B, L, E'] item embeddings, mask [B, L] → interests [B, K, E']."""
        history = tf.convert_to_tensor(history, tf.float32)
        mask = tf.convert_to_tensor(mask, tf.float32)
        profile = history[..., : self.config.style_dim] / tf.exp(self.log_scale)
        logits = self._attention(profile) + (mask[:, :, None] - 1.0) * MASK_FILL  # [B, L, K]
        weights = tf.nn.softmax(logits, axis=1)
        pooled = tf.einsum("blk,ble->bke", weights, profile)
        return np.asarray(self._interests(pooled))

    def weights(self) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
        """(kernel, bias) pairs as numpy, per dense stack, in layer order."""
        return {
            name: [(np.asarray(layer.kernel), np.asarray(layer.bias)) for layer in stack.layers]
            for name, stack in (("bias", self.bias_tower), ("attention", self.attention))
        }
