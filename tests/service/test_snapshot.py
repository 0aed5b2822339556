"""The index snapshot: what it loads searches as the index it saved and as a rebuild would;
later changes (by another process) are replayed; a snapshot that cannot stand for the store
and model (another store, model, kind, a cursor ahead, a trimmed stream, a damaged file) is
rebuilt from the store; the app starts from it. Real stores, the real 2048-d model."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from curatornet.model_loader import LoadedModel, load_model
from service.app import create_app
from service.config import Settings
from service.index import ItemIndex
from service.indexing import CatalogueIndex, IndexBuild
from service.snapshot import STORE_ID, IndexSnapshots, store_id
from service.stores import open_store
from service.stores.base import NewItem, Store
from service.stores.redis import CHANGES
from tests.service.helpers import FEATURES_MODEL, LiveService

ARTISTS = 7


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_model(FEATURES_MODEL)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()


@pytest.fixture
def snapshots(store: Store, store_url: str, tmp_path: Path) -> IndexSnapshots:
    """Where the service keeps this store's snapshot by default for SQLite, and in a
    directory for Redis (which has no default place)."""
    directory = None if store_url.startswith("sqlite") else tmp_path / "snapshots"
    found = IndexSnapshots.for_store(
        Settings(store_url=store_url, index_snapshot_dir=directory), store
    )
    assert found is not None
    return found


def artworks(model: LoadedModel, rows: range, seed: int = 0) -> list[NewItem]:
    features = np.abs(np.random.default_rng([seed, rows.start]).normal(size=(len(rows), 2048)))
    features = features.astype(np.float32)
    embeddings = model.embed_items(features)
    return [
        NewItem(
            id=f"work-{row}",
            artist_id=f"artist-{row % ARTISTS}",
            features=features[n],
            embedding=embeddings[n],
            edition_size=None,
            stock=None,
            model_version=model.version,
        )
        for n, row in enumerate(rows)
    ]


def catalogue(
    store: Store, snapshots: IndexSnapshots | None, kind: str = "hnsw", m: int = 16
) -> CatalogueIndex:
    return CatalogueIndex(store, lambda dim: ItemIndex(dim, kind, m, 64), snapshots)


def started(
    store: Store, snapshots: IndexSnapshots | None, model: LoadedModel, kind: str = "hnsw"
) -> tuple[CatalogueIndex, IndexBuild]:
    index = catalogue(store, snapshots, kind)
    return index, index.switch_model(model)


def assert_rebuilt(
    store: Store, snapshots: IndexSnapshots, model: LoadedModel, indexed: int
) -> None:
    """A start that did not use the snapshot: its index built from the store's works."""
    _, build = started(store, snapshots, model)
    assert build.snapshot is None
    assert build.indexed == indexed


def answers(index: ItemIndex, model: LoadedModel) -> list[list[tuple[str, str, float]]]:
    """Several customers' top 20, unfiltered and filtered every way the index filters."""
    rng = np.random.default_rng(1)
    ids = [f"work-{row}" for row in range(300)]
    found = []
    for _ in range(6):
        history = [e.item_id for i in rng.choice(ids, 4) if (e := index.entry(str(i)))]
        vectors = model.embed_items(np.abs(rng.normal(size=(4, 2048))).astype(np.float32))
        queries = model.embed_users(vectors[None], np.ones((1, 4), np.float32))[0]
        for filters in (
            {},
            {"exclude_items": set(history)},
            {"include_artists": {"artist-1", "artist-2"}},
            {"exclude_artists": {"artist-3"}, "exclude_items": set(history)},
        ):
            hits = index.search(queries, 20, **filters)
            found.append([(h.item_id, h.artist_id, round(h.score, 5)) for h in hits])
    return found


