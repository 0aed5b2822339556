"""The data description the paper gives (section 4.1), computed for any data set."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from curatornet.dataset import Dataset
from training.data.formats import purchases_before_upload, purchases_beyond_stock


@dataclass(frozen=True)
class DatasetStats:
    items: int
    users: int
    purchases: int
    baskets: int
    artists: int
    items_per_artist: float
    one_of_a_kind_items: float  # share of items
    purchases_on_one_of_a_kind: float  # share of purchases
    max_purchases_per_user: int
    max_basket_size: int
    purchases_per_user: float
    feature_dim: int
    days_spanned: float
    purchases_before_upload: int
    purchases_beyond_stock: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


# UGallery as published with the paper and in the project brief. The paper's own
# text gives 573 artists with 10.54 items each, which is 6,040 items, not 13,297: both are
# shown as published.
UGALLERY: dict[str, float | int] = {
    "items": 13_297,
    "users": 2_919,
    "purchases": 6_535,
    "baskets": 4_897,
    "artists": 573,
    "items_per_artist": 10.54,
    "one_of_a_kind_items": 0.78,
    "purchases_on_one_of_a_kind": 0.817,
    "max_purchases_per_user": 271,
    "max_basket_size": 21,
    "purchases_per_user": 6_535 / 2_919,
    "feature_dim": 2048,
}

LABELS = {
    "items": "items",
    "users": "users",
    "purchases": "purchases",
    "baskets": "baskets",
    "artists": "artists",
    "items_per_artist": "items per artist",
    "one_of_a_kind_items": "one-of-a-kind items",
    "purchases_on_one_of_a_kind": "purchases on one-of-a-kind",
    "max_purchases_per_user": "max purchases by one user",
    "max_basket_size": "max basket size",
    "purchases_per_user": "purchases per user",
    "feature_dim": "feature dimension",
    "days_spanned": "days spanned (uploads+purchases)",
    "purchases_before_upload": "purchases dated before upload",
    "purchases_beyond_stock": "purchases beyond edition size",
}

SHARES = {"one_of_a_kind_items", "purchases_on_one_of_a_kind"}


def describe(dataset: Dataset) -> DatasetStats:
    baskets = dataset.baskets
    artists, _ = dataset.artist_index
    per_user = np.bincount(dataset.purchase_user, minlength=dataset.n_users)
    unique = dataset.one_of_a_kind
    times = np.concatenate([dataset.upload_time, dataset.purchase_time])
    return DatasetStats(
        items=dataset.n_items,
        users=dataset.n_users,
        purchases=dataset.n_purchases,
        baskets=len(baskets),
        artists=len(artists),
        items_per_artist=dataset.n_items / max(len(artists), 1),
        one_of_a_kind_items=float(unique.mean()) if dataset.n_items else 0.0,
        purchases_on_one_of_a_kind=(
            float(unique[dataset.purchase_item].mean()) if dataset.n_purchases else 0.0
        ),
        max_purchases_per_user=int(per_user.max(initial=0)),
        max_basket_size=int(baskets.sizes.max(initial=0)),
        purchases_per_user=dataset.n_purchases / max(dataset.n_users, 1),
        feature_dim=dataset.feature_dim,
        days_spanned=float(np.ptp(times) / 86_400) if len(times) else 0.0,
        purchases_before_upload=int(purchases_before_upload(dataset).sum()),
        purchases_beyond_stock=purchases_beyond_stock(dataset),
    )


def _format(name: str, value: float | int | None) -> str:
    if value is None:
        return "-"
    if name in SHARES:
        return f"{100 * value:.1f} %"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return f"{value:,}"


def format_table(stats: DatasetStats, reference: dict[str, float | int] = UGALLERY) -> str:
    """A plain-text table of this data set beside the published UGallery figures."""
    rows = [("figure", "this data set", "UGallery (published)", "ratio")]
    for name, value in stats.as_dict().items():
        published = reference.get(name)
        ratio = f"{value / published:.2f}" if published else ""
        rows.append((LABELS[name], _format(name, value), _format(name, published), ratio))
    widths = [max(len(row[col]) for row in rows) for col in range(4)]
    lines = []
    for k, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
