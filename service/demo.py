"""`python -m service --demo`: fill an empty store with the synthetic art market.

So that a new user sees real recommendations at once: the default market (seed 0) is
generated, its artworks embedded by the served model and stored in upload order, and its
purchases replayed in time order, which sells the one-of-a-kind works exactly as the market
did. A store that already holds items is left alone.

A model that takes pictures (its manifest names an image encoder) gets the market painted in
pixels and encoded, as it was trained: a minute or two once, then read from a cache keyed
on everything that decides the features. The demo also paints a few new works in the style
of the one artist a customer has ever bought, to upload and watch reach that customer.

Every work keeps its latent style in its metadata (`painted_style`), from which
GET /items/{id}/image repaints it on demand (`service.pictures.repainted`): storing 13,297
paintings would cost about 310 MiB and 94 s of the first start-up, the style 300 bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from curatornet import image_encoder, painter, synthetic
from curatornet.image_encoder import ImageEncoder
from curatornet.model_loader import LoadedModel
from curatornet.painter import looks, paint, styles_like
from curatornet.synthetic import Market, MarketConfig, generate
from service.indexing import CatalogueIndex
from service.pictures import PAINTED_STYLE
from service.stores.base import NewItem, Store

log = logging.getLogger("service.demo")
BATCH = 1000
NEW_WORKS = 3


def load_demo_market(
    store: Store, catalogue: CatalogueIndex, demo_dir: Path, seed: int = 0, scale: float = 1.0
) -> None:
    existing = store.counts().items
    if existing:
        log.info(
            "demo: the store already holds %d items; not loading the synthetic market", existing
        )
        return
    model = catalogue.serving.model
    market = _market_for(model, seed, scale, demo_dir)
    data = market.dataset
    order = np.argsort(data.upload_time, kind="stable")
    for start in range(0, len(order), BATCH):
        rows = order[start : start + BATCH]
        embeddings = model.embed_items(data.features[rows])
        catalogue.upsert_items(
            [
                NewItem(
                    id=str(data.item_ids[i]),
                    artist_id=str(data.artist_ids[i]),
                    features=data.features[i],
                    embedding=embedding,
                    edition_size=None if data.edition_size[i] == 1 else int(data.edition_size[i]),
                    stock=int(data.edition_size[i]),
                    metadata={
                        "title": f"Synthetic work {data.item_ids[i]}",
                        PAINTED_STYLE: [float(v) for v in market.truth.item_style[i]],
                    },
                    model_version=model.version,
                )
                for i, embedding in zip(rows, embeddings, strict=True)
            ]
        )
    baskets = data.baskets
    for b in np.argsort(baskets.time, kind="stable"):
        purchases = baskets.purchases_of(b)
        catalogue.record_purchase(
            str(data.user_ids[baskets.user[b]]),
            [str(data.item_ids[data.purchase_item[p]]) for p in purchases],
            float(baskets.time[b]),
        )
    counts = store.counts()
    busiest = np.bincount(data.purchase_user).argsort()[::-1][:3]
    log.info(
        "demo: loaded %d artworks (%d for sale) and %d purchases by %d customers; try user_id %s",
        counts.items,
        counts.for_sale,
        counts.purchases,
        counts.users,
        ", ".join(str(data.user_ids[u]) for u in busiest),
    )
    if model.image_encoder is not None:
        fan, artist, paths = paint_new_works(market, demo_dir / "new-works")
        log.info(
            "demo: customer %s has bought only works by artist %s; new paintings in that "
            "artist's style, never seen by the model, to upload as that artist's: %s",
            fan,
            artist,
            ", ".join(map(str, paths)),
        )


def _market_for(model: LoadedModel, seed: int, scale: float, demo_dir: Path) -> Market:
    """The market with the features the model was trained on: vectors or encoded paintings."""
    config = MarketConfig().scaled(scale)
    if model.image_encoder is None:
        if model.feature_dim != config.feature_dim:
            raise SystemExit(
                f"--demo needs a model that takes pictures or the synthetic market's "
                f"{config.feature_dim}-d features; {model.directory} takes {model.feature_dim}-d"
            )
        return generate(config, seed=seed)
    market = generate(config, seed=seed, features=False)
    features = _painted_features(market, model.image_encoder, f"{seed}:{scale}", demo_dir)
    dataset = dataclasses.replace(market.dataset, features=features)
    return dataclasses.replace(market, dataset=dataset)


def _painted_features(
    market: Market, encoder: ImageEncoder, market_key: str, demo_dir: Path
) -> np.ndarray:
    """The market's paintings through the encoder, from the cache when it holds them."""
    # Everything that decides the features: the market, the painter, the preprocessing
    # (code and parameters) and the encoder's weights.
    sources = b"".join(
        Path(str(module.__file__)).read_bytes() for module in (painter, synthetic, image_encoder)
    )
    recipe = f"{market_key}:{encoder.sha256}:{encoder.steps}:".encode() + sources
    cache = demo_dir / f"painted-market-{hashlib.sha256(recipe).hexdigest()[:16]}.npy"
    expected = (len(market.dataset.item_ids), encoder.output_dim)
    try:
        demo_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=demo_dir):
            pass  # found out now, not after painting
    except OSError as error:
        raise SystemExit(
            f"--demo cannot write its cache to {demo_dir} (CURATORNET_DEMO_DIR): {error}"
        ) from None
    if cache.exists():
        try:
            features = np.load(cache)
        except (OSError, ValueError) as error:
            log.warning("demo: %s is unreadable (%s); painting again", cache, error)
        else:
            if features.shape == expected and features.dtype == np.float32:
                log.info("demo: the painted market's %s features from %s", encoder.name, cache)
                return features
            log.warning(
                "demo: %s holds %s features, not %s; painting again",
                cache,
                features.shape,
                expected,
            )
    log.info(
        "demo: painting %d artworks and encoding them with %s (once, then cached in %s)",
        expected[0],
        encoder.name,
        cache,
    )
    started = time.perf_counter()
    reported = [0]

    def progress(done: int) -> None:
        if done - reported[0] >= 2000 or done == expected[0]:
            reported[0] = done
            log.info(
                "demo: %d of %d painted (%.0f s)", done, expected[0], time.perf_counter() - started
            )

    features = painter.paint_market(
        market.truth.item_style, market.dataset.item_ids, encoder, on_batch=progress
    )
    # A file of its own, renamed into place: a concurrent first run never reads half of it.
    with tempfile.NamedTemporaryFile(dir=demo_dir, suffix=".npy", delete=False) as partial:
        np.save(partial, features)
    os.replace(partial.name, cache)
    return features


