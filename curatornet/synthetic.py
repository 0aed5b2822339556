"""A synthetic art market that behaves like UGallery, with the customers' tastes known.

The original data set cannot be downloaded here, so the project ships this generator. Its
knobs model a market, nothing else:

- artists belong to visual movements; each has a style (a point in a latent style space)
  and a spread, a start date, a productivity, and a medium (painters sell one-of-a-kind
  works, photographers mostly sell small editions);
- artworks are uploaded over about two years; an artwork's latent is its artist's style
  plus variation, plus "nuisance" content (subject, framing) that customers do not care
  about;
- features (2048-d, non-negative and sparse like pooled CNN activations) come from the
  latent through one fixed random non-linear map plus noise, so visual similarity reflects
  style, but not trivially;
- customers arrive over time with hidden tastes (one to three style preferences, some
  loyal to an artist) and buy in baskets from what is for sale at that moment; a
  one-of-a-kind work leaves the inventory when sold, an edition when its stock runs out;
- how often customers come back and how big their baskets are follow heavy-tailed
  (Lomax) laws whose parameters were fitted to the published UGallery figures, drawn at
  stratified quantiles so that the extremes (the busiest customer, the biggest basket)
  are stable from seed to seed.

Everything is seeded: the same config and seed give the same bytes on disk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from curatornet.dataset import Dataset

TASTES_FILE = "tastes.npz"
GENERATOR_VERSION = 1
MAX_PREFERENCES = 3


@dataclass(frozen=True)
class MarketConfig:
    n_items: int = 13_297
    n_users: int = 2_919
    n_artists: int = 573
    days: float = 730.0
    start_timestamp: int = 1_451_606_400  # 2016-01-01T00:00:00Z
    # Visual style space.
    style_dim: int = 16
    nuisance_dim: int = 16
    n_movements: int = 12
    movement_spread: float = 1.0
    artist_spread: float = 0.6
    artwork_spread: tuple[float, float] = (0.25, 0.6)
    artist_productivity_sigma: float = 1.0
    # Media: photographers sell editions, painters (almost always) one-of-a-kind works.
    photographer_item_share: float = 0.22  # share of the catalogue made by photographers
    photographer_edition_rate: float = 0.9
    painter_edition_rate: float = 0.03
    edition_sizes: tuple[int, ...] = (2, 3, 5, 8, 10)
    # Customers' activity: extra baskets and extra items per basket are Lomax(shape, scale),
    # floored; fitted to 4,897 baskets, 6,535 purchases, max 271 per user, max basket 21.
    repeat_shape: float = 1.41
    repeat_scale: float = 0.43
    basket_shape: float = 3.65
    basket_scale: float = 1.81
    # Customers' tastes and choice.
    preference_weights: tuple[float, ...] = (0.5, 0.3, 0.2)  # P(1, 2, 3 preferences)
    preference_jitter: float = 0.3
    taste_width: float = 1.5
    loyalty_rate: float = 0.5
    loyalty_bonus: float = 1.5
    appeal_sigma: float = 0.5
    edition_appeal: float = -1.7  # collectors prize originals over edition prints
    choice_temperature: float = 1.0
    # Feature rendering.
    feature_dim: int = 2048
    render_hidden: int = 256
    nuisance_scale: float = 1.0
    feature_noise: float = 0.35
    feature_threshold: float = 0.25

    def scaled(self, scale: float) -> MarketConfig:
        """The same market with items, customers and artists grown or shrunk by ``scale``."""
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        return replace(
            self,
            n_items=max(round(self.n_items * scale), 2),
            n_users=max(round(self.n_users * scale), 1),
            n_artists=max(round(self.n_artists * scale), 1),
        )


@dataclass(frozen=True, eq=False)
class MarketTruth:
    """The hidden state behind the purchases: what evaluation needs to compute the ceiling."""

    item_style: np.ndarray  # float32 [N, style_dim]
    item_appeal: np.ndarray  # float32 [N]
    item_artist: np.ndarray  # int64 [N]
    item_is_edition: np.ndarray  # bool [N]
    user_preferences: np.ndarray  # float32 [U, 3, style_dim]
    user_preference_weights: np.ndarray  # float32 [U, 3], 0 for an unused slot
    user_favourite_artist: np.ndarray  # int64 [U], -1 when not loyal
    taste_width: float
    loyalty_bonus: float
    edition_appeal: float

    def utility(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[len(users), len(items)] utilities, the log-odds customers choose by."""
        users = np.asarray(users)
        items = np.asarray(items)
        style = self.item_style[items]  # [I, d]
        prefs = self.user_preferences[users]  # [B, K, d]
        squared = (
            (prefs**2).sum(-1)[:, :, None]
            - 2 * np.einsum("bkd,id->bki", prefs, style)
            + (style**2).sum(-1)[None, None, :]
        )
        with np.errstate(divide="ignore"):
            log_weights = np.log(self.user_preference_weights[users])[:, :, None]
        logits = log_weights - squared / (2 * self.taste_width**2)
        peak = logits.max(axis=1, keepdims=True)
        taste = (peak + np.log(np.exp(logits - peak).sum(axis=1, keepdims=True)))[:, 0, :]
        loyal = self.user_favourite_artist[users][:, None] == self.item_artist[items][None, :]
        return (
            taste
            + self.loyalty_bonus * loyal
            + self.item_appeal[items][None, :]
            + self.edition_appeal * self.item_is_edition[items][None, :]
        ).astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def load(cls, path: Path | str) -> MarketTruth:
        with np.load(path, allow_pickle=False) as archive:
            values = {f.name: archive[f.name] for f in fields(cls)}
        for name in ("taste_width", "loyalty_bonus", "edition_appeal"):
            values[name] = float(values[name])
        return cls(**values)


