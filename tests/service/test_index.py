"""The FAISS index against brute force, for both kinds, with filters, replacement and removal."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from service.index import REBUILD_TOMBSTONE_SHARE, ItemIndex
from service.stores.base import Catalogue

DIM = 8


def catalogue(n: int, seed: int = 0) -> Catalogue:
    rng = np.random.default_rng(seed)
    return Catalogue(
        keys=np.arange(100, 100 + n, dtype=np.int64),
        item_ids=[f"i{j}" for j in range(n)],
        artist_ids=[f"a{j % 7}" for j in range(n)],
        embeddings=list(rng.normal(size=(n, DIM)).astype(np.float32)),
        model_versions=["m"] * n,
        updated_at=[0.0] * n,
    )


def filled(kind: str, data: Catalogue) -> ItemIndex:
    index = ItemIndex(DIM, kind)
    index.upsert(
        data.keys, data.item_ids, data.artist_ids, np.stack(data.embeddings), data.updated_at
    )
    return index


def brute_force(data: Catalogue, query: np.ndarray, k: int, keep=lambda j: True) -> list[str]:
    """Top k by the best inner product with the query ([DIM] or [Q, DIM])."""
    scores = (np.stack(data.embeddings) @ np.atleast_2d(query).T).max(axis=1)
    order = [j for j in np.argsort(-scores, kind="stable") if keep(j)]
    return [data.item_ids[j] for j in order[:k]]


@pytest.fixture(params=["flat", "hnsw"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def test_search_matches_brute_force(kind: str) -> None:
    data = catalogue(500)
    index = filled(kind, data)
    query = np.random.default_rng(1).normal(size=DIM).astype(np.float32)
    found = [hit.item_id for hit in index.search(query, 10)]
    expected = brute_force(data, query, 10)
    if kind == "flat":
        assert found == expected
    else:  # approximate, but on 500 points with efSearch 128 it should find nearly all
        assert len(set(found) & set(expected)) >= 9
    scores = [hit.score for hit in index.search(query, 10)]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("n_queries", [1, 4])
def test_several_queries_rank_by_the_best_inner_product(kind: str, n_queries: int) -> None:
    """A user's K interests: one search, each item scored by its best query, exactly."""
    data = catalogue(500, seed=2)
    index = filled(kind, data)
    queries = np.random.default_rng(3).normal(size=(n_queries, DIM)).astype(np.float32)
    expected = brute_force(data, queries, 20)
    hits = index.search(queries, 20)
    found = [hit.item_id for hit in hits]
    if kind == "flat":
        assert found == expected
        best = (np.stack(data.embeddings) @ queries.T).max(axis=1)
        by_id = dict(zip(data.item_ids, best, strict=True))
        np.testing.assert_allclose([h.score for h in hits], [by_id[i] for i in found], rtol=1e-5)
    else:
        assert len(set(found) & set(expected)) >= 18
    excluded = set(expected[:5])
    found = [h.item_id for h in index.search(queries, 10, excluded, None, {"a1"})]
    keep = lambda j: data.item_ids[j] not in excluded and data.artist_ids[j] != "a1"  # noqa: E731
    expected_filtered = brute_force(data, queries, 10, keep)
    if kind == "flat":
        assert found == expected_filtered
    else:
        assert len(set(found) & set(expected_filtered)) >= 9
    only = [h.item_id for h in index.search(queries, 10, set(), {"a2", "a3"})]
    in_artists = lambda j: data.artist_ids[j] in {"a2", "a3"}  # noqa: E731
    assert only == brute_force(data, queries, 10, in_artists)
    # A customer's purchases alone left out (no artist filter, no tombstone): the flat index
    # masks them before its partial sort, HNSW over-fetches and drops them.
    purchases = lambda j: data.item_ids[j] not in excluded  # noqa: E731
    found = [h.item_id for h in index.search(queries, 10, excluded)]
    if kind == "flat":
        assert found == brute_force(data, queries, 10, purchases)
    else:
        assert len(set(found) & set(brute_force(data, queries, 10, purchases))) >= 9
    assert not excluded & set(found)
    everything_else = index.search(queries, 500, excluded)
    assert len(everything_else) == 500 - len(excluded)


