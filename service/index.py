"""The FAISS index of artworks for sale: derived from the store, rebuilt from it or loaded from
a snapshot of it (`write` / `read`, framed by service.snapshot).

FAISS ids are slots, FAISS's own sequential ids, not store keys: a replaced or removed work's
slot becomes a tombstone (HNSW cannot remove, and removing from a flat index would renumber
every later slot), and once tombstones make up a fifth of the slots the index is compacted.
What the index knows of each slot sits in numpy arrays indexed by slot (key, version, artist,
embedding length, live bit), so a million works cost a few dozen bytes each beside FAISS's own
vectors and graph; the vectors themselves live in FAISS, which reconstructs them for a
compaction or an artist-filtered search (the flat index keeps a second, packed copy: below).
Filters (excluded items, included or excluded artists, tombstones) run inside the FAISS search
through a bitmap of the slots allowed, so k results come back even when most of the catalogue
is filtered out.

The flat index scores every slot with one matrix product per search. Its slots' vectors are
also frozen into an ONNX Runtime session (service.scan), whose product costs half numpy's; the
slots added since the session was built are scored by numpy, and once they are many a search
has a new session built on a thread of its own.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import NamedTuple, Protocol, cast

import faiss
import numpy as np

from service.scan import PackedVectors

log = logging.getLogger(__name__)

REBUILD_TOMBSTONE_SHARE = 0.2
# The flat index packs its vectors anew (service.scan) once the slots scored without the
# packed session, at twice the CPU a slot, are this many and this share of the packed ones.
PACK_SLOTS = 1024
PACK_SHARE = 1 / 8
# FAISS reads and writes an index through Python callbacks in blocks of this size.
IO_BLOCK_BYTES = 1 << 22


@dataclass(frozen=True)
class Entry:
    key: int
    item_id: str
    artist_id: str
    version: float  # the store's updated_at, so a change seen twice is applied once


class Hit(NamedTuple):
    """A search's answer, k of them a request: a NamedTuple, built in a third of a frozen
    dataclass's time (0.4 against 1.5 µs)."""

    key: int
    item_id: str
    artist_id: str
    score: float


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


class SnapshotMismatch(ValueError):
    """What a snapshot holds does not fit this index (another kind, size or layout)."""


