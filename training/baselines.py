"""The methods the evaluation compares, behind one interface: fit on training data, then
score the candidates of one replayed basket.

CuratorNet is scored through its exported ONNX files, opened by the loader the service uses
(`curatornet.model_loader`, with every check of the model format), never through Keras.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
from sklearn.decomposition import PCA
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.neural_network import MLPRegressor

from curatornet.dataset import Dataset
from curatornet.model_loader import LoadedModel, load_model
from curatornet.synthetic import MarketTruth
from training.sampling import SamplingConfig, Triples, sample_triples

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Query:
    """One held-out basket at the moment it happened."""

    user: int
    time: int
    profile: np.ndarray  # items the user bought before this basket
    candidates: np.ndarray  # items on sale then, to be ranked
    sales: np.ndarray  # [N] purchases of each item before this moment (live, read-only)


class Method(Protocol):
    name: str

    def fit(self, train: Dataset) -> None: ...

    def score(self, query: Query) -> np.ndarray: ...


class RandomMethod:
    name = "Random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def fit(self, train: Dataset) -> None:
        pass

    def score(self, query: Query) -> np.ndarray:
        return self.rng.random(len(query.candidates))


class MostPopular:
    """Best sellers among what is for sale, counted up to the moment of the basket."""

    name = "Most popular"

    def fit(self, train: Dataset) -> None:
        pass

    def score(self, query: Query) -> np.ndarray:
        return query.sales[query.candidates].astype(np.float64)


class VisRank:
    """Content-based: cosine similarity of a candidate's features to the profile's items,
    aggregated by max or by average (Kang et al. 2017; Messina et al. 2018)."""

    def __init__(self, aggregate: str) -> None:
        if aggregate not in ("max", "avg"):
            raise ValueError(aggregate)
        self.aggregate = aggregate
        self.name = f"VisRank ({aggregate})"
        self.unit: np.ndarray | None = None

    def fit(self, train: Dataset) -> None:
        norms = np.linalg.norm(train.features, axis=1, keepdims=True)
        self.unit = train.features / np.maximum(norms, 1e-12)

    def score(self, query: Query) -> np.ndarray:
        assert self.unit is not None
        similarity = self.unit[query.candidates] @ self.unit[query.profile].T
        return similarity.max(axis=1) if self.aggregate == "max" else similarity.mean(axis=1)


class CuratorNetOnnx:
    """A model directory scored with ONNX Runtime: item embeddings once, a user per query."""

    def __init__(self, directory: Path | str, name: str = "CuratorNet", history_limit: int = 300):
        self.directory = Path(directory)
        self.name = name
        self.history_limit = history_limit
        self.model: LoadedModel = load_model(self.directory)
        self.embeddings: np.ndarray | None = None

    def fit(self, train: Dataset) -> None:
        if train.feature_dim != self.model.feature_dim:
            raise ValueError(
                f"{self.directory}: model expects {self.model.feature_dim}-d features, "
                f"the data has {train.feature_dim}"
            )
        self.embeddings = np.concatenate(
            [
                self.model.embed_items(train.features[start : start + 4096])
                for start in range(0, train.n_items, 4096)
            ]
        )

    def score(self, query: Query) -> np.ndarray:
        assert self.embeddings is not None
        history = self.embeddings[query.profile[-self.history_limit :]][None]
        mask = np.ones(history.shape[:2], np.float32)
        interests = self.model.embed_users(history, mask)[0]
        return self.model.score(interests, self.embeddings[query.candidates])


class Ceiling:
    """Ranks by the synthetic market's hidden true utility: no method can know more."""

    name = "Ceiling (true tastes)"

    def __init__(self, truth: MarketTruth) -> None:
        self.truth = truth

    def fit(self, train: Dataset) -> None:
        pass

    def score(self, query: Query) -> np.ndarray:
        return self.truth.utility(np.array([query.user]), query.candidates)[0]