def test_filters(kind: str) -> None:
    data = catalogue(300)
    index = filled(kind, data)
    query = data.embeddings[0]
    artists = np.array(data.artist_ids)
    only = index.search(query, 300, include_artists={"a1", "a2"})
    assert {hit.artist_id for hit in only} == {"a1", "a2"}
    assert len(only) == int(np.isin(artists, ["a1", "a2"]).sum())
    without = index.search(query, 20, exclude_items={"i0", "i5"}, exclude_artists={"a3"})
    assert len(without) == 20
    assert not {"i0", "i5"} & {hit.item_id for hit in without}
    assert "a3" not in {hit.artist_id for hit in without}
    if kind == "flat":
        keep = lambda j: data.item_ids[j] not in ("i0", "i5") and artists[j] != "a3"  # noqa: E731
        assert [hit.item_id for hit in without] == brute_force(data, query, 20, keep)
    assert index.search(query, 5, include_artists={"nobody"}) == []


def test_replace_and_remove(kind: str) -> None:
    data = catalogue(50)
    index = filled(kind, data)
    query = data.embeddings[3]
    index.upsert([103], ["i3"], ["new-artist"], -query[None], [1.0])  # i3 now points away
    assert len(index) == 50
    assert "i3" not in [hit.item_id for hit in index.search(query, 10)]
    assert index.entry("i3").artist_id == "new-artist"
    assert index.versions([103, 7, -1]).tolist()[0] == 1.0
    assert np.isnan(index.versions([103, 7, -1])[1:]).all()  # not indexed
    index.remove([103, 104, 999])
    assert len(index) == 48
    assert not {"i3", "i4"} & {hit.item_id for hit in index.search(query, 48)}
    assert len(index.search(query, 100)) == 48
    assert index.entry("i3") is None


def compacted(index: ItemIndex) -> None:
    """Wait for the HNSW compaction under way, if any, to hand over."""
    building = index._compaction
    if building is not None:
        building.join(timeout=60)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_the_index_compacts_when_tombstones_pile_up(kind: str) -> None:
    data = catalogue(100)
    index = filled(kind, data)
    doomed = int(100 * REBUILD_TOMBSTONE_SHARE) + 1
    index.remove(list(data.keys[:doomed]))
    compacted(index)
    assert index._faiss.ntotal == 100 - doomed  # rebuilt without the removed vectors
    found = {hit.item_id for hit in index.search(data.embeddings[0], 100)}
    assert found == set(data.item_ids[doomed:])


def test_hnsw_compacts_on_a_thread_while_searches_and_changes_go_on(monkeypatch) -> None:
    """While the new graph is built (held here until the test lets it go), searches answer
    and works are added, replaced and removed; the graph handed over has them all."""
    building, release = threading.Event(), threading.Event()
    build = ItemIndex._index_of

    def held(self: ItemIndex, vectors: np.ndarray):
        if threading.current_thread().name == "index-compaction":
            building.set()
            assert release.wait(timeout=60)
        return build(self, vectors)

    monkeypatch.setattr(ItemIndex, "_index_of", held)
    data = catalogue(100)
    index = filled("hnsw", data)
    doomed = int(100 * REBUILD_TOMBSTONE_SHARE) + 1
    index.remove(list(data.keys[:doomed]))  # i0 to i20 gone: the build starts
    assert building.wait(timeout=10)
    assert index._compaction is not None
    rng = np.random.default_rng(9)
    new = rng.normal(size=(5, DIM)).astype(np.float32)
    index.upsert([300, 301, 302, 303, 304], [f"n{j}" for j in range(5)], ["b"] * 5, new, [2.0] * 5)
    index.upsert([140], ["i40"], ["moved"], -data.embeddings[40][None], [3.0])  # replaced
    index.remove([150, 302])  # one of the graph being built, one added since
    expected = (set(data.item_ids[doomed:]) - {"i50"}) | {"n0", "n1", "n3", "n4"}
    query = data.embeddings[60]
    assert {hit.item_id for hit in index.search(query, 200)} == expected  # not waiting
    release.set()
    compacted(index)
    assert index._compaction is None
    # The tombstones at the start and the works added since dead before the hand-over are gone;
    # i40's first slot (removed while building) and i50's stay as tombstones until next time.
    assert index._faiss.ntotal == 100 - doomed + 5 + 1 - 1
    assert len(index) == len(expected)
    assert {hit.item_id for hit in index.search(query, 200)} == expected
    assert index.entry("i40").artist_id == "moved"
    assert index.versions([140]).tolist() == [3.0]
    assert index.entry("n2") is None
    assert index.entry("i50") is None
    assert index.entry("n4").key == 304
    # Ranked as brute force over what is for sale now.
    vectors = {h: v for h, v in zip(data.item_ids, data.embeddings, strict=True)}
    vectors |= {f"n{j}": new[j] for j in range(5)} | {"i40": -data.embeddings[40]}
    ids = sorted(expected)
    scores = np.stack([vectors[i] for i in ids]) @ query
    best = [ids[j] for j in np.argsort(-scores, kind="stable")[:10]]
    assert [hit.item_id for hit in index.search(query, 10)] == best


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="flat"):
        ItemIndex(DIM, "ivf")


