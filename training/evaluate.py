"""The paper's offline protocol: replay the held-out baskets in time order against the
live inventory, rank every candidate, and report metrics with bootstrap intervals.

For each held-out basket (a customer's last, for customers with at least two), at the
moment it happened: the candidates are the artworks already uploaded and still for sale
(a one-of-a-kind work leaves once sold, an edition once its stock is gone, counting every
earlier purchase, training ones included), minus what the customer already owns; the
basket's own items are always candidates (they were evidently for sale). The profile is
everything the customer bought before.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from curatornet.dataset import Dataset
from training.baselines import Method, Query
from training.metrics import (
    auc,
    ndcg_at,
    ndcg_reference_at,
    positions_of,
    precision_at,
    recall_at,
)

log = logging.getLogger(__name__)

CUTOFFS = (20, 100)
CURVE_MAX_K = 200


@dataclass(frozen=True, eq=False)
class Case:
    """A held-out basket ready to rank."""

    query: Query
    relevant: np.ndarray  # bool over query.candidates
    new_user: bool  # the customer had a single earlier basket
    new_items: bool  # every item was uploaded after the customer's last earlier purchase


def replay(dataset: Dataset, train: Dataset, held_out: Dataset) -> Iterator[Case]:
    """Held-out baskets in time order, each with the inventory as it stood at that moment."""
    baskets = held_out.baskets
    order = np.lexsort((baskets.user, baskets.time))
    all_times = dataset.purchase_time  # canonical order is by time already
    sales = np.zeros(dataset.n_items, np.int64)
    cursor = 0
    train_baskets = train.baskets
    baskets_per_user = np.bincount(train_baskets.user, minlength=dataset.n_users)
    for b in order:
        user, when = int(baskets.user[b]), int(baskets.time[b])
        while cursor < len(all_times) and all_times[cursor] < when:
            sales[dataset.purchase_item[cursor]] += 1
            cursor += 1
        items = held_out.purchase_item[baskets.purchases_of(b)]
        mine = train.purchase_user == user
        profile = train.purchase_item[mine][np.argsort(train.purchase_time[mine], kind="stable")]
        # Stock as the training data knows it: where edition sizes are inferred from sales,
        # `train` inferred them from training purchases only (see Dataset.with_purchases).
        on_sale = (dataset.upload_time <= when) & (sales < train.edition_size)
        on_sale[profile] = False
        on_sale[items] = True
        candidates = np.flatnonzero(on_sale)
        last_profile_time = train.purchase_time[mine].max()
        yield Case(
            query=Query(
                user=user, time=when, profile=profile, candidates=candidates, sales=sales.copy()
            ),
            relevant=np.isin(candidates, items),
            new_user=bool(baskets_per_user[user] == 1),
            new_items=bool(np.all(dataset.upload_time[items] > last_profile_time)),
        )


def case_metrics(positions: np.ndarray, n_candidates: int) -> dict[str, float]:
    row = {"AUC": auc(positions, n_candidates)}
    for k in CUTOFFS:
        row[f"R@{k}"] = recall_at(positions, k)
        row[f"P@{k}"] = precision_at(positions, k)
        row[f"nDCG@{k}"] = ndcg_at(positions, k)
    for k in CUTOFFS:
        row[f"nDCG@{k} (ref.)"] = ndcg_reference_at(positions, k)
    return row


def recall_curve(positions: np.ndarray, max_k: int = CURVE_MAX_K) -> np.ndarray:
    """Recall@k for k = 1..max_k."""
    hits = np.searchsorted(positions, np.arange(1, max_k + 1))
    return hits / len(positions)


BOOTSTRAP_RESAMPLES = 1000


def bootstrap_draws(n: int, rng: np.random.Generator, resamples: int = BOOTSTRAP_RESAMPLES):
    """[resamples, n] indices of customers drawn with replacement (one held-out basket each).

    Drawn once per run and shared by every method, so that two methods' intervals come from
    the same resamples and their difference can be bootstrapped pairwise.
    """
    return rng.integers(0, n, (resamples, n)) if n else np.zeros((resamples, 0), np.int64)


def bootstrap_interval(values: np.ndarray, draws: np.ndarray) -> tuple[float, float]:
    """95 % percentile interval of the mean of ``values`` [n] over the resamples ``draws``."""
    if len(values) == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(values[draws].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


@dataclass
class MethodResult:
    name: str
    rows: list[dict[str, float]]
    curves: list[np.ndarray]

    def values(self, metric: str) -> np.ndarray:
        """[baskets] one metric, in replay order."""
        return np.array([row[metric] for row in self.rows])

    def summary(self, mask: np.ndarray, draws: np.ndarray) -> dict[str, dict[str, float]]:
        """Mean and bootstrap interval of every metric over the baskets in ``mask``;
        ``draws`` index those baskets (see `bootstrap_draws`)."""
        out = {}
        for metric in self.rows[0] if self.rows else []:
            values = self.values(metric)[mask]
            low, high = bootstrap_interval(values, draws)
            mean = float(values.mean()) if len(values) else float("nan")
            out[metric] = {"mean": mean, "low": low, "high": high}
        return out


def paired_difference(first: np.ndarray, second: np.ndarray, draws: np.ndarray) -> dict[str, float]:
    """Mean of ``first - second`` over the same baskets, with its paired bootstrap interval:
    each resample takes the same customers for both methods."""
    difference = first - second
    low, high = bootstrap_interval(difference, draws)
    mean = float(difference.mean()) if len(difference) else float("nan")
    return {"mean": mean, "low": low, "high": high}


def evaluate_methods(
    dataset: Dataset,
    train: Dataset,
    held_out: Dataset,
    methods: list[Method],
    *,
    seed: int = 0,
    progress: bool | None = None,
) -> tuple[list[MethodResult], list[Case]]:
    for method in methods:
        log.info("fitting %s", method.name)
        method.fit(train)
    results = [MethodResult(m.name, [], []) for m in methods]
    cases: list[Case] = []
    n_baskets = len(held_out.baskets)
    for case in tqdm(
        replay(dataset, train, held_out),
        total=n_baskets,
        disable=None if progress is None else not progress,
    ):
        cases.append(case)
        for method, result in zip(methods, results, strict=True):
            scores = method.score(case.query)
            # Ties are broken by draws that depend on the basket only, not on which methods
            # ran before: a method's figures do not change when others are added.
            tie_rng = np.random.default_rng([seed, len(cases)])
            positions = positions_of(scores, case.relevant, tie_rng)
            result.rows.append(case_metrics(positions, len(case.query.candidates)))
            result.curves.append(recall_curve(positions))
    return results, cases