class ItemIndex:
    """The works for sale, searchable by inner product; thread-safe."""

    def __init__(
        self,
        dim: int,
        kind: str = "flat",
        hnsw_m: int = 32,
        hnsw_ef_search: int = 96,
        threads: int = 1,
        hnsw_search_threads: int = 2,
    ) -> None:
        """`threads`: OpenMP threads per HNSW insertion; `hnsw_search_threads`: per HNSW
        search (the settings' `inference_threads` and `hnsw_search_threads`)."""
        if kind not in ("flat", "hnsw"):
            raise ValueError(f"index kind must be 'flat' or 'hnsw', not {kind!r}")
        self.dim, self.kind, self.threads = dim, kind, threads
        self.hnsw_m, self.hnsw_ef_search = hnsw_m, hnsw_ef_search
        self.hnsw_search_threads = hnsw_search_threads
        self._lock = threading.RLock()
        self._faiss = self._new_faiss()
        self._slots = 0  # slots used, live or tombstones: FAISS's ntotal
        self._live_count = 0
        # Per slot, in arrays grown geometrically (only the first _slots entries mean anything).
        self._keys = np.zeros(0, np.int64)
        self._versions = np.zeros(0, np.float64)
        self._artists = np.zeros(0, np.int32)  # codes into _artist_names
        self._norms = np.zeros(0, np.float32)
        self._live = np.zeros(0, np.uint8)  # a bit per slot (little-endian bit order)
        self._item_ids: list[str] = []
        # The one dict: a live work's slot by id. Store keys are counters (SQLite's
        # AUTOINCREMENT, Redis's INCR), dense from 1 and never reused, so a key's slot is
        # found in an array indexed by key (-1: not indexed), 4 bytes per key ever issued.
        self._slot_by_item: dict[str, int] = {}
        self._slot_of_key = np.zeros(0, np.int32)
        self._artist_names: list[str] = []
        self._artist_codes: dict[str, int] = {}
        self._median: float | None = None  # of the live slots' norms, as last computed
        self._norms_changed = 0  # works added or removed since
        self._compaction: threading.Thread | None = None  # an HNSW graph being built
        # The flat index's first slots' vectors in an ONNX Runtime session (`_pack`), the
        # session being built, how many times slots were renumbered (a session built before
        # the last renumbering holds other vectors than its slots now do), and whether
        # packing failed (then no more is tried).
        self._packed: PackedVectors | None = None
        self._packing: threading.Thread | None = None
        self._renumbered = 0
        self._unpackable = False

    def _new_faiss(self) -> faiss.Index:
        if self.kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        graph = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efSearch = self.hnsw_ef_search
        return graph

    def __len__(self) -> int:
        with self._lock:
            return self._live_count

    @property
    def compacting(self) -> bool:
        """Whether a new HNSW graph is being built on the side (`_compact_in_background`)."""
        return self._compaction is not None

    def versions(self, keys: np.ndarray | list[int]) -> np.ndarray:
        """float64, the indexed version of each key, NaN for one not indexed (not for sale, or
        never seen): NaN equals no version a store gives."""
        keys = np.asarray(keys, np.int64).reshape(-1)
        with self._lock:
            known = (keys >= 0) & (keys < len(self._slot_of_key))
            slots = np.full(len(keys), -1, np.int64)
            slots[known] = self._slot_of_key[keys[known]]
            found = np.full(len(keys), np.nan)
            found[slots >= 0] = self._versions[slots[slots >= 0]]
            return found

    def median_norm(self) -> float | None:
        """The median length of the indexed embeddings (None while none is indexed): what
        uploads are measured against. The median, not a high quantile or the maximum, so that
        a few outsized works already in the catalogue cannot widen what is accepted, and
        accepted works cannot walk it up a step at a time."""
        with self._lock:
            if not self._live_count:
                return None
            # Recomputed once 1 % of the catalogue has changed since (a median of a million
            # lengths costs about ten milliseconds, too much for every upload; moving the
            # median takes half the catalogue, far more than 1 %).
            if self._median is None or self._norms_changed > self._live_count // 100:
                self._median = float(np.median(self._norms[: self._slots][self._live_mask()]))
                self._norms_changed = 0
            return self._median

    def _live_mask(self) -> np.ndarray:
        """A bool per slot: whether it holds a work for sale (not a tombstone)."""
        bits = np.unpackbits(self._live, count=self._slots, bitorder="little")
        return bits.view(bool)

    def entry(self, item_id: str) -> Entry | None:
        """The indexed (for sale) item with this id, if any."""
        with self._lock:
            slot = self._slot_by_item.get(item_id)
            if slot is None:
                return None
            artist = self._artist_names[self._artists[slot]]
            return Entry(int(self._keys[slot]), item_id, artist, float(self._versions[slot]))

    def upsert(
        self,
        keys: np.ndarray | list[int],
        item_ids: list[str],
        artist_ids: list[str],
        embeddings: np.ndarray,
        versions: list[float],
    ) -> None:
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1, self.dim)
        keys = np.asarray(keys, np.int64).reshape(-1)
        if len(keys) and keys.min() < 0:
            raise ValueError("store keys are never negative")
        faiss.omp_set_num_threads(self.threads)  # see _graph_search
        with self._lock:
            self.remove(keys)
            first, count = self._slots, len(item_ids)
            slots = np.arange(first, first + count)
            self._reserve(first + count, int(keys.max(initial=-1)) + 1)
            self._faiss.add(embeddings)
            self._slots += count
            self._keys[slots] = keys
            self._versions[slots] = versions
            self._artists[slots] = [self._artist_code(artist) for artist in artist_ids]
            self._norms[slots] = np.sqrt(np.einsum("ij,ij->i", embeddings, embeddings))
            self._set_live(slots, True)
            self._item_ids.extend(item_ids)
            self._slot_by_item.update(zip(item_ids, slots.tolist(), strict=True))
            self._slot_of_key[keys] = slots
            self._live_count += count
            self._norms_changed += count

    def _artist_code(self, artist_id: str) -> int:
        code = self._artist_codes.get(artist_id)
        if code is None:
            code = self._artist_codes[artist_id] = len(self._artist_names)
            self._artist_names.append(artist_id)
        return code

    def _reserve(self, slots: int, keys: int) -> None:
        """Room for `slots` slots and keys below `keys`, doubling what grows."""

        def grown(array: np.ndarray, size: int, fill: int = 0) -> np.ndarray:
            if size <= len(array):
                return array
            bigger = np.full(max(size, 2 * len(array)), fill, array.dtype)
            bigger[: len(array)] = array
            return bigger

        self._keys = grown(self._keys, slots)
        self._versions = grown(self._versions, slots)
        self._artists = grown(self._artists, slots)
        self._norms = grown(self._norms, slots)
        self._live = grown(self._live, (slots + 7) // 8)
        self._slot_of_key = grown(self._slot_of_key, keys, fill=-1)

    def _set_live(self, slots: np.ndarray, live: bool) -> None:
        _set_bits(self._live, slots, live)

    def remove(self, keys: np.ndarray | list[int]) -> None:
        keys = np.asarray(keys, np.int64).reshape(-1)
        with self._lock:
            known = keys[(keys >= 0) & (keys < len(self._slot_of_key))]
            slots = np.unique(self._slot_of_key[known])
            slots = slots[slots >= 0].astype(np.int64)
            if not len(slots):
                return
            self._slot_of_key[known] = -1
            self._set_live(slots, False)
            for slot in slots.tolist():
                item_id = self._item_ids[slot]
                if self._slot_by_item.get(item_id) == slot:
                    del self._slot_by_item[item_id]
            self._live_count -= len(slots)
            self._norms_changed += len(slots)
            if (
                self._slots - self._live_count > REBUILD_TOMBSTONE_SHARE * self._slots
                and self._compaction is None
            ):
                if self.kind == "flat":
                    self._compact()
                else:
                    self._compact_in_background()

    def _compact(self) -> None:
        """Drop the tombstones: the live slots, renumbered in order, in a new flat index (a
        copy of their vectors, about a second at a million works, under the lock)."""
        live = np.flatnonzero(self._live_mask())
        self._renumber(self._index_of(self._vectors(live)), live, np.ones(len(live), bool))

    def _compact_in_background(self) -> None:
        """Start building an HNSW graph of the live slots on a thread of its own. Building it
        under the lock, as the flat index is compacted, stopped every search and upload of
        the process for the whole build: about four minutes at a million works. The lock is
        held here only to copy the live vectors, and again to hand over (`_take_compacted`)."""
        live = np.flatnonzero(self._live_mask())
        self._compaction = threading.Thread(
            target=self._build_compacted,
            args=(live, self._vectors(live), self._slots),
            name="index-compaction",
            daemon=True,
        )
        self._compaction.start()

    def _build_compacted(self, live: np.ndarray, vectors: np.ndarray, slots_then: int) -> None:
        try:
            graph = self._index_of(vectors)  # FAISS lets go of the interpreter meanwhile
            with self._lock:
                self._take_compacted(graph, live, slots_then)
        finally:
            with self._lock:
                self._compaction = None

    def _take_compacted(self, graph: faiss.Index, live: np.ndarray, slots_then: int) -> None:
        """Serve from `graph`, built from the slots `live` when there were `slots_then`, once
        it has caught up with what changed during the build: works added since are added to
        it, works of `live` removed since become its tombstones."""
        live_now = self._live_mask()
        added = np.arange(slots_then, self._slots)
        added = added[live_now[added]]
        if len(added):
            faiss.omp_set_num_threads(self.threads)  # see _graph_search
            graph.add(self._vectors(added))
        slots = np.concatenate([live, added])
        self._renumber(graph, slots, np.concatenate([live_now[live], np.ones(len(added), bool)]))

    def _vectors(self, slots: np.ndarray) -> np.ndarray:
        """The vectors FAISS holds for these slots, [len(slots), dim]."""
        if not len(slots):
            return np.zeros((0, self.dim), np.float32)
        return self._faiss.reconstruct_batch(slots)

    def _index_of(self, vectors: np.ndarray) -> faiss.Index:
        """A new FAISS index of this kind holding `vectors` ([N, dim]) in slots 0 to N - 1."""
        index = self._new_faiss()
        if len(vectors):
            faiss.omp_set_num_threads(self.threads)  # see _graph_search
            index.add(vectors)
        return index

    def _renumber(self, index: faiss.Index, slots: np.ndarray, live: np.ndarray) -> None:
        """Serve from `index`, which holds the vectors of these `slots` in this order; `live`
        says which of them are still for sale."""
        self._faiss = index
        self._keys = self._keys[slots]
        self._versions = self._versions[slots]
        self._artists = self._artists[slots]
        self._norms = self._norms[slots]
        self._live = np.packbits(live, bitorder="little")
        self._item_ids = [self._item_ids[slot] for slot in slots.tolist()]
        positions = np.flatnonzero(live)
        self._slot_by_item = {self._item_ids[p]: p for p in positions.tolist()}
        self._slot_of_key.fill(-1)
        self._slot_of_key[self._keys[positions]] = positions
        self._slots = len(slots)
        self._packed, self._renumbered = None, self._renumbered + 1

    @property
    def packing(self) -> bool:
        """Whether the flat index's vectors are being packed on the side (`_pack_when_due`)."""
        return self._packing is not None

    def _pack_when_due(self) -> None:
        """Start packing the flat index's vectors on a thread of its own when enough slots are
        scored without the packed session (PACK_SLOTS, PACK_SHARE); the caller holds the lock.
        A search starts it, and a packing handed over checks again for what was added
        meanwhile: a process that only writes (`python -m service load`) never packs.

        The vectors are copied under the lock (about 19 ms at 300,000 works on this machine:
        every search and upload of the process waits that long, once per PACK_SHARE of growth).
        Building the session takes under a microsecond a slot (4 to 8 ms at 13,297 works) and
        lets go of the interpreter; until it is handed over, searches score as before. The
        thread is not a daemon: an interpreter that ended while ONNX Runtime was building
        aborted the process (SIGABRT) instead of exiting, so an exit waits for the build."""
        packed = 0 if self._packed is None else self._packed.count
        unpacked = self._slots - packed
        if (
            self.kind != "flat"
            or self._packing is not None
            or self._unpackable
            or unpacked < max(PACK_SLOTS, PACK_SHARE * packed)
        ):
            return
        try:
            # Copied under the lock: FAISS may move its storage when works are added.
            vectors = self._flat_vectors().copy()
            packing = threading.Thread(
                target=self._pack, args=(vectors, self._renumbered), name="index-packing"
            )
            packing.start()  # it waits for the lock to hand over, so it is set below first
        except Exception:  # no memory for the copy, no thread to build on
            self._stop_packing(self._slots)
            return
        self._packing = packing

    def _pack(self, vectors: np.ndarray, renumbered: int) -> None:
        try:
            packed = PackedVectors(vectors, self.threads)
        except Exception:  # onnxruntime raises its own untyped errors
            with self._lock:
                self._stop_packing(len(vectors))
            return
        with self._lock:
            self._packing = None
            if renumbered == self._renumbered:  # else its slots hold other vectors now
                self._packed = packed
            self._pack_when_due()  # for what was added meanwhile

    def _stop_packing(self, count: int) -> None:
        """Packing failed: no more is tried, and numpy scores the slots no session holds, at
        about twice the CPU (the caller holds the lock, in the failure's handler)."""
        log.exception("could not pack %d vectors for the exact search; numpy scores them", count)
        self._packing, self._unpackable = None, True

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

        The flat index scores every work against all Q queries at once. HNSW runs one FAISS
        search of the Q queries; the merge is exact, since an item in the top k by its best
        score is in the top k of the query that gives it that score."""
        query = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        with self._lock:
            excluded = np.fromiter(
                (s for i in exclude_items if (s := self._slot_by_item.get(i)) is not None),
                np.int64,
            )
            if include_artists is not None:
                allowed = self._allowed(excluded, exclude_artists, include_artists)
                k = min(k, len(allowed))
                if k <= 0:
                    return []
                scores, slots = self._search_among(query, k, allowed)
                return self._as_hits(slots, scores)
            elif self.kind == "flat":
                # Everything is scored; what may not be offered is masked before the top k.
                if exclude_artists or self._slots > self._live_count:
                    mask = self._allowed_mask(excluded, exclude_artists)
                    k = min(k, int(np.count_nonzero(mask)))
                else:
                    mask, k = None, min(k, self._live_count - len(excluded))
                if k <= 0:
                    return []
                scores, slots = self._exact(query, k, mask, excluded)
                return self._ranked(scores, slots)
            elif exclude_artists or self._slots > self._live_count:
                # Whole artists left out, perhaps many, or tombstones: a bitmap of the rest.
                if exclude_artists:
                    bitmap = np.packbits(
                        self._allowed_mask(excluded, exclude_artists), bitorder="little"
                    )
                    k = min(k, int(np.bitwise_count(bitmap).sum()))
                else:
                    # The live bits less the excluded slots' (all live, all distinct): 13 us
                    # at a million slots, where unpacking them to a bool each and packing the
                    # mask again took 1.5 ms, to every request once a single work was sold.
                    bitmap = self._live[: (self._slots + 7) // 8].copy()
                    _set_bits(bitmap, excluded, False)
                    k = min(k, self._live_count - len(excluded))
                if k <= 0:
                    return []
                selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
                scores, slots = self._graph_search(query, k, selector)
            else:
                # Only a few works left out (a history): over-fetching by their number and
                # dropping them afterwards keeps FAISS on its fastest path.
                k = min(k, self._live_count - len(excluded))
                if k <= 0:
                    return []
                scores, slots = self._graph_search(query, min(k + len(excluded), self._slots))
            return self._hits(scores.ravel(), slots.ravel(), excluded, k)

    def _allowed_mask(
        self, excluded: np.ndarray, exclude_artists: set[str] | frozenset[str]
    ) -> np.ndarray:
        """A bool per slot: live, not excluded, not by an excluded artist."""
        mask = self._live_mask().copy()
        mask[excluded] = False
        if exclude_artists:
            mask &= ~self._by_artists(exclude_artists)
        return mask

    def _allowed(
        self,
        excluded: np.ndarray,
        exclude_artists: set[str] | frozenset[str],
        include_artists: set[str],
    ) -> np.ndarray:
        """The slots the filters let through when only some artists are wanted."""
        return np.flatnonzero(
            self._allowed_mask(excluded, exclude_artists) & self._by_artists(include_artists)
        )

    def _by_artists(self, artist_ids: set[str] | frozenset[str]) -> np.ndarray:
        codes = [self._artist_codes[a] for a in artist_ids if a in self._artist_codes]
        return np.isin(self._artists[: self._slots], codes)

    def _hits(
        self, scores: np.ndarray, slots: np.ndarray, excluded: np.ndarray, k: int
    ) -> list[Hit]:
        """The best k distinct slots of the Q queries' answers, each with its best score."""
        keep = (slots >= 0) & ~np.isin(slots, excluded)
        scores, slots = scores[keep], slots[keep]
        order = np.argsort(-scores, kind="stable")
        scores, slots = scores[order], slots[order]
        _, first = np.unique(slots, return_index=True)
        best = np.sort(first)[:k]
        return self._as_hits(slots[best], scores[best])

    def _ranked(self, scores: np.ndarray, slots: np.ndarray) -> list[Hit]:
        """Distinct allowed slots and their scores as hits, best first."""
        order = np.argsort(-scores, kind="stable")
        return self._as_hits(slots[order], scores[order])

    def _as_hits(self, slots: np.ndarray, scores: np.ndarray) -> list[Hit]:
        keys, artists, names = self._keys, self._artists, self._artist_names
        return [
            Hit(int(keys[slot]), self._item_ids[slot], names[artists[slot]], score)
            for slot, score in zip(slots.tolist(), scores.tolist(), strict=True)
        ]

    def _search_among(
        self, query: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top k within a subset (an artist filter), by brute force over the subset's
        reconstructed vectors: HNSW's filtered graph walk can miss members of a small subset,
        and for the flat index this is the same scan restricted to the subset."""
        scores = (self._faiss.reconstruct_batch(allowed) @ query.T).max(axis=1)
        top = np.argsort(-scores, kind="stable")[:k]
        return scores[top], allowed[top]

    def _graph_search(
        self, query: np.ndarray, k: int, selector: faiss.IDSelector | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The HNSW index's search: [Q, k] scores and slots (-1 where fewer were found).

        FAISS shares the Q queries out among `hnsw_search_threads` OpenMP threads (one query
        runs on the calling thread alone). A search of a million works waits on memory more
        than it computes, and the request's thread would wait for it anyway: two threads took
        a customer's four queries from 2.2 to 1.2 ms at efSearch 96 for about the same CPU,
        while a second core was free (README: A million artworks)."""
        # OpenMP's thread count is a setting of the calling thread, and searches run on
        # whichever thread of the server's pool takes the request: set in the lifespan only,
        # it never reached them, and each search woke a pool of one thread per core. Between
        # searches those threads sleep (OMP_WAIT_POLICY, set in service/__init__.py).
        faiss.omp_set_num_threads(self.hnsw_search_threads)
        # faiss's stubs lack SearchParametersHNSW and the keyword arguments its Python wrapper
        # takes; both are documented and used as the library's own tests use them.
        params = faiss.SearchParametersHNSW(  # type: ignore[attr-defined]
            sel=selector, efSearch=max(self.hnsw_ef_search, k)
        )
        return self._faiss.search(query, k, params=params)

    def _exact(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None, excluded: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The flat index's search: the k best scores over the Q queries ([k], in no order)
        and their slots, among the `allowed` slots (a bool each; all when None) less the
        `excluded` ones, k being at most how many that leaves. One matrix product, ONNX
        Runtime's over the packed slots and numpy's over the vectors FAISS stores beyond them
        (read in place), then one partial sort. IndexFlatIP.search scans the catalogue once
        per query with a heap per query; for the few queries of one customer that took 1.4 to
        1.7 times the CPU of numpy's product (4 x 65-d queries over 13,297 works, one thread:
        0.64 ms against 0.46 ms), and more through a selector, where masking the scores of
        what may not be offered costs next to nothing."""
        self._pack_when_due()
        vectors = self._flat_vectors()
        count = len(vectors)
        best = np.empty(count, np.float32)
        packed = self._packed
        head = 0 if packed is None else packed.count
        if packed is not None:
            np.maximum.reduce(packed.scores(query), axis=0, out=best[:head])  # [Q, head]
        if head < count:
            # [N, Q] in the order BLAS computes fastest, then each work's best query, a column
            # at a time (numpy's max along the short axis took three times the product itself).
            scores, rest = vectors[head:] @ query.T, best[head:]
            np.copyto(rest, scores[:, 0])
            for column in range(1, scores.shape[1]):
                np.maximum(rest, scores[:, column], out=rest)
        if allowed is not None:
            best[~allowed] = -np.inf
        best[excluded] = -np.inf
        top = np.argpartition(best, count - k)[count - k :] if k < count else np.arange(count)
        return best[top], top  # FAISS's ids are the slots

    def _flat_vectors(self) -> np.ndarray:
        """[slots, dim]: the flat index's vectors where FAISS stores them (valid until the
        next addition)."""
        flat = cast(faiss.IndexFlat, self._faiss)
        count = flat.ntotal
        return faiss.rev_swig_ptr(flat.get_xb(), count * self.dim).reshape(count, self.dim)

    def write(self, stream: Writable) -> None:
        """Everything the index holds, to `stream`: the slot tables, then FAISS's own format."""
        with self._lock:
            n = self._slots
            for array in (
                self._keys[:n],
                self._versions[:n],
                self._artists[:n],
                self._norms[:n],
                self._live[: (n + 7) // 8],
                *_packed_strings(self._item_ids),
                *_packed_strings(self._artist_names),
            ):
                np.lib.format.write_array(stream, np.ascontiguousarray(array), allow_pickle=False)
            writer = faiss.PyCallbackIOWriter(stream.write, IO_BLOCK_BYTES)  # type: ignore[attr-defined]
            faiss.write_index(self._faiss, writer)

    @classmethod
    def read(cls, stream: Readable, like: ItemIndex) -> ItemIndex:
        """An index as `write` wrote it, of the shape `like` has and searched as it is
        (efSearch and threads are search settings, free to differ from the writer's);
        SnapshotMismatch when it is not of that shape."""
        dim, kind, hnsw_m = like.dim, like.kind, like.hnsw_m
        index = cls(dim, kind, hnsw_m, like.hnsw_ef_search, like.threads, like.hnsw_search_threads)

        def array(dtype: type[np.generic]) -> np.ndarray:
            read = np.lib.format.read_array(stream, allow_pickle=False)
            if read.dtype != dtype or read.ndim != 1:
                raise SnapshotMismatch(f"expected a list of {np.dtype(dtype)}, found {read.dtype}")
            return read

        keys, versions = array(np.int64), array(np.float64)
        artists, norms, live = array(np.int32), array(np.float32), array(np.uint8)
        item_ids = _unpacked_strings(array(np.uint8), array(np.int64))
        index._artist_names = _unpacked_strings(array(np.uint8), array(np.int64))
        # The stubs lack the callback readers and writers and HNSW.nb_neighbors.
        reader = faiss.PyCallbackIOReader(stream.read, IO_BLOCK_BYTES)  # type: ignore[attr-defined]
        stored = faiss.read_index(reader)
        n = len(keys)
        if isinstance(stored, faiss.IndexHNSWFlat) and kind == "hnsw":
            degree = stored.hnsw.nb_neighbors(1)  # type: ignore[attr-defined]
            stored.hnsw.efSearch = like.hnsw_ef_search
        elif isinstance(stored, faiss.IndexFlatIP) and kind == "flat":
            degree = hnsw_m
        else:
            degree = None
        if (
            {len(versions), len(artists), len(norms), len(item_ids), stored.ntotal} != {n}
            or len(live) != (n + 7) // 8
            or stored.d != dim
            or stored.metric_type != faiss.METRIC_INNER_PRODUCT
            or degree != hnsw_m
            or (n and (keys.min() < 0 or artists.max() >= len(index._artist_names)))
        ):
            raise SnapshotMismatch(f"the stored index is not a {kind} index of {dim}-d vectors")
        index._faiss, index._slots = stored, n
        index._keys, index._versions, index._artists = keys, versions, artists
        index._norms, index._live, index._item_ids = norms, live, item_ids
        index._artist_codes = {name: code for code, name in enumerate(index._artist_names)}
        live_slots = np.flatnonzero(index._live_mask())
        index._live_count = len(live_slots)
        index._slot_by_item = {item_ids[slot]: slot for slot in live_slots.tolist()}
        index._slot_of_key = np.full(int(keys.max(initial=-1)) + 1, -1, np.int32)
        index._slot_of_key[keys[live_slots]] = live_slots
        return index


def _set_bits(bits: np.ndarray, slots: np.ndarray, on: bool) -> None:
    """Set or clear the slots' bits in a bitmap of a bit per slot (little-endian bit order)."""
    masks = np.left_shift(1, slots & 7).astype(np.uint8)
    if on:
        np.bitwise_or.at(bits, slots >> 3, masks)
    else:
        np.bitwise_and.at(bits, slots >> 3, ~masks)


def _packed_strings(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as one UTF-8 array and their lengths in characters: no pickle, one decode."""
    text = "".join(strings).encode("utf-8")
    lengths = np.fromiter(map(len, strings), np.int64, len(strings))
    return np.frombuffer(text, np.uint8), lengths


def _unpacked_strings(text: np.ndarray, lengths: np.ndarray) -> list[str]:
    joined = text.tobytes().decode("utf-8")
    ends = np.cumsum(lengths)
    return [joined[a:b] for a, b in zip((ends - lengths).tolist(), ends.tolist(), strict=True)]