def test_median_norm_follows_the_catalogue(kind: str) -> None:
    """Lengths 1, 2, 3 → 2; a fourth of 10 → 2.5; removals count; and once the catalogue is
    large, a handful of new works (under 1 %) leaves the figure as last computed."""
    index = ItemIndex(DIM, kind)
    assert index.median_norm() is None

    def add(keys: list[int], lengths: list[float]) -> None:
        vectors = np.zeros((len(keys), DIM), np.float32)
        vectors[:, 0] = lengths
        index.upsert(keys, [f"i{k}" for k in keys], ["a"] * len(keys), vectors, [0.0] * len(keys))

    add([1, 2, 3], [1.0, 2.0, 3.0])
    assert index.median_norm() == pytest.approx(2.0)
    add([4], [10.0])
    assert index.median_norm() == pytest.approx(2.5)
    index.remove([4, 3])
    assert index.median_norm() == pytest.approx(1.5)
    add(list(range(10, 410)), [4.0] * 400)
    assert index.median_norm() == pytest.approx(4.0)
    add([500, 501, 502], [0.5, 0.5, 0.5])  # 3 of 405: under 1 %, not recomputed
    assert index.median_norm() == pytest.approx(4.0)
    index.remove(list(range(10, 410)))
    assert index.median_norm() == pytest.approx(0.5)  # the lengths left: 1, 2, three of 0.5


def test_after_removals_the_exact_index_still_ranks_exactly() -> None:
    """Removed works leave tombstones behind (below the compaction share): searches skip them
    and rank the rest exactly, with exclusions and artists left out too."""
    data = catalogue(200, seed=4)
    index = filled("flat", data)
    removed = {f"i{j}" for j in range(0, 200, 9)}  # 23 of 200, under a fifth
    index.remove([100 + int(i[1:]) for i in removed])
    queries = np.random.default_rng(5).normal(size=(4, DIM)).astype(np.float32)
    keep = lambda j: data.item_ids[j] not in removed  # noqa: E731
    assert [h.item_id for h in index.search(queries, 15)] == brute_force(data, queries, 15, keep)
    excluded = {"i1", "i2"}
    found = index.search(queries, 15, excluded, None, {"a4"})
    keep_filtered = lambda j: (  # noqa: E731
        keep(j) and data.item_ids[j] not in excluded and data.artist_ids[j] != "a4"
    )
    assert [h.item_id for h in found] == brute_force(data, queries, 15, keep_filtered)
    assert len(index.search(queries, 500)) == 200 - len(removed)


def test_hnsw_search_threads_change_no_answer() -> None:
    """The queries are shared out among the threads, each searched as on one."""
    data = catalogue(400)
    one, two = (ItemIndex(DIM, "hnsw", hnsw_search_threads=threads) for threads in (1, 2))
    for index in (one, two):
        index.upsert(
            data.keys, data.item_ids, data.artist_ids, np.stack(data.embeddings), data.updated_at
        )
    queries = np.random.default_rng(2).normal(size=(4, DIM)).astype(np.float32)
    assert one.search(queries, 20, {"i1"}) == two.search(queries, 20, {"i1"})


