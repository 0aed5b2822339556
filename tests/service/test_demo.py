"""`--demo` on a small market: pictures for the shipped model, vectors for the 2048-d one, the
painted features' cache, and the new works it paints for the README's upload example."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from curatornet.model_loader import LoadOptions, load_model
from curatornet.painter import looks, paint
from curatornet.synthetic import MarketConfig, generate
from service.demo import load_demo_market
from service.index import ItemIndex
from service.indexing import CatalogueIndex
from service.pictures import repainted, web_copy
from service.stores import open_store
from service.stores.base import Store
from tests.service.helpers import DEFAULT_MODEL, FEATURES_MODEL, exported

SCALE = 0.02


def demo_store(model_dir: Path, store_path: Path) -> tuple[Store, CatalogueIndex]:
    """A fresh store, and its index for the model in `model_dir`."""
    store = open_store(f"sqlite:///{store_path}")
    catalogue = CatalogueIndex(store, ItemIndex)
    catalogue.switch_model(load_model(model_dir, LoadOptions(threads=2)))
    return store, catalogue


def test_the_picture_model_gets_the_market_painted_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "service.demo")
    market = generate(MarketConfig().scaled(SCALE), seed=0, features=False).dataset
    first, first_index = demo_store(DEFAULT_MODEL, tmp_path / "first.db")
    load_demo_market(first, first_index, scale=SCALE, demo_dir=tmp_path / "demo")
    counts = first.counts()
    assert (counts.items, counts.purchases) == (len(market.item_ids), len(market.purchase_item))
    assert "demo: painting" in caplog.text
    [cache] = (tmp_path / "demo").glob("painted-market-*.npy")
    features = np.load(cache)
    assert features.shape == (len(market.item_ids), 1280)
    assert np.isfinite(features).all()
    assert features.std(axis=0).mean() > 0.01  # paintings differ, features too

    caplog.clear()
    second, second_index = demo_store(DEFAULT_MODEL, tmp_path / "second.db")
    load_demo_market(second, second_index, scale=SCALE, demo_dir=tmp_path / "demo")
    assert "demo: painting" not in caplog.text
    assert str(cache) in caplog.text
    some = [str(i) for i in market.item_ids[:5]]
    assert sorted(second.get_items(some)) == sorted(some)
    # Every work keeps its style, from which its picture is the generator's very painting.
    styles = generate(MarketConfig().scaled(SCALE), seed=0, features=False).truth.item_style
    for row in (0, len(market.item_ids) - 1):
        work = str(market.item_ids[row])
        painting = web_copy(paint(looks(styles[row : row + 1])[0], work))
        assert second.picture(work) is None  # nothing stored
        assert repainted(second.get_items([work])[work]) == painting

    new_works = sorted((tmp_path / "demo" / "new-works").glob("*.jpg"))
    assert len(new_works) == 3
    fan, artist = caplog.text.split("customer ")[1].split(" has bought only works by artist ")
    artist = artist.split(";")[0]
    assert all(path.name.startswith(f"{artist}-") for path in new_works)
    history = [purchase.item_id for purchase in second.history(fan)]
    stored = second.get_items(history)
    bought_artists = [stored[item].artist_id for item in history]
    assert len(history) >= 2
    assert set(bought_artists) == {artist}


def test_the_feature_vector_model_gets_vectors_and_a_mismatch_is_refused(tmp_path: Path) -> None:
    store, catalogue = demo_store(FEATURES_MODEL, tmp_path / "vectors.db")
    load_demo_market(store, catalogue, scale=SCALE, demo_dir=tmp_path / "demo")
    assert store.counts().items > 0
    assert not (tmp_path / "demo").exists()  # nothing painted
    narrow = demo_store(exported(tmp_path / "narrow", 16, 8), tmp_path / "narrow.db")
    with pytest.raises(SystemExit, match="takes 16-d"):
        load_demo_market(*narrow, scale=SCALE, demo_dir=tmp_path / "demo")


def test_a_broken_cache_is_painted_again_and_an_unwritable_dir_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "service.demo")
    demo_dir = tmp_path / "demo"
    load_demo_market(*demo_store(DEFAULT_MODEL, tmp_path / "a.db"), demo_dir, scale=SCALE)
    [cache] = demo_dir.glob("painted-market-*.npy")
    good = np.load(cache)
    cache.write_bytes(cache.read_bytes()[:1000])  # a run killed while writing, say
    caplog.clear()
    load_demo_market(*demo_store(DEFAULT_MODEL, tmp_path / "b.db"), demo_dir, scale=SCALE)
    assert "is unreadable" in caplog.text
    assert "demo: painting" in caplog.text
    np.testing.assert_array_equal(np.load(cache), good)

    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit, match="CURATORNET_DEMO_DIR"):
        load_demo_market(
            *demo_store(DEFAULT_MODEL, tmp_path / "c.db"), tmp_path / "a-file" / "demo"
        )


def test_demo_only_with_an_unusable_model_is_a_one_line_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    command = [sys.executable, "-m", "service", "--demo-only", "--model-dir", str(tmp_path)]
    env = {**os.environ, "CURATORNET_STORE_URL": f"sqlite:///{tmp_path / 's.db'}"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "manifest.json: missing" in result.stderr
    assert "Traceback" not in result.stderr
