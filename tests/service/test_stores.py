"""One behavioural suite, run against both real stores (SQLite file, real redis-server)."""

from __future__ import annotations

import sqlite3
import threading
import time

import numpy as np
import pytest

from service.stores import open_store
from service.stores.base import (
    IndexRecords,
    NewItem,
    NotForSaleError,
    Store,
    UnknownItemsError,
)

F, E = 6, 3


def new_item(
    item_id: str, artist: str = "a1", stock: int = 1, edition: int | None = None, seed: int = 0
) -> NewItem:
    rng = np.random.default_rng(seed)
    return NewItem(
        id=item_id,
        artist_id=artist,
        features=rng.normal(size=F).astype(np.float32),
        embedding=rng.normal(size=E).astype(np.float32),
        edition_size=edition,
        stock=stock,
        metadata={"title": f"work {item_id}"},
        model_version="m1",
    )


def assert_stored(read: np.ndarray, sent: np.ndarray) -> None:
    """Features as a store gives them back: in 16-bit steps, each value within half a step
    (1/65534 of the vector's largest magnitude) of what was stored."""
    np.testing.assert_allclose(read, sent, rtol=0, atol=np.abs(sent).max() / 65534 * 1.01)


@pytest.fixture
def store(store_url: str):
    opened = open_store(store_url)
    yield opened
    opened.close()


def test_upsert_reports_created_and_updated_and_keeps_the_key(store: Store) -> None:
    first = store.upsert_items([new_item("x"), new_item("y")])
    assert first.created == ["x", "y"]
    assert first.updated == []
    again = store.upsert_items([new_item("y", artist="a2", seed=5), new_item("z")])
    assert again.created == ["z"]
    assert again.updated == ["y"]
    assert again.keys[0] == first.keys[1]
    assert len(set(first.keys + again.keys)) == 3
    y = store.get_items(["y"])["y"]
    assert y.artist_id == "a2"
    assert y.metadata == {"title": "work y"}
    assert_stored(y.features, new_item("y", seed=5).features)
    np.testing.assert_array_equal(y.embedding, new_item("y", seed=5).embedding)


def test_get_items_ignores_unknown_and_deleted(store: Store) -> None:
    store.upsert_items([new_item("x"), new_item("y")])
    assert store.delete_item("y") is not None
    assert set(store.get_items(["x", "y", "nope"])) == {"x"}
    assert set(store.get_items(["x", "y"], include_deleted=True)) == {"x", "y"}
    assert store.delete_item("y") is None
    assert store.delete_item("nope") is None


def test_catalogue_holds_exactly_what_is_for_sale(store: Store) -> None:
    store.upsert_items([new_item(i, artist=f"a{i}", seed=n) for n, i in enumerate("abcd")])
    store.delete_item("b")
    store.record_purchase("u", ["c"], 10.0)
    catalogue = store.catalogue()
    assert sorted(catalogue.item_ids) == ["a", "d"]
    by_id = dict(zip(catalogue.item_ids, catalogue.embeddings, strict=True))
    np.testing.assert_array_equal(by_id["d"], new_item("d", seed=3).embedding)
    assert dict(zip(catalogue.item_ids, catalogue.artist_ids, strict=True)) == {
        "a": "aa",
        "d": "ad",
    }
    assert catalogue.keys.dtype == np.int64


def test_the_catalogue_reads_in_pages_by_key(store: Store) -> None:
    """What an index build reads a page at a time: each work for sale once, in key order."""
    keys = store.upsert_items([new_item(i, seed=n) for n, i in enumerate("abcdefg")]).keys
    store.delete_item("c")
    store.record_purchase("u", ["e"], 1.0)
    pages, after = [], 0
    while (page := store.catalogue(after, 2)).item_ids:
        pages.append(page.item_ids)
        after = int(page.keys[-1])
    assert pages == [["a", "b"], ["d", "f"], ["g"]]
    assert store.catalogue().item_ids == ["a", "b", "d", "f", "g"]
    assert store.catalogue(keys[-1]).item_ids == []


def test_purchase_sells_one_of_a_kind_and_runs_down_editions(store: Store) -> None:
    store.upsert_items([new_item("unique"), new_item("print", stock=2, edition=2)])
    sale = store.record_purchase("u1", ["unique", "print"], 100.0)
    assert sale.sold_out == ["unique"]
    with pytest.raises(NotForSaleError) as error:
        store.record_purchase("u2", ["unique"], 101.0)
    assert error.value.item_ids == ["unique"]
    assert store.record_purchase("u2", ["print"], 102.0).sold_out == ["print"]
    assert store.get_items(["print"])["print"].stock == 0
    assert store.get_items(["print"])["print"].sold == 2
    assert store.catalogue().item_ids == []


