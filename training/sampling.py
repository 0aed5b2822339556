"""Training triples (profile, positive, negative): the paper's six guidelines (§3.5), or uniform.

Guidelines, numbered as in the project's issue:

1. profile = the user's history; positive = an item in it; negative = an item outside it.
2. profile = one purchased item (a fake one-item user); positive = that item.
3. profile = the user's history; positive = an unbought item by the user's favourite artist
   in a visual cluster the user bought from; negative = an item sharing neither the user's
   artists nor the user's clusters.
4. profile = one purchased item; positive = another work by the same artist; negative = a
   work by another artist that is visually farther from the profile item by a margin.
5. profile = the user's baskets before basket b; positive = an item of basket b.
6. profile = the user's history with one item hidden; positive = the hidden item.

Unless a guideline says otherwise, a negative is never an item the user bought and, with
probability ``same_cluster_negative`` (0.6), is drawn from the positive's visual cluster
(the paper's fine-grained rule). ``random`` is the classic BPR setting for the ablation:
profile = history, positive in it, negative uniform among the items the user did not buy.

A profile is stored once in a table and referred to by id; triples are exactly
de-duplicated on (profile content, positive, negative), never through a lossy hash.
Everything is vectorised numpy drawn from one seeded generator.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from curatornet.dataset import Dataset

log = logging.getLogger(__name__)

GUIDELINES = (1, 2, 3, 4, 5, 6)
RANDOM = 0  # guideline code of uniform-negative triples

PRESETS: dict[str, int] = {"tiny": 4_000, "quick": 50_000, "default": 250_000, "paper": 1_700_000}
"""Triples per guideline. `paper`: 6 x 1.7M, about 10M as in the paper."""


@dataclass(frozen=True)
class SamplingConfig:
    per_guideline: int = PRESETS["quick"]
    strategy: str = "guidelines"  # or "random"
    same_cluster_negative: float = 0.6
    margin: float = 0.05
    validation_share: float = 0.05
    seed: int = 0
    guidelines: tuple[int, ...] = GUIDELINES  # which ones to sample, with "guidelines"

    def __post_init__(self) -> None:
        if self.strategy not in ("guidelines", "random"):
            raise ValueError(f"strategy must be 'guidelines' or 'random', got {self.strategy!r}")
        if not self.guidelines or not set(self.guidelines) <= set(GUIDELINES):
            raise ValueError(f"guidelines must be a non-empty subset of {GUIDELINES}")


@dataclass(frozen=True, eq=False)
class Triples:
    profile: np.ndarray  # int64 [T], id into the profile table
    positive: np.ndarray  # int64 [T]
    negative: np.ndarray  # int64 [T]
    guideline: np.ndarray  # int8 [T], 1..6, or 0 for uniform negatives
    user: np.ndarray  # int64 [T], whose purchases the triple comes from (negatives avoid them)
    profile_offsets: np.ndarray  # int64 [Q + 1]
    profile_items: np.ndarray  # int64, concatenated profiles

    def __len__(self) -> int:
        return len(self.positive)

    def subset(self, rows: np.ndarray) -> Triples:
        return Triples(
            profile=self.profile[rows],
            positive=self.positive[rows],
            negative=self.negative[rows],
            guideline=self.guideline[rows],
            user=self.user[rows],
            profile_offsets=self.profile_offsets,
            profile_items=self.profile_items,
        )

    def profile_of(self, row: int) -> np.ndarray:
        q = self.profile[row]
        return self.profile_items[self.profile_offsets[q] : self.profile_offsets[q + 1]]

    def gather_profiles(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flattened profile items, index of the row each belongs to) for a batch of rows."""
        ids = self.profile[rows]
        starts = self.profile_offsets[ids]
        lengths = self.profile_offsets[ids + 1] - starts
        segment = np.repeat(np.arange(len(rows)), lengths)
        first = np.cumsum(lengths) - lengths
        position = np.arange(lengths.sum()) - np.repeat(first, lengths) + np.repeat(starts, lengths)
        return self.profile_items[position], segment