def test_hnsw_with_tombstones_leaves_out_the_removed_and_the_excluded() -> None:
    """Tombstones put the search on the bitmap of live slots, less the excluded ones."""
    data = catalogue(300)
    index = filled("hnsw", data)
    index.remove(list(data.keys[:10]))  # below the share that compacts
    assert index._faiss.ntotal == 300
    query = data.embeddings[20]
    gone = set(data.item_ids[:10]) | {"i20", "i21"}
    found = [hit.item_id for hit in index.search(query, 20, exclude_items={"i20", "i21"})]
    assert len(found) == 20
    assert not gone & set(found)
    expected = brute_force(data, query, 20, lambda j: data.item_ids[j] not in gone)
    assert len(set(found) & set(expected)) >= 18
    everything = index.search(query, 1000, exclude_items={"i20", "i21"})
    assert len(everything) == 288


def test_openmp_threads_sleep_when_idle() -> None:
    """OMP_WAIT_POLICY is set before FAISS (and its OpenMP) is loaded, as OpenMP reads it once."""
    script = (
        "import os, sys; import service.index; "
        "print(os.environ['OMP_WAIT_POLICY'], 'faiss' in sys.modules)"
    )
    environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    said = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True, check=True
    )
    assert said.stdout.split() == ["PASSIVE", "True"]


def packed(index: ItemIndex) -> None:
    """Wait for the packing under way, if any, to hand over (a minute at most)."""
    deadline = time.monotonic() + 60
    while (packing := index._packing) is not None:
        assert time.monotonic() < deadline, "the packing never handed over"
        packing.join(timeout=1)


def test_the_flat_index_scores_packed_and_unpacked_slots_alike() -> None:
    """Past PACK_SLOTS works a search has the flat index pack its vectors on a thread;
    searches rank as brute force before it hands over, after, with works added since (scored
    unpacked), with tombstones and filters, and after a compaction renumbers the slots
    (packed anew)."""
    data = catalogue(3000, seed=6)
    index = filled("flat", data)
    assert not index.packing  # nothing searched yet: an index that is only written to
    queries = np.random.default_rng(7).normal(size=(4, DIM)).astype(np.float32)
    expected = brute_force(data, queries, 20)
    assert [h.item_id for h in index.search(queries, 20)] == expected  # maybe not packed yet
    packed(index)
    assert index._packed is not None
    assert index._packed.count == 3000
    hits = index.search(queries, 20)
    assert [h.item_id for h in hits] == expected
    best = dict(zip(data.item_ids, (np.stack(data.embeddings) @ queries.T).max(1), strict=True))
    np.testing.assert_allclose([h.score for h in hits], [best[h.item_id] for h in hits], rtol=1e-5)
    # Works added since: scored by numpy beside the packed slots, one of them on top.
    more = catalogue(100, seed=8)
    more.embeddings[5] = queries[2] * 10
    index.upsert(
        more.keys + 5000,
        [f"m{j}" for j in range(100)],
        more.artist_ids,
        np.stack(more.embeddings),
        more.updated_at,
    )
    assert index._packed.count == 3000
    assert index._faiss.ntotal == 3100
    both = Catalogue(
        keys=np.concatenate([data.keys, more.keys + 5000]),
        item_ids=data.item_ids + [f"m{j}" for j in range(100)],
        artist_ids=data.artist_ids + more.artist_ids,
        embeddings=data.embeddings + more.embeddings,
        model_versions=data.model_versions + more.model_versions,
        updated_at=data.updated_at + more.updated_at,
    )
    found = [h.item_id for h in index.search(queries, 20)]
    assert found == brute_force(both, queries, 20)
    assert found[0] == "m5"
    # Tombstones, excluded works and artists, and an artist filter, across both parts.
    removed = {f"i{j}" for j in range(0, 3000, 11)} | {"m5"}
    index.remove([both.keys[both.item_ids.index(i)] for i in removed])
    excluded = set(found[1:4])
    keep = lambda j: (  # noqa: E731
        both.item_ids[j] not in removed | excluded and both.artist_ids[j] != "a2"
    )
    found = index.search(queries, 20, excluded, None, {"a2"})
    assert [h.item_id for h in found] == brute_force(both, queries, 20, keep)
    only = index.search(queries, 20, set(), {"a5"})
    keep_a5 = lambda j: both.item_ids[j] not in removed and both.artist_ids[j] == "a5"  # noqa: E731
    assert [h.item_id for h in only] == brute_force(both, queries, 20, keep_a5)
    # A compaction renumbers every slot: the packed session goes, and a new one comes.
    gone = {f"i{j}" for j in range(3000) if j % 3 == 1}
    index.remove([both.keys[both.item_ids.index(i)] for i in gone])
    assert index._faiss.ntotal == 3100 - len(removed | gone)  # compacted
    assert index._packed is None
    keep = lambda j: both.item_ids[j] not in removed | gone  # noqa: E731
    assert [h.item_id for h in index.search(queries, 20)] == brute_force(both, queries, 20, keep)
    packed(index)
    assert index._packed is not None
    assert index._packed.count == index._faiss.ntotal
    assert [h.item_id for h in index.search(queries, 20)] == brute_force(both, queries, 20, keep)