def paint_new_works(
    market: Market, out_dir: Path, count: int = NEW_WORKS
) -> tuple[str, str, list[Path]]:
    """JPEGs of `count` new works in the style of an artist, and the customer to show them to:
    the one with the most purchases that are all by one artist. Returns (customer id, artist
    id, paths)."""
    data, truth = market.dataset, market.truth
    bought_artist = truth.item_artist[data.purchase_item]
    n_artists = int(truth.item_artist.max()) + 1
    pairs = data.purchase_user * n_artists + bought_artist
    per_pair = np.bincount(pairs, minlength=len(data.user_ids) * n_artists)
    per_pair = per_pair.reshape(len(data.user_ids), n_artists)
    loyal = np.where(per_pair.max(axis=1) == per_pair.sum(axis=1), per_pair.max(axis=1), 0)
    user = int(np.argmax(loyal))
    artist = int(np.argmax(per_pair[user]))
    works = np.flatnonzero(truth.item_artist == artist)
    artist_id = str(data.artist_ids[works[0]])
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, look in enumerate(
        looks(styles_like(truth.item_style[works], count, int(artist))), 1
    ):
        path = out_dir / f"{artist_id}-{number}.jpg"
        paint(look, path.stem).save(path, "JPEG", quality=90)
        paths.append(path)
    return str(data.user_ids[user]), artist_id, paths
