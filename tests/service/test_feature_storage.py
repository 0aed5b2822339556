"""Raw features kept in 16-bit steps (issue 17): half the bytes of float32, embeddings within
1e-3 of those of the uploaded float32 values for the shipped models, and a store an earlier
release wrote with float32 features still read, served and written to."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import redis

from curatornet.model_loader import LoadOptions, load_model
from curatornet.painter import paint_market
from curatornet.synthetic import MarketConfig, generate
from service.stores import open_store
from service.stores.base import SCALED_TAG, NewItem, as_blob, features_blobs, features_vector
from service.stores.redis import PREFIX
from tests.service.helpers import DEFAULT_MODEL, FEATURES_MODEL, random_item
from tests.service.test_api import post_items, running
from training.data.formats import load_dataset

# What the items table of a store written before features were kept in 16-bit steps looked like:
# the features fourth, and float32.
EARLIER_SCHEMA = """
CREATE TABLE items (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    artist_id TEXT NOT NULL,
    features BLOB NOT NULL,
    embedding BLOB NOT NULL,
    edition_size INTEGER,
    stock INTEGER NOT NULL,
    sold INTEGER NOT NULL DEFAULT 0,
    metadata TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    model_version TEXT NOT NULL DEFAULT ''
);
"""


def assert_stored(read: np.ndarray, sent: np.ndarray) -> None:
    """Within half a step, 1/65534 of the vector's largest magnitude, of what was stored."""
    assert read.dtype == np.float32
    np.testing.assert_allclose(read, sent, rtol=0, atol=np.abs(sent).max() / 65534 * 1.01)


def test_features_round_trip_in_16_bit_steps_and_float32_blobs_still_read() -> None:
    assert np.isnan(np.frombuffer(SCALED_TAG, "<f4")).all()  # features are checked finite
    rng = np.random.default_rng(0)
    vectors = [rng.normal(size=2048).astype(np.float32) * 100, rng.normal(size=7) * 1e30]
    vectors += [np.zeros(3, np.float32), np.array([1000.0, -1e-3, 0.5], np.float32)]
    blobs = features_blobs(vectors)
    assert [len(blob) for blob in blobs] == [8 + 2 * 2048, 8 + 2 * 7, 8 + 2 * 3, 8 + 2 * 3]
    for vector, blob in zip(vectors, blobs, strict=True):
        assert_stored(features_vector(blob), vector)
    np.testing.assert_array_equal(features_vector(as_blob(vectors[0])), vectors[0])
    for refused in ([1.0, np.nan], [np.inf, 0.0], []):
        with pytest.raises(ValueError, match="cannot be stored"):
            features_blobs([np.array(refused, np.float32)])


def test_a_batch_is_encoded_as_each_of_its_vectors_alone() -> None:
    """Batches are encoded as one matrix, vectors of another length one at a time: the bytes
    are the same either way, laid out as the tag, the scale, then the steps."""
    rng = np.random.default_rng(2)
    vectors = [rng.normal(size=64).astype(np.float32) * scale for scale in (1e-30, 1, 1e30)]
    vectors += [np.zeros(64, np.float32), rng.normal(size=64), np.ones(5, np.float32)]
    assert features_blobs(vectors) == [features_blobs([vector])[0] for vector in vectors]
    steps = np.array([32767, -1, 0], "<i2")
    expected = SCALED_TAG + np.float32(1).tobytes() + steps.tobytes()
    assert features_blobs([np.array([32767.0, -1.0, 0.0], np.float32)]) == [expected]