def test_a_refused_purchase_writes_nothing(store: Store) -> None:
    store.upsert_items([new_item("a"), new_item("b", stock=1, edition=3)])
    with pytest.raises(UnknownItemsError) as error:
        store.record_purchase("u", ["a", "ghost"], 1.0)
    assert error.value.item_ids == ["ghost"]
    with pytest.raises(NotForSaleError):
        store.record_purchase("u", ["a", "b", "b"], 1.0)  # two units, one left
    assert store.history("u") == []
    assert store.get_items(["a"])["a"].stock == 1
    assert store.get_items(["b"])["b"].stock == 1
    store.delete_item("a")
    with pytest.raises(UnknownItemsError):
        store.record_purchase("u", ["a"], 1.0)


def test_history_is_in_time_order_and_limited_to_the_latest(store: Store) -> None:
    store.upsert_items([new_item(i, stock=5, edition=5) for i in "abc"])
    store.record_purchase("u", ["b"], 20.0)
    store.record_purchase("u", ["a", "c"], 10.0)
    store.record_purchase("other", ["a"], 5.0)
    assert [p.item_id for p in store.history("u")] == ["a", "c", "b"]
    assert [p.timestamp for p in store.history("u")] == [10.0, 10.0, 20.0]
    assert [p.item_id for p in store.history("u", limit=2)] == ["c", "b"]
    assert store.history("nobody") == []


def test_purchases_come_with_the_embeddings_of_the_latest(store: Store) -> None:
    """The read a recommendation starts from: the whole history in order, the embeddings of
    its last `recent` works only, a deleted work's included, another model's left out."""
    store.upsert_items([new_item(i, stock=5, edition=5, seed=n) for n, i in enumerate("abcd")])
    d = store.get_items(["d"])["d"]
    assert store.set_embeddings([(d.key, d.updated_at, np.ones(E, np.float32))], "m2") == 1
    store.record_purchase("u", ["b"], 20.0)
    store.record_purchase("u", ["a", "c"], 10.0)
    store.record_purchase("u", ["d"], 30.0)
    store.record_purchase("other", ["a"], 5.0)
    store.delete_item("c")

    ids, embeddings = store.purchases_and_embeddings("u", 3, "m1")
    assert ids == ["a", "c", "b", "d"]
    assert set(embeddings) == {"c", "b"}  # "a" is older than the last three, "d" is m2's
    for n, item_id in enumerate("abc"):
        if item_id in embeddings:
            np.testing.assert_array_equal(embeddings[item_id], new_item(item_id, seed=n).embedding)

    assert store.purchases_and_embeddings("u", 100, "m1")[1].keys() == {"a", "b", "c"}
    np.testing.assert_array_equal(store.purchases_and_embeddings("u", 1, "m2")[1]["d"], np.ones(E))
    assert store.purchases_and_embeddings("u", 0, "m1") == (["a", "c", "b", "d"], {})
    assert store.purchases_and_embeddings("nobody", 3, "m1") == ([], {})


def test_an_upsert_names_the_stretch_of_the_change_log_its_entries_fill(store: Store) -> None:
    start = store.change_cursor()
    first = store.upsert_items([new_item("a"), new_item("b")])
    assert first.logged == (start, store.change_cursor())
    assert store.changes_since(start) == (first.logged[1], first.keys)
    store.record_purchase("u", ["a"], 1.0)  # sold out: logged between the two upserts
    middle = store.change_cursor()
    assert middle != first.logged[1]
    second = store.upsert_items([new_item("c"), new_item("b", seed=3)])
    assert second.logged == (middle, store.change_cursor())
    assert store.changes_since(middle) == (second.logged[1], second.keys)


def test_best_sellers_and_newest_only_offer_items_for_sale(store: Store) -> None:
    store.upsert_items([new_item("old", stock=3, edition=3)])
    store.upsert_items([new_item("mid", stock=3, edition=3)])
    store.upsert_items([new_item("gone")])
    store.upsert_items([new_item("new")])
    store.record_purchase("u", ["mid", "mid", "old", "gone"], 1.0)
    assert store.best_sellers(10) == ["mid", "old"]
    assert store.newest(10) == ["new", "mid", "old"]
    assert store.newest(1) == ["new"]