def described(index: ItemIndex) -> tuple:
    """What the index says of every work beside search."""
    entries = [index.entry(f"work-{row}") for row in range(320)]
    versions = index.versions([e.key for e in entries if e]).tolist()
    return (len(index), index.median_norm(), entries, versions)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_a_loaded_snapshot_searches_as_the_index_that_saved_it(
    store: Store, snapshots: IndexSnapshots, model: LoadedModel, kind: str
) -> None:
    store.upsert_items(artworks(model, range(300)))
    store.delete_item("work-5")  # a tombstone in the saved index: live bits and slots kept
    built, build = started(store, snapshots, model, kind)
    assert build.snapshot is None
    assert snapshots.path.exists()
    loaded, load = started(store, snapshots, model, kind)
    assert load.snapshot == str(snapshots.path)
    assert load.replayed == 0
    assert load.indexed == 299
    saved, restored = built.serving.index, loaded.serving.index
    assert answers(restored, model) == answers(saved, model)
    assert described(restored) == described(saved)
    rebuilt = catalogue(store, None, kind)
    rebuilt.switch_model(model, from_snapshot=False)
    if kind == "flat":  # exact: the same as a rebuild from the store
        assert answers(restored, model) == answers(rebuilt.serving.index, model)
    assert described(restored) == described(rebuilt.serving.index)


def test_changes_by_another_process_after_the_snapshot_are_replayed(
    store: Store, store_url: str, snapshots: IndexSnapshots, model: LoadedModel
) -> None:
    store.upsert_items(artworks(model, range(300)))
    started(store, snapshots, model)
    other = LiveService(store_url, CURATORNET_INDEX_SNAPSHOTS="false")
    try:
        new = [
            {"id": f"new-{n}", "artist_id": "newcomer", "features": [0.5 + n] * 2048}
            for n in range(3)
        ]
        replaced = {"id": "work-7", "artist_id": "artist-new", "features": [0.25] * 2048}
        assert other.client.post("/items", json={"items": [*new, replaced]}).status_code == 200
        assert other.client.delete("/items/work-8").status_code == 200
        bought = {"user_id": "buyer", "item_ids": ["work-9"]}
        assert other.client.post("/purchases", json=bought).status_code == 201
    finally:
        other.stop()
    loaded, load = started(store, snapshots, model)
    assert load.snapshot is not None
    assert load.replayed == 6
    index = loaded.serving.index
    assert len(index) == 300 + 3 - 2
    assert index.entry("work-8") is None
    assert index.entry("work-9") is None
    assert index.entry("new-2").artist_id == "newcomer"
    assert index.entry("work-7").artist_id == "artist-new"
    rebuilt = catalogue(store, None)
    rebuilt.switch_model(model, from_snapshot=False)
    assert described(index) == described(rebuilt.serving.index)
    queries = index.search(model.embed_items(np.full((1, 2048), 2.5, np.float32)), 5)
    assert "new-2" in [hit.item_id for hit in queries]


def test_a_process_reads_its_own_batch_back_once_and_other_processes_writes_still(
    store: Store, model: LoadedModel
) -> None:
    writer, _ = started(store, None, model, "flat")
    other, _ = started(store, None, model, "flat")
    writer.upsert_items(artworks(model, range(20)))
    assert len(writer.serving.index) == 20
    assert writer.follow_changes() == 0  # its own entries are passed over, not read again
    other.upsert_items(artworks(model, range(20, 30)))
    # Logged after the other process's entries, which this one has not read: nothing is
    # passed over, and the next follow reads both batches.
    writer.upsert_items(artworks(model, range(30, 40)))
    assert writer.follow_changes() == 20
    assert writer.follow_changes() == 0
    assert other.follow_changes() == 40  # the writer's two batches, and its own read back
    for index in (writer, other):
        assert len(index.serving.index) == 40
        assert index.catch_up(index.serving)