def test_a_session_packed_before_a_compaction_is_not_used_after_it(monkeypatch) -> None:
    """Packing is held until the slots have been renumbered: what it built holds other
    vectors than the slots now do, so it is dropped and the slots are packed again."""
    building, release = threading.Event(), threading.Event()
    first = []
    pack = ItemIndex._pack

    def held(self: ItemIndex, vectors: np.ndarray, renumbered: int) -> None:
        if not first:
            first.append(len(vectors))
            building.set()
            assert release.wait(timeout=60)
        pack(self, vectors, renumbered)

    monkeypatch.setattr(ItemIndex, "_pack", held)
    data = catalogue(3000, seed=10)
    index = filled("flat", data)
    queries = np.random.default_rng(11).normal(size=(4, DIM)).astype(np.float32)
    index.search(queries, 20)
    assert building.wait(timeout=10)
    doomed = data.keys[: int(3000 * REBUILD_TOMBSTONE_SHARE) + 1]
    index.remove(list(doomed))  # compacted under the lock: every slot renumbered
    assert index._faiss.ntotal == 3000 - len(doomed)
    release.set()
    packed(index)
    assert first == [3000]
    assert index._packed is not None
    assert index._packed.count == 3000 - len(doomed)
    keep = lambda j: j >= len(doomed)  # noqa: E731
    assert [h.item_id for h in index.search(queries, 20)] == brute_force(data, queries, 20, keep)


@pytest.mark.parametrize("failure", ["build", "thread"])
def test_when_packing_fails_the_flat_index_scores_with_numpy(
    monkeypatch, caplog, failure: str
) -> None:
    """The session cannot be built (ONNX Runtime out of memory, say), or no thread can be
    started to build it: searches answer all the same, and packing is not tried again."""
    if failure == "build":

        def refuse(*args: object) -> None:
            raise RuntimeError("no memory for it")

        monkeypatch.setattr("service.index.PackedVectors", refuse)
    else:
        start = threading.Thread.start

        def refuse_packing(thread: threading.Thread) -> None:
            if thread.name == "index-packing":
                raise RuntimeError("can't start new thread")
            start(thread)

        monkeypatch.setattr(threading.Thread, "start", refuse_packing)
    data = catalogue(2000, seed=12)
    index = filled("flat", data)
    queries = np.random.default_rng(13).normal(size=(4, DIM)).astype(np.float32)
    assert [h.item_id for h in index.search(queries, 20)] == brute_force(data, queries, 20)
    packed(index)
    assert index._packed is None
    assert not index.packing
    assert "could not pack 2000 vectors" in caplog.text
    assert [h.item_id for h in index.search(queries, 20)] == brute_force(data, queries, 20)
    assert not index.packing  # not tried again with every search
    assert caplog.text.count("could not pack") == 1