def test_change_log_names_every_key_whose_index_entry_changed(store: Store) -> None:
    start = store.change_cursor()
    keys = store.upsert_items([new_item("a"), new_item("b", stock=2, edition=2)]).keys
    store.record_purchase("u", ["b"], 1.0)  # stock left: not an index change
    store.record_purchase("u", ["a"], 1.0)  # sold out: an index change
    store.delete_item("b")
    cursor, changed = store.changes_since(start)
    assert changed == [keys[0], keys[1], keys[0], keys[1]]
    assert store.changes_since(cursor) == (cursor, [])
    assert cursor == store.change_cursor()
    first_two = store.changes_since(start, limit=2)
    assert first_two[1] == keys
    assert store.changes_since(first_two[0])[1] == [keys[0], keys[1]]
    records = store.index_records([keys[1], keys[0], keys[1]])  # each once, in any order
    row = {key: n for n, key in enumerate(records.keys.tolist())}
    assert sorted(row) == sorted(keys)
    assert [records.item_ids[row[k]] for k in keys] == ["a", "b"]
    assert not records.for_sale.any()  # a sold, b deleted
    np.testing.assert_array_equal(records.embeddings[row[keys[0]]], new_item("a").embedding)
    assert records.updated_at[row[keys[0]]] == store.get_items(["a"])["a"].updated_at
    assert records.model_versions == ["m1", "m1"]
    assert records.artist_ids == ["a1", "a1"]
    assert store.index_records([]).keys.size == 0


def test_replacing_a_work_without_a_stock_keeps_what_is_left(store: Store) -> None:
    store.upsert_items([new_item("print", stock=3, edition=3), new_item("unique")])
    store.record_purchase("u", ["print", "print", "unique"], 1.0)
    fixed = [
        NewItem(i.id, i.artist_id, i.features, i.embedding, i.edition_size, None, {"t": "fixed"})
        for i in (new_item("print", edition=3), new_item("unique"))
    ]
    store.upsert_items(fixed)
    items = store.get_items(["print", "unique"])
    assert (items["print"].stock, items["print"].sold) == (1, 2)
    assert (items["unique"].stock, items["unique"].sold) == (0, 1)  # still sold
    smaller = NewItem("print", "a1", fixed[0].features, fixed[0].embedding, 2, None)
    store.upsert_items([smaller])  # an edition cut to 2 with 2 sold has none left
    assert store.get_items(["print"])["print"].stock == 0
    store.upsert_items([NewItem("print", "a1", fixed[0].features, fixed[0].embedding, 5, 2)])
    assert store.get_items(["print"])["print"].stock == 2  # an explicit stock is a restock
    new = NewItem("fresh", "a1", fixed[0].features, fixed[0].embedding, 4, None)
    store.upsert_items([new])
    assert store.get_items(["fresh"])["fresh"].stock == 4


def test_reposting_a_deleted_item_brings_it_back(store: Store) -> None:
    store.upsert_items([new_item("a")])
    store.delete_item("a")
    assert store.upsert_items([new_item("a")]).updated == ["a"]
    assert store.catalogue().item_ids == ["a"]


def test_counts(store: Store) -> None:
    store.upsert_items([new_item(i) for i in "abcd"])
    store.delete_item("d")
    store.record_purchase("u1", ["a"], 1.0)
    store.record_purchase("u2", ["b", "c"], 1.0)
    counts = store.counts()
    assert (counts.items, counts.for_sale, counts.users, counts.purchases) == (3, 0, 2, 3)


def test_data_survives_reopening(store_url: str) -> None:
    first = open_store(store_url)
    first.upsert_items([new_item("a"), new_item("b")])
    first.record_purchase("u", ["a"], 7.0)
    first.close()
    second = open_store(store_url)
    try:
        assert second.catalogue().item_ids == ["b"]
        assert second.history("u")[0].item_id == "a"
    finally:
        second.close()


