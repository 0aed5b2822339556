"""`python -m service --demo`: fill an empty store with the synthetic art market.

So that a new user sees real recommendations at once: the default market (seed 0) is
generated in memory (numpy only, a few seconds), its artworks embedded by the served model
and stored in upload order, and its purchases replayed in time order, which sells the
one-of-a-kind works exactly as the market did. A store that already holds items is left alone.
"""

from __future__ import annotations

import logging

import numpy as np

from service.recommender import ItemDraft, Recommender

log = logging.getLogger("service.demo")
BATCH = 1000


def load_demo_market(recommender: Recommender, seed: int = 0) -> None:
    from training.synthetic import MarketConfig, generate

    existing = recommender.store.counts().items
    if existing:
        log.info(
            "demo: the store already holds %d items; not loading the synthetic market", existing
        )
        return
    if recommender.model.feature_dim != 2048:
        raise SystemExit(
            f"--demo needs a model on the synthetic market's 2048-d features; "
            f"{recommender.model.directory} takes {recommender.model.feature_dim}"
        )
    data = generate(MarketConfig(), seed=seed).dataset
    order = np.argsort(data.upload_time, kind="stable")
    for start in range(0, len(order), BATCH):
        rows = order[start : start + BATCH]
        recommender.add_items(
            [
                ItemDraft(
                    id=str(data.item_ids[i]),
                    artist_id=str(data.artist_ids[i]),
                    features=data.features[i],
                    edition_size=None if data.edition_size[i] == 1 else int(data.edition_size[i]),
                    stock=int(data.edition_size[i]),
                    metadata={"title": f"Synthetic work {data.item_ids[i]}"},
                )
                for i in rows
            ]
        )
    baskets = data.baskets
    for b in np.argsort(baskets.time, kind="stable"):
        purchases = baskets.purchases_of(b)
        recommender.purchase(
            str(data.user_ids[baskets.user[b]]),
            [str(data.item_ids[data.purchase_item[p]]) for p in purchases],
            float(baskets.time[b]),
        )
    counts = recommender.store.counts()
    busiest = np.bincount(data.purchase_user).argsort()[::-1][:3]
    log.info(
        "demo: loaded %d artworks (%d for sale) and %d purchases by %d customers; try user_id %s",
        counts.items,
        counts.for_sale,
        counts.purchases,
        counts.users,
        ", ".join(str(data.user_ids[u]) for u in busiest),
    )