@dataclass(frozen=True)
class StyleReadingConfig:
    """The regressor that reads a work's hidden style from its features."""

    components: int = 256  # principal components of the unit feature vectors it sees
    hidden: int = 256
    l2: float = 1e-3
    folds: int = 5
    seed: int = 0


class FeatureCeiling:
    """The ceiling with each work's style as well as its features show it.

    Everything hidden stays known (customers' tastes, appeal, loyalty, editions) except the
    style, which a supervised regressor (an MLP on the features' principal components) reads
    from the features, trained on the true styles of other works: k-fold cross-fitting, so
    no work's own style is ever seen. No recommender can have this much (it learns from
    purchases, not from the hidden styles), so the gap from here to the ceiling is what the
    features cannot tell any method, and the gap from a method to here is what the method
    fails to learn. `r2` is the share of style variance the features explain.
    """

    name = "Ceiling (style read from features)"

    def __init__(self, truth: MarketTruth, config: StyleReadingConfig | None = None) -> None:
        self.truth = truth
        self.config = config or StyleReadingConfig()
        self.read: MarketTruth | None = None
        self.r2 = float("nan")

    def fit(self, train: Dataset) -> None:
        c = self.config
        style = np.asarray(self.truth.item_style, np.float64)
        # Unit rows, as every visual method here sees them; the principal components are
        # fitted on all works' features (no styles involved, so nothing leaks) and keep their
        # relative variances, which the regressor reads better than whitened ones.
        unit = train.features / np.maximum(
            np.linalg.norm(train.features, axis=1, keepdims=True), 1e-12
        )
        components = min(c.components, *unit.shape)
        projected = PCA(components, random_state=c.seed).fit_transform(unit)
        projected /= max(float(projected[:, 0].std()), 1e-12)
        reader = MLPRegressor(
            hidden_layer_sizes=(c.hidden,),
            alpha=c.l2,
            early_stopping=True,
            max_iter=200,
            random_state=c.seed,
        )
        folds = KFold(c.folds, shuffle=True, random_state=c.seed)
        read = cross_val_predict(reader, projected, style, cv=folds)
        self.r2 = float(1 - ((read - style) ** 2).sum() / ((style - style.mean(0)) ** 2).sum())
        log.info("%s: the features explain %.3f of the style variance", self.name, self.r2)
        self.read = replace(self.truth, item_style=read.astype(np.float32))

    def score(self, query: Query) -> np.ndarray:
        assert self.read is not None
        return self.read.utility(np.array([query.user]), query.candidates)[0]


@dataclass(frozen=True)
class VBPRConfig:
    latent_dim: int = 100
    visual_dim: int = 100  # 100 + 100 = CuratorNet's 200, as in the paper
    l2: float = 1e-4
    learning_rate: float = 1e-3
    epochs: int = 10
    batch_size: int = 4096
    triples: int = 300_000
    seed: int = 0