def test_concurrent_buyers_of_one_unique_item_sell_it_once(store_url: str) -> None:
    """Two connections (as two processes would have) race for the same artwork."""
    setup = open_store(store_url)
    setup.upsert_items([new_item(f"w{i}") for i in range(20)])
    stores = [open_store(store_url) for _ in range(4)]
    wins: list[tuple[int, str]] = []

    def buyer(n: int) -> None:
        for i in range(20):
            try:
                stores[n].record_purchase(f"u{n}", [f"w{i}"], float(i))
                wins.append((n, f"w{i}"))
            except NotForSaleError:
                pass

    threads = [threading.Thread(target=buyer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(item for _, item in wins) == sorted(f"w{i}" for i in range(20))
    assert setup.counts().purchases == 20
    for opened in [setup, *stores]:
        opened.close()


def test_embeddings_are_kept_per_model_and_features_for_any(store: Store) -> None:
    store.upsert_items([new_item("a"), new_item("b", seed=1)])
    store.delete_item("b")
    assert set(store.embeddings(["a", "b", "ghost"], "m1")) == {"a", "b"}
    assert store.embeddings(["a"], "m2") == {}
    features = store.features(["a", "b", "ghost"])
    assert_stored(features["b"], new_item("b", seed=1).features)
    assert set(features) == {"a", "b"}
    assert store.feature_dim() == F
    store.delete_item("a")  # every work deleted: their features still fix the dimension
    assert store.feature_dim() == F


def test_set_embeddings_skips_items_changed_since_they_were_read(store: Store) -> None:
    keys = store.upsert_items([new_item("a"), new_item("b", seed=1)]).keys
    catalogue = store.catalogue()
    updated = dict(zip(catalogue.keys.tolist(), catalogue.updated_at, strict=True))
    assert catalogue.model_versions == ["m1", "m1"]
    store.upsert_items([new_item("b", seed=2)])  # b changes after the read
    new_vectors = np.ones((2, E), np.float32)
    rows = [(k, updated[k], v) for k, v in zip(keys, new_vectors, strict=True)]
    assert store.set_embeddings(rows, "m2") == 1
    assert set(store.embeddings(["a", "b"], "m2")) == {"a"}
    np.testing.assert_array_equal(store.embeddings(["a"], "m2")["a"], new_vectors[0])
    records = store.index_records(keys)
    version = dict(zip(records.item_ids, records.model_versions, strict=True))
    assert (version["a"], version["b"]) == ("m2", "m1")


def test_settings_and_an_empty_store(store: Store) -> None:
    assert store.feature_dim() is None
    assert store.get_setting("model_dir") is None
    store.set_setting("model_dir", "/models/a")
    store.set_setting("model_dir", "/models/b")
    assert store.get_setting("model_dir") == "/models/b"
    assert store.catalogue().item_ids == []


def test_unsupported_url_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported store URL"):
        open_store("postgres://x")


@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])
def test_sqlite_takes_either_durability_setting(tmp_path, synchronous: str) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(url, synchronous)
    store.upsert_items([new_item("x")])
    store.close()
    reopened = open_store(url)
    assert reopened.get_items(["x"])["x"].stock == 1
    reopened.close()
    with pytest.raises(ValueError, match="NORMAL or FULL"):
        open_store(url, "OFF")


def test_sqlite_checkpoints_on_a_thread_of_its_own_shortly_after_a_write(tmp_path) -> None:
    """What a write added reaches the database file itself (read here with the log ignored)
    without a commit checkpointing inline (these 1,200 small rows are far from SQLite's own
    1,000 pages), and closing the store stops the thread."""
    path = tmp_path / "store.db"
    running = set(threading.enumerate())  # other tests' stores may still have theirs
    store = open_store(f"sqlite:///{path}")
    (checkpoints,) = [
        t for t in threading.enumerate() if t.name == "sqlite-checkpoints" and t not in running
    ]
    store.upsert_items([new_item(f"w{n}", seed=n) for n in range(600)])  # and 600 changes

    def in_the_file() -> int:
        """The works the file holds: a connection that takes the file as unchanging reads
        it alone, not the log beside it."""
        without_log = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            return without_log.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        except sqlite3.DatabaseError:  # no tables there yet, or pages being checkpointed
            return 0
        finally:
            without_log.close()

    deadline = time.monotonic() + 10
    while (found := in_the_file()) < 600 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert found == 600
    assert checkpoints.is_alive()
    store.close()
    assert not checkpoints.is_alive()


def test_index_records_keep_each_embedding_as_its_model_stored_it() -> None:
    """Rows of one model's embeddings are converted in one go; rows of models of different
    sizes (a store mid-roll-out) each keep their own length."""
    one, other = np.arange(3, dtype=np.float32), np.arange(5, dtype=np.float32)
    rows = [
        (1, "a", "x", one.tobytes(), 1, 2.0, "m1"),
        (2, "b", "y", other.tobytes(), 0, 3.0, "m2"),
    ]
    mixed = IndexRecords.of_rows(rows)
    assert [e.tolist() for e in mixed.embeddings] == [one.tolist(), other.tolist()]
    assert mixed.keys.tolist() == [1, 2]
    assert mixed.for_sale.tolist() == [True, False]
    assert mixed.updated_at.tolist() == [2.0, 3.0]
    same = IndexRecords.of_rows([rows[0], (7, "c", "z", (one + 1).tobytes(), 1, 4.0, "m1")])
    assert [e.tolist() for e in same.embeddings] == [one.tolist(), (one + 1).tolist()]
