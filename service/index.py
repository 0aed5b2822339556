"""The FAISS index of artworks for sale: derived from the store, rebuilt from it at start-up.

FAISS ids are slots, not store keys, so that both index kinds handle replacement the same
way: exact search (IndexFlatIP) removes a replaced slot at once, HNSW (which cannot remove)
hides it behind a tombstone until tombstones make up a fifth of the graph and it is rebuilt.
Filters (excluded items, included or excluded artists, tombstones) run inside the FAISS
search through an ID selector, so k results come back even when most of the catalogue is
filtered out.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import cast

import faiss
import numpy as np

REBUILD_TOMBSTONE_SHARE = 0.2


@dataclass(frozen=True)
class Entry:
    key: int
    item_id: str
    artist_id: str
    version: float  # the store's updated_at, so a change seen twice is applied once


@dataclass(frozen=True)
class Hit:
    key: int
    item_id: str
    artist_id: str
    score: float


class ItemIndex:
    def __init__(
        self,
        dim: int,
        kind: str = "flat",
        hnsw_m: int = 32,
        hnsw_ef_search: int = 128,
        threads: int = 1,
    ) -> None:
        """`threads`: OpenMP threads per search (and per HNSW insertion)."""
        if kind not in ("flat", "hnsw"):
            raise ValueError(f"index kind must be 'flat' or 'hnsw', not {kind!r}")
        self.dim, self.kind, self.threads = dim, kind, threads
        self.hnsw_m, self.hnsw_ef_search = hnsw_m, hnsw_ef_search
        self._lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        inner: faiss.Index
        if self.kind == "flat":
            inner = faiss.IndexFlatIP(self.dim)
        else:
            graph = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efSearch = self.hnsw_ef_search
            inner = graph
        self._faiss = faiss.IndexIDMap2(inner)
        self._entries: dict[int, Entry] = {}  # slot -> entry
        self._slot_of: dict[int, int] = {}  # key -> live slot
        self._slot_by_item: dict[str, int] = {}
        self._slots_by_artist: dict[str, set[int]] = {}
        self._tombstones: set[int] = set()
        self._vectors: dict[int, np.ndarray] = {}  # slot -> vector, HNSW only (for rebuilds)
        self._norms: dict[int, float] = {}  # slot -> |embedding|, live slots only
        self._median: float | None = None  # of _norms, as last computed
        self._norms_changed = 0  # works added or removed since
        self._next_slot = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._slot_of)

    def version(self, key: int) -> float | None:
        with self._lock:
            slot = self._slot_of.get(int(key))
            return None if slot is None else self._entries[slot].version

    def median_norm(self) -> float | None:
        """The median length of the indexed embeddings (None while none is indexed): what
        uploads are measured against. The median, not a high quantile or the maximum, so that
        a few outsized works already in the catalogue cannot widen what is accepted, and
        accepted works cannot walk it up a step at a time."""
        with self._lock:
            if not self._norms:
                return None
            # Recomputed once 1 % of the catalogue has changed since (a sort of a million
            # lengths costs tens of milliseconds, too much for every upload; moving the median
            # takes half the catalogue, far more than 1 %).
            if self._median is None or self._norms_changed > len(self._norms) // 100:
                norms = np.fromiter(self._norms.values(), np.float64, len(self._norms))
                self._median = float(np.median(norms))
                self._norms_changed = 0
            return self._median

    def entry(self, item_id: str) -> Entry | None:
        """The indexed (for sale) item with this id, if any."""
        with self._lock:
            slot = self._slot_by_item.get(item_id)
            return None if slot is None else self._entries[slot]

    def upsert(
        self,
        keys: np.ndarray | list[int],
        item_ids: list[str],
        artist_ids: list[str],
        embeddings: np.ndarray,
        versions: list[float],
    ) -> None:
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1, self.dim)
        faiss.omp_set_num_threads(self.threads)  # see _search
        with self._lock:
            self.remove(keys)
            slots = np.arange(self._next_slot, self._next_slot + len(item_ids), dtype=np.int64)
            self._next_slot += len(item_ids)
            self._faiss.add_with_ids(embeddings, slots)
            norms = np.linalg.norm(embeddings, axis=1).tolist()
            for slot, key, item_id, artist, version, vector, norm in zip(
                slots.tolist(), keys, item_ids, artist_ids, versions, embeddings, norms, strict=True
            ):
                self._entries[slot] = Entry(int(key), item_id, artist, version)
                self._slot_of[int(key)] = slot
                self._slot_by_item[item_id] = slot
                self._slots_by_artist.setdefault(artist, set()).add(slot)
                self._norms[slot] = norm
                self._norms_changed += 1
                if self.kind == "hnsw":
                    self._vectors[slot] = vector

    def remove(self, keys: np.ndarray | list[int]) -> None:
        with self._lock:
            slots = [self._slot_of.pop(int(k)) for k in keys if int(k) in self._slot_of]
            if not slots:
                return
            for slot in slots:
                entry = self._entries.pop(slot)
                del self._norms[slot]
                self._norms_changed += 1
                if self._slot_by_item.get(entry.item_id) == slot:
                    del self._slot_by_item[entry.item_id]
                artist_slots = self._slots_by_artist[entry.artist_id]
                artist_slots.discard(slot)
                if not artist_slots:
                    del self._slots_by_artist[entry.artist_id]
            if self.kind == "flat":
                self._faiss.remove_ids(faiss.IDSelectorBatch(np.array(slots, dtype=np.int64)))
                return
            self._tombstones.update(slots)
            for slot in slots:
                self._vectors.pop(slot, None)
            if len(self._tombstones) > REBUILD_TOMBSTONE_SHARE * self._faiss.ntotal:
                self._compact()

    def _compact(self) -> None:
        """HNSW only: rebuild the graph from the live slots, dropping the tombstones."""
        live = sorted(self._entries)
        entries = [self._entries[s] for s in live]
        vectors = np.stack([self._vectors[s] for s in live]) if live else np.zeros((0, self.dim))
        self._reset()
        if live:
            self.upsert(
                [e.key for e in entries],
                [e.item_id for e in entries],
                [e.artist_id for e in entries],
                vectors,
                [e.version for e in entries],
            )

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude_items: set[str] | frozenset[str] = frozenset(),
        include_artists: set[str] | None = None,
        exclude_artists: set[str] | frozenset[str] = frozenset(),
    ) -> list[Hit]:
        """Top k among the items for sale that pass the filters, an item's score being its
        largest inner product with the queries ([dim] or [Q, dim]: a user's interests).

        One FAISS search of all Q queries; the merge is exact, since an item in the top k by
        its best score is in the top k of the query that gives it that score."""
        query = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        with self._lock:
            excluded = {self._slot_by_item[i] for i in exclude_items if i in self._slot_by_item}
            for artist in exclude_artists:
                excluded |= self._slots_by_artist.get(artist, set())
            if include_artists is not None:
                allowed = set()
                for artist in include_artists:
                    allowed |= self._slots_by_artist.get(artist, set())
                allowed -= excluded
                k = min(k, len(allowed))
                if k <= 0:
                    return []
                scores, slots = self._search_among(query, k, np.fromiter(allowed, np.int64))
            else:
                # Few exclusions (a history, some artists): over-fetching by their number and
                # dropping them afterwards keeps FAISS on its fast path, which an ID selector
                # would leave.
                k = min(k, len(self._slot_of) - len(excluded))
                if k <= 0:
                    return []
                if self._tombstones:  # HNSW: a selector, as tombstones may be many
                    skip = np.fromiter(excluded | self._tombstones, np.int64)
                    selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(skip))
                    scores, slots = self._search(query, k, selector)
                else:
                    scores, slots = self._search(query, min(k + len(excluded), self._faiss.ntotal))
            best: dict[int, float] = {}
            for score, slot in zip(scores.ravel().tolist(), slots.ravel().tolist(), strict=True):
                if slot >= 0 and slot not in excluded and score > best.get(slot, -np.inf):
                    best[slot] = score
            ranked = sorted(best.items(), key=lambda pair: -pair[1])
            hits = [
                Hit(entry.key, entry.item_id, entry.artist_id, score)
                for slot, score in ranked
                if (entry := self._entries.get(slot)) is not None
            ]
            return hits[:k]

    def _search_among(
        self, query: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top k within a subset (an artist filter): a selector for the flat index; for
        HNSW, whose filtered graph walk can miss members of a small subset, brute force."""
        if self.kind == "flat":
            return self._search(query, k, faiss.IDSelectorBatch(allowed))
        scores = (np.stack([self._vectors[int(s)] for s in allowed]) @ query.T).max(axis=1)
        top = np.argsort(-scores, kind="stable")[:k]
        return scores[top][None], allowed[top][None]

    def _search(
        self, query: np.ndarray, k: int, selector: faiss.IDSelector | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        # OpenMP's thread count is a setting of the calling thread, and searches run on
        # whichever thread of the server's pool takes the request: set in the lifespan only,
        # it never reached them, and each search woke a pool of one thread per core whose
        # threads then spun between requests (three times the CPU of the search itself).
        faiss.omp_set_num_threads(self.threads)
        if self.kind == "flat" and selector is None:
            return self._exact(query, k)
        # faiss's stubs lack SearchParametersHNSW and the keyword arguments its Python wrapper
        # takes; both are documented and used as the library's own tests use them.
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(  # type: ignore[attr-defined]
                sel=selector, efSearch=max(self.hnsw_ef_search, k)
            )
        else:
            params = None if selector is None else faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
        return self._faiss.search(query, k, params=params)

    def _exact(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The flat index's unfiltered search, [1, k] best scores over the Q queries and their
        slots: one matrix product over the vectors FAISS stores (read in place), then one
        partial sort. IndexFlatIP.search scans the catalogue once per query with a heap per
        query; for the few queries of one customer that took 1.4 to 1.7 times the CPU of this
        (4 x 65-d queries over 13,297 works, one thread: 0.64 ms against 0.46 ms)."""
        flat = cast(faiss.IndexFlat, faiss.downcast_index(self._faiss.index))
        count = flat.ntotal
        vectors = faiss.rev_swig_ptr(flat.get_xb(), count * self.dim).reshape(count, self.dim)
        # [N, Q] in the order BLAS computes fastest, then each work's best query, a column at
        # a time (numpy's max along the short axis took three times the product itself).
        scores = vectors @ query.T
        best = scores[:, 0].copy()
        for column in range(1, scores.shape[1]):
            np.maximum(best, scores[:, column], out=best)
        top = np.argpartition(-best, k - 1)[:k] if k < count else np.arange(count)
        slots = faiss.rev_swig_ptr(self._faiss.id_map.data(), count)
        return best[top][None], slots[top][None]