@dataclass(frozen=True, eq=False)
class Market:
    dataset: Dataset
    truth: MarketTruth
    config: MarketConfig
    seed: int


def _ids(kind: str, seed: int, count: int) -> np.ndarray:
    """Opaque, stable, hash-like ids (like the published data's hashed ids)."""
    ids = [
        hashlib.blake2b(f"{kind}:{seed}:{i}".encode(), digest_size=8).hexdigest()
        for i in range(count)
    ]
    if len(set(ids)) != count:  # 64-bit hashes: never expected, but never silently wrong
        raise RuntimeError(f"{kind} id collision for seed {seed}")
    return np.asarray(ids)


def lomax_quantiles(count: int, shape: float, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Floored Lomax draws at stratified quantiles (i + 0.5) / count, in random order."""
    quantiles = (np.arange(count) + 0.5) / count
    values = np.floor(scale * ((1 - quantiles) ** (-1 / shape) - 1)).astype(np.int64)
    return rng.permutation(values)


def _artists(config: MarketConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    movements = rng.normal(0, config.movement_spread, (config.n_movements, config.style_dim))
    movement = rng.integers(0, config.n_movements, config.n_artists)
    horizon = config.days * 86_400
    return {
        "style": movements[movement]
        + rng.normal(0, config.artist_spread, (config.n_artists, config.style_dim)),
        "spread": rng.uniform(*config.artwork_spread, config.n_artists),
        # Some artists were already selling when the data window opens (negative start).
        "start": rng.uniform(-0.3 * horizon, 0.85 * horizon, config.n_artists),
        "productivity": rng.lognormal(0, config.artist_productivity_sigma, config.n_artists),
    }


def _items(config: MarketConfig, artists: dict[str, np.ndarray], rng: np.random.Generator):
    n, n_artists = config.n_items, config.n_artists
    # Every artist has at least one work when there are enough; the rest follow productivity.
    base = np.ones(n_artists, dtype=np.int64) if n >= n_artists else np.zeros(n_artists, np.int64)
    counts = base + rng.multinomial(
        n - base.sum(), artists["productivity"] / artists["productivity"].sum()
    )
    artist = np.repeat(np.arange(n_artists), counts)
    # Photographers, taken in random order until they make their share of the catalogue.
    in_order = rng.permutation(n_artists)
    made = np.cumsum(counts[in_order])
    photographer = np.zeros(n_artists, dtype=bool)
    photographer[in_order[: np.searchsorted(made, config.photographer_item_share * n) + 1]] = True
    horizon = config.days * 86_400
    start = np.maximum(artists["start"][artist], 0)
    upload = config.start_timestamp + np.floor(start + rng.random(n) * (horizon - start))
    style = artists["style"][artist] + artists["spread"][artist, None] * rng.standard_normal(
        (n, config.style_dim)
    )
    nuisance = config.nuisance_scale * rng.standard_normal((n, config.nuisance_dim))
    appeal = rng.normal(0, config.appeal_sigma, n)
    edition_rate = np.where(
        photographer[artist], config.photographer_edition_rate, config.painter_edition_rate
    )
    is_edition = rng.random(n) < edition_rate
    edition_size = np.where(is_edition, rng.choice(config.edition_sizes, n), 1)
    order = np.lexsort((np.arange(n), upload))  # inventory in upload order
    return {
        "artist": artist[order],
        "upload": upload[order].astype(np.int64),
        "style": style[order].astype(np.float32),
        "nuisance": nuisance[order].astype(np.float32),
        "appeal": appeal[order].astype(np.float32),
        "edition_size": edition_size[order].astype(np.int64),
    }


def _customers(config: MarketConfig, artists, items, rng: np.random.Generator):
    n_users = config.n_users
    # Preferences sit near real artists' styles, drawn in proportion to how much they make.
    artist_weight = np.bincount(items["artist"], minlength=config.n_artists).astype(float)
    n_prefs = 1 + rng.choice(len(config.preference_weights), n_users, p=config.preference_weights)
    anchor = rng.choice(
        config.n_artists, (n_users, MAX_PREFERENCES), p=artist_weight / artist_weight.sum()
    )
    prefs = artists["style"][anchor] + rng.normal(
        0, config.preference_jitter, (n_users, MAX_PREFERENCES, config.style_dim)
    )
    used = np.arange(MAX_PREFERENCES)[None, :] < n_prefs[:, None]
    weights = rng.dirichlet(np.ones(MAX_PREFERENCES), n_users) * used
    weights /= weights.sum(axis=1, keepdims=True)
    loyal = rng.random(n_users) < config.loyalty_rate
    favourite = np.where(loyal, anchor[:, 0], -1)
    return {
        "preferences": prefs.astype(np.float32),
        "weights": weights.astype(np.float32),
        "favourite": favourite.astype(np.int64),
    }


def _basket_events(config: MarketConfig, rng: np.random.Generator):
    """(user, time, size) of every checkout, sorted by time."""
    n_users = config.n_users
    n_baskets = 1 + lomax_quantiles(n_users, config.repeat_shape, config.repeat_scale, rng)
    horizon = config.days * 86_400
    opening = 0.03 * horizon  # the shop has some stock before the first customer comes
    # Loyal, frequent customers have been around longer: U ** sqrt(n) skews arrival early.
    arrival = opening + (horizon - opening) * rng.random(n_users) ** np.sqrt(n_baskets)
    user = np.repeat(np.arange(n_users), n_baskets)
    first = np.r_[0, np.cumsum(n_baskets)[:-1]]
    offset = rng.random(len(user)) * (horizon - arrival[user])
    offset[first] = 0.0
    time = np.floor(config.start_timestamp + arrival[user] + offset).astype(np.int64)
    # Distinct seconds per customer, so that no two checkouts merge into one basket.
    order = np.lexsort((time, user))
    user, time = user[order], time[order]
    for k in range(1, len(time)):
        if user[k] == user[k - 1] and time[k] <= time[k - 1]:
            time[k] = time[k - 1] + 1
    size = 1 + lomax_quantiles(len(user), config.basket_shape, config.basket_scale, rng)
    order = np.lexsort((user, time))
    return user[order], time[order], size[order]


def _simulate_purchases(config, items, truth: MarketTruth, rng: np.random.Generator):
    """Replay checkouts in time order against the live inventory."""
    events_user, events_time, events_size = _basket_events(config, rng)
    stock = items["edition_size"].copy()
    upload = items["upload"]
    bought: dict[int, set[int]] = {}
    purchase_user: list[int] = []
    purchase_item: list[int] = []
    purchase_time: list[int] = []
    for user, when, size in zip(events_user, events_time, events_size, strict=True):
        on_sale = np.flatnonzero(stock[: np.searchsorted(upload, when, side="right")] > 0)
        owned = bought.setdefault(int(user), set())
        if owned:
            on_sale = on_sale[~np.isin(on_sale, list(owned))]
        if len(on_sale) == 0:
            continue
        utility = truth.utility(np.array([user]), on_sale)[0] / config.choice_temperature
        noisy = utility + rng.gumbel(size=len(on_sale))
        take = min(int(size), len(on_sale))
        chosen = on_sale[np.argpartition(-noisy, take - 1)[:take]]
        stock[chosen] -= 1
        owned.update(chosen.tolist())
        purchase_user.extend([int(user)] * take)
        purchase_item.extend(chosen.tolist())
        purchase_time.extend([int(when)] * take)
    return (
        np.asarray(purchase_user, np.int64),
        np.asarray(purchase_item, np.int64),
        np.asarray(purchase_time, np.int64),
    )


@dataclass(frozen=True, eq=False)
class FeatureMap:
    """The one fixed random two-layer map from latents to features, drawn once per market."""

    first: np.ndarray  # [latent, hidden]
    first_bias: np.ndarray
    second: np.ndarray  # [hidden, feature_dim]
    second_bias: np.ndarray
    noise: float

    @classmethod
    def draw(cls, config: MarketConfig, latent_dim: int, rng: np.random.Generator) -> FeatureMap:
        first = rng.standard_normal((latent_dim, config.render_hidden), dtype=np.float32)
        first /= np.sqrt(latent_dim, dtype=np.float32)
        first_bias = rng.normal(0, 0.5, config.render_hidden).astype(np.float32)
        second = rng.standard_normal((config.render_hidden, config.feature_dim), dtype=np.float32)
        second /= np.sqrt(config.render_hidden, dtype=np.float32)
        second_bias = rng.normal(-config.feature_threshold, 0.2, config.feature_dim)
        return cls(first, first_bias, second, second_bias.astype(np.float32), config.feature_noise)

    def render(
        self, style: np.ndarray, nuisance: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Features of these works, noise drawn from `rng`: rendering works in batches, in
        order, gives the same bytes as rendering them at once."""
        latent = np.concatenate([style, nuisance], axis=1).astype(np.float32)
        hidden = np.tanh(latent @ self.first + self.first_bias)
        features = hidden @ self.second + self.second_bias
        features += self.noise * rng.standard_normal(features.shape, dtype=np.float32)
        np.maximum(features, 0, out=features)
        return features


def render_features(
    config: MarketConfig, style: np.ndarray, nuisance: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Latents → non-negative sparse features through one fixed random two-layer map + noise."""
    latent_dim = style.shape[1] + nuisance.shape[1]
    return FeatureMap.draw(config, latent_dim, rng).render(style, nuisance, rng)


def _streams(seed: int) -> list[np.random.Generator]:
    """Independent random streams: artists, items, customers, purchases, features, spare."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)]


def catalogue_batches(
    config: MarketConfig, seed: int = 0, batch: int = 10_000
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The artworks `generate(config, seed)` makes, without its customers: (artist index,
    features) `batch` works at a time, in inventory order, with the very features
    `generate` renders. For catalogues too large to hold at once or to simulate a market's
    purchases over: a million works' features take 8 GB."""
    streams = _streams(seed)
    items = _items(config, _artists(config, streams[0]), streams[1])
    rng = streams[4]
    feature_map = FeatureMap.draw(config, config.style_dim + config.nuisance_dim, rng)
    for start in range(0, config.n_items, batch):
        rows = slice(start, start + batch)
        features = feature_map.render(items["style"][rows], items["nuisance"][rows], rng)
        yield items["artist"][rows], features


def generate(config: MarketConfig | None = None, seed: int = 0, *, features: bool = True) -> Market:
    """Build a market. ``features=False`` skips rendering (zero-width features) for speed."""
    config = config or MarketConfig()
    streams = _streams(seed)
    artists = _artists(config, streams[0])
    items = _items(config, artists, streams[1])
    customers = _customers(config, artists, items, streams[2])
    truth = MarketTruth(
        item_style=items["style"],
        item_appeal=items["appeal"],
        item_artist=items["artist"],
        item_is_edition=items["edition_size"] > 1,
        user_preferences=customers["preferences"],
        user_preference_weights=customers["weights"],
        user_favourite_artist=customers["favourite"],
        taste_width=config.taste_width,
        loyalty_bonus=config.loyalty_bonus,
        edition_appeal=config.edition_appeal,
    )
    purchase_user, purchase_item, purchase_time = _simulate_purchases(
        config, items, truth, streams[3]
    )
    if features:
        matrix = render_features(config, items["style"], items["nuisance"], streams[4])
    else:
        matrix = np.zeros((config.n_items, 0), np.float32)

    # Keep only customers who bought something, in id order (what a reload of the CSVs gives).
    user_ids = _ids("user", seed, config.n_users)
    active = np.unique(purchase_user)
    by_id = active[np.argsort(user_ids[active])]
    new_index = np.full(config.n_users, -1, np.int64)
    new_index[by_id] = np.arange(len(by_id))
    truth = replace(
        truth,
        user_preferences=truth.user_preferences[by_id],
        user_preference_weights=truth.user_preference_weights[by_id],
        user_favourite_artist=truth.user_favourite_artist[by_id],
    )
    dataset = Dataset.build(
        item_ids=_ids("artwork", seed, config.n_items),
        artist_ids=_ids("artist", seed, config.n_artists)[items["artist"]],
        upload_time=items["upload"],
        edition_size=items["edition_size"],
        features=matrix,
        user_ids=user_ids[by_id],
        purchase_user=new_index[purchase_user],
        purchase_item=purchase_item,
        purchase_time=purchase_time,
    )
    return Market(dataset=dataset, truth=truth, config=config, seed=seed)


def load_truth(data_dir: Path | str, dataset: Dataset) -> MarketTruth:
    """The hidden tastes of a generated market, checked against the data set they belong to."""
    path = Path(data_dir) / TASTES_FILE
    with np.load(path, allow_pickle=False) as archive:
        same_items = np.array_equal(archive["item_ids"], dataset.item_ids)
        same_users = np.array_equal(archive["user_ids"], dataset.user_ids)
    if not (same_items and same_users):
        raise ValueError(f"{path} does not belong to this data set (ids differ)")
    return MarketTruth.load(path)