class VBPR:
    """VBPR (He & McAuley, AAAI 2016): latent plus visual factors, trained with BPR.

    score(u, i) = beta_i + gamma_u . gamma_i + theta_u . (E f_i) + beta' . f_i on z-scored
    features. VBPR knows users and items, not profiles or baskets, so of the paper's
    guidelines only the first applies to it as such (an item the user bought beats one they
    did not; the second, a one-item profile, is the same (user, positive, negative) draw
    for a model without profiles). The two variants therefore differ in their negatives
    only: "same-cluster negatives" samples guideline 1, whose negatives come from the
    positive's visual cluster 60 % of the time; "uniform negatives" draws them uniformly.
    """

    def __init__(
        self,
        clusters: np.ndarray,
        reduced: np.ndarray,
        strategy: str,
        config: VBPRConfig | None = None,
    ) -> None:
        self.clusters, self.reduced = clusters, reduced
        self.strategy = strategy
        self.config = config or VBPRConfig()
        label = "same-cluster negatives" if strategy == "guidelines" else "uniform negatives"
        self.name = f"VBPR ({label})"

    def _triples(self, train: Dataset) -> Triples:
        guidelines = self.strategy == "guidelines"
        return sample_triples(
            train,
            self.clusters,
            self.reduced,
            SamplingConfig(
                per_guideline=self.config.triples if guidelines else self.config.triples // 6,
                strategy=self.strategy,
                seed=self.config.seed,
                guidelines=(1,),
            ),
        )

    def fit(self, train: Dataset) -> None:
        import keras
        import tensorflow as tf

        config = self.config
        keras.utils.set_random_seed(config.seed)
        triples = self._triples(train)
        mean, std = train.features.mean(0), np.maximum(train.features.std(0), 1e-6)
        features = tf.constant(((train.features - mean) / std).astype(np.float32))
        n_users, n_items, f = train.n_users, train.n_items, train.feature_dim
        init = keras.initializers.RandomNormal(stddev=0.01, seed=config.seed)
        params = {
            "gamma_user": tf.Variable(init((n_users, config.latent_dim))),
            "gamma_item": tf.Variable(init((n_items, config.latent_dim))),
            "theta_user": tf.Variable(init((n_users, config.visual_dim))),
            "embedding": tf.Variable(init((f, config.visual_dim))),
            "beta_item": tf.Variable(tf.zeros(n_items)),
            "beta_visual": tf.Variable(tf.zeros(f)),
        }
        variables = list(params.values())
        optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)

        def score(users, items):
            visual = tf.gather(features, items)
            return (
                tf.gather(params["beta_item"], items)
                + tf.reduce_sum(
                    tf.gather(params["gamma_user"], users) * tf.gather(params["gamma_item"], items),
                    1,
                )
                + tf.reduce_sum(
                    tf.gather(params["theta_user"], users) * (visual @ params["embedding"]), 1
                )
                + tf.linalg.matvec(visual, params["beta_visual"])
            )

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)] * 3)
        def step(users, positives, negatives):
            with tf.GradientTape() as tape:
                difference = score(users, positives) - score(users, negatives)
                loss = tf.reduce_mean(tf.nn.softplus(-difference))
                touched = [
                    tf.gather(params["gamma_user"], users),
                    tf.gather(params["theta_user"], users),
                    tf.gather(params["gamma_item"], positives),
                    tf.gather(params["gamma_item"], negatives),
                    tf.gather(params["beta_item"], positives),
                    tf.gather(params["beta_item"], negatives),
                ]
                penalty = (
                    tf.add_n([tf.reduce_sum(tf.square(t)) for t in touched])
                    / tf.cast(tf.shape(users)[0], tf.float32)
                    + tf.reduce_sum(tf.square(params["embedding"]))
                    + tf.reduce_sum(tf.square(params["beta_visual"]))
                )
                total = loss + config.l2 * penalty
            optimizer.apply_gradients(zip(tape.gradient(total, variables), variables, strict=True))
            return loss

        rng = np.random.default_rng(config.seed)
        for epoch in range(config.epochs):
            order = rng.permutation(len(triples))
            losses = [
                float(
                    step(
                        triples.user[rows],
                        triples.positive[rows],
                        triples.negative[rows],
                    )
                )
                for rows in np.array_split(order, max(1, len(order) // config.batch_size))
            ]
            log.info("%s epoch %d: loss %.4f", self.name, epoch + 1, np.mean(losses))
        visual = features.numpy() @ params["embedding"].numpy()
        self.item_bias = (
            params["beta_item"].numpy() + features.numpy() @ params["beta_visual"].numpy()
        )
        self.item_factors = np.concatenate([params["gamma_item"].numpy(), visual], axis=1)
        self.user_factors = np.concatenate(
            [params["gamma_user"].numpy(), params["theta_user"].numpy()], axis=1
        )

    def score(self, query: Query) -> np.ndarray:
        items = query.candidates
        return self.item_bias[items] + self.item_factors[items] @ self.user_factors[query.user]