def test_stores_keep_16_bit_steps_and_read_an_earlier_float32_work(store_url: str) -> None:
    store = open_store(store_url)
    rng = np.random.default_rng(1)
    features = [rng.normal(size=16).astype(np.float32) for _ in range(2)]
    embedding = np.ones(3, np.float32)
    store.upsert_items(
        [NewItem(f"w{n}", "a", features[n], embedding, None, None) for n in range(2)]
    )
    # "w1" as an earlier release wrote it: float32 bytes, untagged.
    if store_url.startswith("sqlite"):
        path = store_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as db:
            db.execute("UPDATE items SET features = ? WHERE id = 'w1'", (as_blob(features[1]),))
    else:
        redis.Redis.from_url(store_url).hset(f"{PREFIX}item:w1", "features", as_blob(features[1]))
    read = store.features(["w0", "w1"])
    assert_stored(read["w0"], features[0])
    np.testing.assert_array_equal(read["w1"], features[1])
    items = store.get_items(["w0", "w1"])
    np.testing.assert_array_equal(items["w1"].features, features[1])
    assert store.feature_dim() == 16
    store.close()


def test_an_earlier_sqlite_store_is_served_and_written_to(tmp_path: Path) -> None:
    """The items table of an earlier release (features fourth, float32): the service starts
    on it, recommends from it, and new works are added to it in 16-bit steps."""
    path = tmp_path / "earlier.db"
    old = random_item("old", seed=1)
    model = load_model(FEATURES_MODEL, LoadOptions(threads=1))
    features = np.asarray(old["features"], np.float32)
    with sqlite3.connect(path) as db:
        db.executescript(EARLIER_SCHEMA)
        db.execute(
            "INSERT INTO items (id, artist_id, features, embedding, stock, metadata, created_at, "
            "updated_at, model_version) VALUES ('old', 'a', ?, ?, 1, '{}', 1.0, 1.0, 'earlier')",
            (as_blob(features), as_blob(np.zeros(model.embedding_dim, np.float32))),
        )
    with running(f"sqlite:///{path}") as client:
        post_items(client, [random_item("new", seed=2)])
        stored = client.get("/items/old", params={"include_features": True}).json()
        assert stored["features"] == features.tolist()  # float32, exactly as it was
        similar = client.get("/items/new/similar", params={"k": 1}).json()["items"]
        assert [item["item_id"] for item in similar] == ["old"]
    store = open_store(f"sqlite:///{path}")
    # Embedded again by the served model from the float32 features, on start-up.
    np.testing.assert_allclose(
        store.embeddings(["old"], model.version)["old"],
        model.embed_items(features[None])[0],
        atol=1e-6,
    )
    new = np.asarray(random_item("new", seed=2)["features"], np.float32)
    assert_stored(store.features(["new"])["new"], new)
    store.close()


def painted_features(count: int) -> np.ndarray:
    """The shipped image encoder's features of `count` works of the painted market."""
    market = generate(MarketConfig().scaled(0.01), seed=3, features=False)
    encoder = load_model(DEFAULT_MODEL, LoadOptions(threads=2)).image_encoder
    assert encoder is not None
    styles, ids = market.truth.item_style[:count], market.dataset.item_ids[:count]
    return paint_market(styles, ids, encoder)


@pytest.mark.parametrize("model_dir", [DEFAULT_MODEL, FEATURES_MODEL], ids=["default", "2048"])
def test_embeddings_from_stored_features_match_the_uploaded_ones(
    model_dir: Path, tiny_market_dir: Path, tmp_path: Path
) -> None:
    """What a model re-embeds from the store (a roll-out, a history item embedded by another
    model) against what it embedded at upload, on the features each model takes: the painted
    market's encoder features, the 2048-d market's vectors."""
    model = load_model(model_dir, LoadOptions(threads=2))
    if model.image_encoder is not None:
        features = painted_features(96)
    else:
        features = load_dataset(tiny_market_dir).features
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    ids = [f"w{n}" for n in range(len(features))]
    uploaded = model.embed_items(features)
    store.upsert_items(
        [NewItem(i, "a", f, e, None, None) for i, f, e in zip(ids, features, uploaded, strict=True)]
    )
    stored = store.features(ids)
    recomputed = model.embed_items(np.stack([stored[i] for i in ids]))
    difference = float(np.abs(recomputed - uploaded).max())
    print(f"{model_dir.name}: largest difference {difference:.2e} over {len(ids)} works")
    assert difference < 1e-3
    store.close()