@dataclass
class _ProfileTable:
    """Distinct profiles (sorted item tuples) → ids; identical content gets one id."""

    ids: dict[tuple[int, ...], int] = field(default_factory=dict)
    contents: list[tuple[int, ...]] = field(default_factory=list)

    def add(self, items: np.ndarray) -> int:
        key = tuple(np.unique(items).tolist())
        if not key:
            raise ValueError("empty profile")
        found = self.ids.get(key)
        if found is None:
            found = self.ids[key] = len(self.contents)
            self.contents.append(key)
        return found

    def add_many(
        self, keys: np.ndarray, build: Callable[[tuple[int, ...]], np.ndarray]
    ) -> np.ndarray:
        """Profile ids for rows of ``keys``, building each distinct key's content once."""
        distinct, inverse = np.unique(keys, axis=0, return_inverse=True)
        ids = np.array([self.add(build(tuple(row.tolist()))) for row in distinct], np.int64)
        return ids[inverse.ravel()]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        lengths = np.array([len(c) for c in self.contents], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        items = np.fromiter((i for c in self.contents for i in c), np.int64, int(offsets[-1]))
        return offsets, items


def _csr(groups: np.ndarray, values: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((values, groups))
    counts = np.bincount(groups, minlength=n_groups)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), values[order]


class _Context:
    """Lookup structures over the training purchases, built once per sampling run."""

    def __init__(self, train: Dataset, clusters: np.ndarray, reduced: np.ndarray) -> None:
        self.n_items = train.n_items
        self.cluster = np.asarray(clusters, np.int64)
        _, self.artist = train.artist_index
        norms = np.linalg.norm(reduced, axis=1, keepdims=True)
        self.unit = (reduced / np.maximum(norms, 1e-12)).astype(np.float32)
        n = self.n_items
        pairs = np.unique(train.purchase_user * n + train.purchase_item)
        self.pair_user, self.pair_item = pairs // n, pairs % n
        self.bought_keys = pairs
        self.user_offsets, self.user_items = _csr(self.pair_user, self.pair_item, train.n_users)
        self.cluster_offsets, self.cluster_items = _csr(
            self.cluster, np.arange(n), int(self.cluster.max()) + 1
        )
        self.artist_offsets, self.artist_items = _csr(
            self.artist, np.arange(n), int(self.artist.max()) + 1
        )
        self.user_artist_keys = np.unique(self.pair_user * n + self.artist[self.pair_item])
        self.user_cluster_keys = np.unique(self.pair_user * n + self.cluster[self.pair_item])
        self.baskets = train.baskets
        self.train = train

    def history(self, user: int) -> np.ndarray:
        return self.user_items[self.user_offsets[user] : self.user_offsets[user + 1]]

    def history_size(self, users: np.ndarray) -> np.ndarray:
        return self.user_offsets[users + 1] - self.user_offsets[users]

    def _has(self, keys: np.ndarray, users: np.ndarray, values: np.ndarray) -> np.ndarray:
        query = users * self.n_items + values
        at = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
        return keys[at] == query

    def bought(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self._has(self.bought_keys, users, items)

    def user_has_artist(self, users: np.ndarray, artists: np.ndarray) -> np.ndarray:
        return self._has(self.user_artist_keys, users, artists)

    def user_has_cluster(self, users: np.ndarray, clusters: np.ndarray) -> np.ndarray:
        return self._has(self.user_cluster_keys, users, clusters)

    def cosine(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.empty(len(a), np.float32)
        for start in range(0, len(a), 100_000):
            chunk = slice(start, start + 100_000)
            out[chunk] = np.einsum("ij,ij->i", self.unit[a[chunk]], self.unit[b[chunk]])
        return out

    def random_member(
        self, offsets: np.ndarray, members: np.ndarray, groups: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        sizes = offsets[groups + 1] - offsets[groups]
        return members[offsets[groups] + np.floor(rng.random(len(groups)) * sizes).astype(np.int64)]

    def negatives(
        self,
        users: np.ndarray,
        positives: np.ndarray,
        rng: np.random.Generator,
        same_cluster_share: float,
        accept: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
        rounds: int = 60,
    ) -> np.ndarray:
        """One negative per row by rejection sampling; -1 where none was found."""
        negative = np.full(len(users), -1, np.int64)
        # The branch is drawn once per row, so rejections cannot skew the 0.6 / 0.4 mix.
        from_cluster = rng.random(len(users)) < same_cluster_share
        todo = np.arange(len(users))
        for round_ in range(rounds):
            if len(todo) == 0:
                break
            if round_ == rounds // 2:  # a cluster the user has bought out: fall back to uniform
                from_cluster[todo] = False
            candidates = rng.integers(0, self.n_items, len(todo))
            clustered = from_cluster[todo]
            if clustered.any():
                candidates[clustered] = self.random_member(
                    self.cluster_offsets,
                    self.cluster_items,
                    self.cluster[positives[todo[clustered]]],
                    rng,
                )
            ok = (candidates != positives[todo]) & ~self.bought(users[todo], candidates)
            if accept is not None:
                ok &= accept(todo, candidates)
            negative[todo[ok]] = candidates[ok]
            todo = todo[~ok]
        return negative


_NOTHING = tuple(np.zeros(0, np.int64) for _ in range(4))


def _anchor_purchases(
    ctx: _Context, count: int, rng, eligible=None
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` (user, item) purchase pairs drawn uniformly among the eligible ones."""
    pool = np.arange(len(ctx.pair_user)) if eligible is None else np.flatnonzero(eligible)
    if len(pool) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pick = pool[rng.integers(0, len(pool), count)]
    return ctx.pair_user[pick], ctx.pair_item[pick]


def _full_history(ctx, table, users):
    return table.add_many(users[:, None], lambda key: ctx.history(key[0]))


def _single_item(table, items):
    return table.add_many(items[:, None], lambda key: np.array(key))


def _guideline_1(ctx, table, count, rng, config):
    users, positives = _anchor_purchases(ctx, count, rng)
    negatives = ctx.negatives(users, positives, rng, config.same_cluster_negative)
    return users, _full_history(ctx, table, users), positives, negatives


def _guideline_2(ctx, table, count, rng, config):
    users, positives = _anchor_purchases(ctx, count, rng)
    negatives = ctx.negatives(users, positives, rng, config.same_cluster_negative)
    return users, _single_item(table, positives), positives, negatives


def _favourite_artist_candidates(ctx: _Context) -> tuple[np.ndarray, np.ndarray]:
    """All (user, item) pairs fit to be a guideline-3 positive."""
    n_artists = int(ctx.artist.max()) + 1
    counts = np.zeros((ctx.train.n_users, n_artists), np.int32)
    np.add.at(counts, (ctx.pair_user, ctx.artist[ctx.pair_item]), 1)
    top = counts.max(axis=1)
    fav_user, fav_artist = np.nonzero((counts == top[:, None]) & (top[:, None] > 0))
    users, items = [], []
    for user, artist in zip(fav_user.tolist(), fav_artist.tolist(), strict=True):
        works = ctx.artist_items[ctx.artist_offsets[artist] : ctx.artist_offsets[artist + 1]]
        users.append(np.full(len(works), user))
        items.append(works)
    users_arr = np.concatenate(users) if users else np.zeros(0, np.int64)
    items_arr = np.concatenate(items) if items else np.zeros(0, np.int64)
    fit = ~ctx.bought(users_arr, items_arr) & ctx.user_has_cluster(
        users_arr, ctx.cluster[items_arr]
    )
    return users_arr[fit], items_arr[fit]


def _guideline_3(ctx, table, count, rng, config):
    cand_users, cand_items = _favourite_artist_candidates(ctx)
    if len(cand_users) == 0:
        return _NOTHING
    pick = rng.integers(0, len(cand_users), count)
    users, positives = cand_users[pick], cand_items[pick]

    def shares_nothing(rows, candidates):
        return ~ctx.user_has_artist(users[rows], ctx.artist[candidates]) & ~ctx.user_has_cluster(
            users[rows], ctx.cluster[candidates]
        )

    negatives = ctx.negatives(users, positives, rng, 0.0, accept=shares_nothing)
    return users, _full_history(ctx, table, users), positives, negatives


def _guideline_4(ctx, table, count, rng, config):
    artist_size = np.diff(ctx.artist_offsets)
    eligible = artist_size[ctx.artist[ctx.pair_item]] >= 2
    users, anchors = _anchor_purchases(ctx, count, rng, eligible)
    if len(users) == 0:
        return _NOTHING
    positives = anchors.copy()
    same = positives == anchors
    while same.any():  # another work by the same artist
        positives[same] = ctx.random_member(
            ctx.artist_offsets, ctx.artist_items, ctx.artist[anchors[same]], rng
        )
        same = positives == anchors
    positive_similarity = ctx.cosine(anchors, positives)

    def other_artist_farther(rows, candidates):
        return (ctx.artist[candidates] != ctx.artist[anchors[rows]]) & (
            ctx.cosine(anchors[rows], candidates) + config.margin <= positive_similarity[rows]
        )

    negatives = ctx.negatives(
        users, positives, rng, config.same_cluster_negative, accept=other_artist_farther
    )
    return users, _single_item(table, anchors), positives, negatives


def _guideline_5(ctx, table, count, rng, config):
    baskets = ctx.baskets
    later = np.ones(len(baskets), dtype=bool)
    later[0] = False
    later[1:] = baskets.user[1:] == baskets.user[:-1]  # not the user's first basket
    purchase_basket = baskets.of_purchase
    eligible = np.flatnonzero(later[purchase_basket])
    if len(eligible) == 0:
        return _NOTHING
    pick = eligible[rng.integers(0, len(eligible), count)]
    users = ctx.train.purchase_user[pick]
    positives = ctx.train.purchase_item[pick]
    basket = purchase_basket[pick]

    def earlier_baskets(key):
        user, b = key
        first = b
        while first > 0 and baskets.user[first - 1] == user:
            first -= 1
        rows = baskets.purchases[baskets.offsets[first] : baskets.offsets[b]]
        return ctx.train.purchase_item[rows]

    profiles = table.add_many(np.stack([users, basket], axis=1), earlier_baskets)
    negatives = ctx.negatives(users, positives, rng, config.same_cluster_negative)
    return users, profiles, positives, negatives


def _guideline_6(ctx, table, count, rng, config):
    eligible = ctx.history_size(ctx.pair_user) >= 2
    users, positives = _anchor_purchases(ctx, count, rng, eligible)

    def without(key):
        user, item = key
        history = ctx.history(user)
        return history[history != item]

    profiles = table.add_many(np.stack([users, positives], axis=1), without)
    negatives = ctx.negatives(users, positives, rng, config.same_cluster_negative)
    return users, profiles, positives, negatives


def _uniform(ctx, table, count, rng, config):
    users, positives = _anchor_purchases(ctx, count, rng)
    negatives = ctx.negatives(users, positives, rng, 0.0)
    return users, _full_history(ctx, table, users), positives, negatives


SAMPLERS = {
    1: _guideline_1,
    2: _guideline_2,
    3: _guideline_3,
    4: _guideline_4,
    5: _guideline_5,
    6: _guideline_6,
    RANDOM: _uniform,
}


def _first_occurrences(
    profile: np.ndarray, positive: np.ndarray, negative: np.ndarray
) -> np.ndarray:
    """Indices of the first occurrence of each distinct (profile, positive, negative), in order."""
    order = np.lexsort((negative, positive, profile))
    p, i, j = profile[order], positive[order], negative[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (p[1:] != p[:-1]) | (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    # lexsort is stable: the first of each run is its earliest occurrence.
    return np.sort(order[new])


def sample_triples(
    train: Dataset, clusters: np.ndarray, reduced: np.ndarray, config: SamplingConfig
) -> Triples:
    """All triples for a training run (validation included: see `split_validation`)."""
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    ctx = _Context(train, clusters, reduced)
    table = _ProfileTable()
    codes = config.guidelines if config.strategy == "guidelines" else (RANDOM,)
    per_code = config.per_guideline if config.strategy == "guidelines" else config.per_guideline * 6
    parts: list[tuple[np.ndarray, ...]] = []
    for code in codes:
        user = profile = positive = negative = np.zeros(0, np.int64)
        for _ in range(5):  # top up after de-duplication, a few times at most
            missing = per_code - len(positive)
            if missing <= 0:
                break
            u, p, i, j = SAMPLERS[code](ctx, table, int(missing * 1.05) + 8, rng, config)
            valid = j >= 0
            user = np.concatenate([user, u[valid]])
            profile = np.concatenate([profile, p[valid]])
            positive = np.concatenate([positive, i[valid]])
            negative = np.concatenate([negative, j[valid]])
            keep = _first_occurrences(profile, positive, negative)
            user, profile, positive, negative = (
                user[keep],
                profile[keep],
                positive[keep],
                negative[keep],
            )
        keep = slice(0, per_code)
        code_column = np.full(len(positive[keep]), code, np.int8)
        parts.append((user[keep], profile[keep], positive[keep], negative[keep], code_column))
        log.info("guideline %d: %d triples", code, len(positive[keep]))
    user, profile, positive, negative, guideline = (
        np.concatenate(column) for column in zip(*parts, strict=True)
    )
    keep = _first_occurrences(profile, positive, negative)  # exact, across guidelines too
    offsets, items = table.arrays()
    triples = Triples(
        profile=profile[keep],
        positive=positive[keep],
        negative=negative[keep],
        guideline=guideline[keep],
        user=user[keep],
        profile_offsets=offsets,
        profile_items=items,
    )
    elapsed = time.perf_counter() - started
    log.info(
        "sampled %d triples (%d profiles) in %.1f s: %.0f triples/s",
        len(triples),
        len(table.contents),
        elapsed,
        len(triples) / max(elapsed, 1e-9),
    )
    return triples


def split_validation(triples: Triples, share: float, seed: int) -> tuple[Triples, Triples]:
    """(training, validation) triples: a seeded random ``share`` is held out."""
    order = np.random.default_rng(seed).permutation(len(triples))
    n_validation = round(share * len(triples))
    return triples.subset(np.sort(order[n_validation:])), triples.subset(
        np.sort(order[:n_validation])
    )
