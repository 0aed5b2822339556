"""The in-memory data set every training and evaluation step works on.

Items, users and purchases are held as parallel numpy arrays indexed by position, so that
feature row ``i`` *is* item ``i`` by construction: nothing is ever looked up through the
iteration order of a set or a dict (the reference implementation's alignment bug).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True, eq=False)
class Baskets:
    """Purchases grouped by (user, timestamp), ordered by user, then time.

    A basket is what one customer bought at one checkout. ``purchases[offsets[b]:offsets[b+1]]``
    are the purchase indices of basket ``b``.
    """

    user: np.ndarray  # int64 [B]
    time: np.ndarray  # int64 [B], Unix seconds
    offsets: np.ndarray  # int64 [B + 1]
    purchases: np.ndarray  # int64 [P], purchase indices grouped by basket
    of_purchase: np.ndarray  # int64 [P], basket index of each purchase

    def __len__(self) -> int:
        return len(self.user)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def purchases_of(self, basket: int) -> np.ndarray:
        return self.purchases[self.offsets[basket] : self.offsets[basket + 1]]


@dataclass(frozen=True, eq=False)
class Dataset:
    """An art store's catalogue and purchase log.

    Timestamps are whole Unix seconds (UTC): purchases by one user within the same second
    form one basket. ``edition_size`` is 1 for a one-of-a-kind work, otherwise the number of
    copies for sale. Purchases are kept in a canonical order (time, user, item) so that
    every derived array is deterministic.
    """

    item_ids: np.ndarray  # str [N]
    artist_ids: np.ndarray  # str [N]
    upload_time: np.ndarray  # int64 [N]
    edition_size: np.ndarray  # int64 [N], >= 1
    features: np.ndarray  # float32 [N, F]
    user_ids: np.ndarray  # str [U]
    purchase_user: np.ndarray  # int64 [P], index into user_ids
    purchase_item: np.ndarray  # int64 [P], index into item_ids
    purchase_time: np.ndarray  # int64 [P]
    # True when the inventory gave no edition sizes and they were inferred from the purchases
    # (a work sold k > 1 times is an edition of k): then a subset of the purchases infers
    # them again from its own, so held-out purchases never shape the training inventory.
    edition_size_inferred: bool = False

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        for name in ("artist_ids", "upload_time", "edition_size"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, expected {n}")
        if self.features.ndim != 2 or self.features.shape[0] != n:
            raise ValueError(f"features must be [{n}, F], got {self.features.shape}")
        if self.features.dtype != np.float32:
            raise ValueError(f"features must be float32, got {self.features.dtype}")
        p = len(self.purchase_user)
        if len(self.purchase_item) != p or len(self.purchase_time) != p:
            raise ValueError("purchase_user, purchase_item and purchase_time differ in length")
        if p and (self.purchase_item.min() < 0 or self.purchase_item.max() >= n):
            raise ValueError("purchase_item holds an index outside the item table")
        if p and (self.purchase_user.min() < 0 or self.purchase_user.max() >= len(self.user_ids)):
            raise ValueError("purchase_user holds an index outside the user table")
        if np.any(self.edition_size < 1):
            raise ValueError("edition_size must be >= 1")

    @classmethod
    def build(
        cls,
        *,
        item_ids: np.ndarray,
        artist_ids: np.ndarray,
        upload_time: np.ndarray,
        edition_size: np.ndarray,
        features: np.ndarray,
        user_ids: np.ndarray,
        purchase_user: np.ndarray,
        purchase_item: np.ndarray,
        purchase_time: np.ndarray,
        edition_size_inferred: bool = False,
    ) -> Dataset:
        """Construct with normalised dtypes and purchases in canonical (time, user, item) order."""
        purchase_user = np.asarray(purchase_user, dtype=np.int64)
        purchase_item = np.asarray(purchase_item, dtype=np.int64)
        purchase_time = np.asarray(purchase_time, dtype=np.int64)
        order = np.lexsort((purchase_item, purchase_user, purchase_time))
        return cls(
            item_ids=np.asarray(item_ids, dtype=str),
            artist_ids=np.asarray(artist_ids, dtype=str),
            upload_time=np.asarray(upload_time, dtype=np.int64),
            edition_size=np.asarray(edition_size, dtype=np.int64),
            features=np.ascontiguousarray(features, dtype=np.float32),
            user_ids=np.asarray(user_ids, dtype=str),
            purchase_user=purchase_user[order],
            purchase_item=purchase_item[order],
            purchase_time=purchase_time[order],
            edition_size_inferred=edition_size_inferred,
        )

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_purchases(self) -> int:
        return len(self.purchase_user)

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def one_of_a_kind(self) -> np.ndarray:
        return self.edition_size == 1

    @cached_property
    def item_index(self) -> dict[str, int]:
        return {item_id: i for i, item_id in enumerate(self.item_ids.tolist())}

    @cached_property
    def artist_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(distinct artist ids, artist index of each item) for integer-keyed grouping."""
        artists, of_item = np.unique(self.artist_ids, return_inverse=True)
        return artists, of_item.astype(np.int64)

    @cached_property
    def baskets(self) -> Baskets:
        order = np.lexsort((self.purchase_item, self.purchase_time, self.purchase_user))
        users = self.purchase_user[order]
        times = self.purchase_time[order]
        starts = np.ones(len(order), dtype=bool)
        starts[1:] = (users[1:] != users[:-1]) | (times[1:] != times[:-1])
        start_positions = np.flatnonzero(starts)
        of_sorted = np.cumsum(starts) - 1
        of_purchase = np.empty(len(order), dtype=np.int64)
        of_purchase[order] = of_sorted
        return Baskets(
            user=users[start_positions],
            time=times[start_positions],
            offsets=np.append(start_positions, len(order)).astype(np.int64),
            purchases=order.astype(np.int64),
            of_purchase=of_purchase,
        )

    def with_purchases(self, keep: np.ndarray) -> Dataset:
        """The same catalogue and user table with only the purchases where ``keep`` is true
        (edition sizes inferred from those purchases alone when they were inferred)."""
        edition_size = (
            infer_edition_size(self.purchase_item[keep], self.n_items)
            if self.edition_size_inferred
            else self.edition_size
        )
        return Dataset(
            item_ids=self.item_ids,
            artist_ids=self.artist_ids,
            upload_time=self.upload_time,
            edition_size=edition_size,
            features=self.features,
            user_ids=self.user_ids,
            purchase_user=self.purchase_user[keep],
            purchase_item=self.purchase_item[keep],
            purchase_time=self.purchase_time[keep],
            edition_size_inferred=self.edition_size_inferred,
        )


def infer_edition_size(purchase_item: np.ndarray, n_items: int) -> np.ndarray:
    """[n_items] edition sizes when the inventory does not say: a work sold more than once
    must have been an edition with at least as many copies as were sold."""
    return np.maximum(np.bincount(purchase_item, minlength=n_items), 1).astype(np.int64)