def test_a_snapshot_of_another_store_is_not_trusted(
    store: Store, store_url: str, snapshots: IndexSnapshots, model: LoadedModel, caplog
) -> None:
    """Another store's snapshot put where this one's goes, or this store's own after it was
    wiped and refilled (a new id): rebuilt, with the reason logged."""
    store.upsert_items(artworks(model, range(300)))
    started(store, snapshots, model)
    if store_url.startswith("sqlite"):
        database = Path(store_url.removeprefix("sqlite:///"))
        store.close()
        database.unlink()
        refilled = open_store(store_url)
    else:
        redis.Redis.from_url(store_url).flushdb()
        refilled = open_store(store_url)
    try:
        refilled.upsert_items(artworks(model, range(40), seed=9))
        moved = IndexSnapshots.for_store(
            Settings(store_url=store_url, index_snapshot_dir=snapshots.path.parent), refilled
        )
        assert moved is not None
        assert moved.store_id != snapshots.store_id
        if moved.path != snapshots.path:  # named after the store: another store's, copied in
            shutil.copyfile(snapshots.path, moved.path)
        with caplog.at_level(logging.WARNING, logger="service"):
            assert_rebuilt(refilled, moved, model, 40)
        assert "of another store" in caplog.text
    finally:
        refilled.close()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("model", "of model"),
        ("kind", "a hnsw (65-d, M=16) index, not a flat (65-d) one"),
        ("degree", "M=16) index, not a hnsw (65-d, M=8) one"),
        ("truncated", "cannot be read"),
        ("flipped", "corrupt"),
        ("garbage", "cannot be read"),
        ("missing", "there is none"),
    ],
)
def test_a_snapshot_that_does_not_fit_is_rebuilt(
    store: Store,
    snapshots: IndexSnapshots,
    model: LoadedModel,
    change: str,
    reason: str,
    caplog,
) -> None:
    store.upsert_items(artworks(model, range(300)))
    started(store, snapshots, model)
    data = snapshots.path.read_bytes()
    served, kind, degree = model, "hnsw", 16
    if change == "model":  # the same towers under another version: only the version differs
        manifest = {**model.manifest, "item_tower": {**model.manifest["item_tower"]}}
        manifest["item_tower"]["sha256"] = "0" * 64
        served = dataclasses.replace(model, manifest=manifest)
    elif change == "kind":
        kind = "flat"
    elif change == "degree":
        degree = 8
    elif change == "truncated":
        snapshots.path.write_bytes(data[: len(data) // 2])
    elif change == "flipped":
        middle = len(data) // 2
        snapshots.path.write_bytes(data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1 :])
    elif change == "garbage":
        snapshots.path.write_bytes(b"not a snapshot at all")
    else:
        snapshots.path.unlink()
    with caplog.at_level(logging.INFO, logger="service"):
        build = catalogue(store, snapshots, kind, degree).switch_model(served)
    assert build.snapshot is None
    assert build.indexed == 300
    [why] = [r for r in caplog.records if "not used" in r.getMessage()]
    assert reason in why.getMessage()
    # Everyday reasons (a roll-out, a first start) are information; a damaged file a warning.
    usual = change in ("model", "kind", "degree", "missing")
    assert why.levelno == (logging.INFO if usual else logging.WARNING)
    # The rebuild was saved over it, for this model, kind and degree.
    assert catalogue(store, snapshots, kind, degree).switch_model(served).snapshot is not None


def test_a_snapshot_ahead_of_the_store_is_rebuilt(
    store: Store, store_url: str, snapshots: IndexSnapshots, model: LoadedModel, tmp_path: Path
) -> None:
    """The store went back (restored from an older copy): the snapshot holds changes it does
    not, so the snapshot's cursor is ahead of the store's."""
    store.upsert_items(artworks(model, range(300)))
    database = Path(store_url.removeprefix("sqlite:///"))
    older = tmp_path / "older.db"
    if store_url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(database)) as copying:
            copying.execute("VACUUM INTO ?", (str(older),))
    store.upsert_items(artworks(model, range(300, 320)))
    started(store, snapshots, model)
    if store_url.startswith("sqlite"):
        store.close()
        for suffix in ("-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(older, database)
    else:
        redis.Redis.from_url(store_url).delete(CHANGES)  # a log begun anew
    restored = open_store(store_url)
    try:
        assert_rebuilt(restored, snapshots, model, 300 if store_url.startswith("sqlite") else 320)
    finally:
        restored.close()


def test_a_trimmed_change_stream_means_a_rebuild(
    redis_server: str, model: LoadedModel, tmp_path: Path, caplog
) -> None:
    url = f"{redis_server}/40"
    redis.Redis.from_url(url).flushdb()
    store = open_store(url)
    try:
        snapshots = IndexSnapshots.for_store(
            Settings(store_url=url, index_snapshot_dir=tmp_path), store
        )
        store.upsert_items(artworks(model, range(300)))
        started(store, snapshots, model)
        store.upsert_items(artworks(model, range(300, 310)))
        redis.Redis.from_url(url).xtrim(CHANGES, maxlen=2, approximate=False)
        with caplog.at_level(logging.WARNING, logger="service"):
            assert_rebuilt(store, snapshots, model, 310)
        assert "trimmed" in caplog.text
    finally:
        store.close()


def test_one_writer_at_a_time_and_never_an_older_snapshot_over_a_newer(
    store: Store, snapshots: IndexSnapshots, model: LoadedModel
) -> None:
    store.upsert_items(artworks(model, range(300)))
    index, _ = started(store, snapshots, model)
    serving = index.serving
    written = snapshots.path.stat().st_mtime_ns
    newer = store.change_cursor()
    with snapshots.path.with_name(snapshots.path.name + ".lock").open("ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is writing one
        assert not snapshots.save(serving.index, model.version, newer + "0")
    assert not snapshots.save(serving.index, model.version, newer)  # as recent: skipped
    assert snapshots.path.stat().st_mtime_ns == written
    assert not list(snapshots.path.parent.glob("*.tmp"))


def test_a_snapshot_that_cannot_be_written_is_logged_and_serving_goes_on(
    store: Store, store_url: str, model: LoadedModel, tmp_path: Path, caplog
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    snapshots = IndexSnapshots.for_store(
        Settings(store_url=store_url, index_snapshot_dir=blocked), store
    )
    store.upsert_items(artworks(model, range(30)))
    with caplog.at_level(logging.WARNING, logger="service"):
        _, build = started(store, snapshots, model)
    assert build.indexed == 30
    assert "cannot write the index snapshot" in caplog.text


def test_where_snapshots_live(store: Store, store_url: str, tmp_path: Path) -> None:
    settings = Settings(store_url=store_url)
    found = IndexSnapshots.for_store(settings, store)
    if store_url.startswith("sqlite"):
        assert found is not None
        assert found.path == Path(store_url[10:] + ".index")
    else:
        assert found is None  # no place for one unless a directory is set
    assert (
        IndexSnapshots.for_store(Settings(store_url=store_url, index_snapshots=False), store)
        is None
    )
    in_memory = open_store("sqlite:///:memory:")
    assert IndexSnapshots.for_store(Settings(store_url="sqlite:///:memory:"), in_memory) is None
    identity = store_id(store)
    assert identity == store.get_setting(STORE_ID) == store_id(store)
    chosen = IndexSnapshots.for_store(
        Settings(store_url=store_url, index_snapshot_dir=tmp_path), store
    )
    assert chosen is not None
    assert chosen.path == tmp_path / f"curatornet-{identity}.index"


def test_the_app_starts_from_the_snapshot_its_last_shutdown_saved(
    store_url: str, tmp_path: Path, caplog
) -> None:
    settings = Settings(
        model_dir=FEATURES_MODEL,
        store_url=store_url,
        index_kind="hnsw",
        index_snapshot_dir=None if store_url.startswith("sqlite") else tmp_path,
    )
    items = [
        {"id": f"work-{n}", "artist_id": f"artist-{n % 5}", "features": [n / 50] * 2048}
        for n in range(60)
    ]
    with TestClient(create_app(settings)) as client:
        assert client.post("/items", json={"items": items}).status_code == 200
        bought = {"user_id": "buyer", "item_ids": ["work-3", "work-11"]}
        assert client.post("/purchases", json=bought).status_code == 201
        before = client.post("/recommend", json={"user_id": "buyer", "k": 20}).json()
    with (
        caplog.at_level(logging.INFO, logger="service"),
        TestClient(create_app(settings)) as client,
    ):
        assert client.get("/readyz").json()["index_size"] == 58  # two sold
        after = client.post("/recommend", json={"user_id": "buyer", "k": 20}).json()
    assert "loaded from" in caplog.text
    assert "0 changes replayed" in caplog.text
    assert after == before
