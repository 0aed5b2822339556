"""What the routes ask for, in one place: embed, store, index, recommend, follow changes.

The store is written first and the index second, so a crash between them leaves the index
behind the store, never ahead of it; the change-log follower (and the next start-up's
rebuild) brings it level. Other processes serving the same store learn of each change
through that same log.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.encoders import LoadedModel
from service.index import Hit, ItemIndex
from service.stores.base import Item, NewItem, Sale, Store, UnknownItemsError, UpsertResult

log = logging.getLogger(__name__)

PERSONALIZED = "personalized"
FALLBACK = "fallback_best_sellers_then_newest"
# Searches rerun at most this often when hits turn out sold by another process.
STALE_RETRIES = 3
# With artist filters the fallback reads this many times k candidates before filtering.
FALLBACK_OVERFETCH = 50


@dataclass(frozen=True)
class ItemDraft:
    """A validated artwork from a request, before the model has embedded it."""

    id: str
    artist_id: str
    features: np.ndarray
    edition_size: int | None
    stock: int
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Filters:
    exclude_purchased: bool = True
    include_artists: set[str] | None = None
    exclude_artists: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    artist_id: str
    score: float | None
    because: list[tuple[str, float]] | None = None


@dataclass(frozen=True)
class Recommendations:
    strategy: str
    items: list[Recommendation]
    history_used: int


class Recommender:
    def __init__(self, model: LoadedModel, store: Store, index: ItemIndex, history_length: int):
        self.model, self.store, self.index = model, store, index
        self.history_length = history_length
        self.model_version = model.version
        self._cursor = "0"
        self._follow_lock = threading.Lock()

    def rebuild_index(self) -> float:
        """Fill the index from the store; returns the seconds it took."""
        started = time.perf_counter()
        with self._follow_lock:
            self._cursor = self.store.change_cursor()  # before the snapshot: nothing is missed
            catalogue = self.store.catalogue()
            self.index.rebuild(catalogue)
        return time.perf_counter() - started

    def add_items(self, drafts: list[ItemDraft]) -> UpsertResult:
        embeddings = self.model.embed_items(np.stack([d.features for d in drafts]))
        items = [
            NewItem(d.id, d.artist_id, d.features, e, d.edition_size, d.stock, d.metadata)
            for d, e in zip(drafts, embeddings, strict=True)
        ]
        result = self.store.upsert_items(items)
        # Index what was just stored without reading it back; when the change log names these
        # keys again, the version check makes that a no-op.
        selling = [n for n, d in enumerate(drafts) if d.stock > 0]
        self.index.remove([k for n, k in enumerate(result.keys) if drafts[n].stock == 0])
        self.index.upsert(
            [result.keys[n] for n in selling],
            [drafts[n].id for n in selling],
            [drafts[n].artist_id for n in selling],
            embeddings[selling],
            [result.updated_at] * len(selling),
        )
        return result

    def delete_item(self, item_id: str) -> Item | None:
        item = self.store.delete_item(item_id)
        if item is not None:
            self.index.remove([item.key])
        return item

    def purchase(self, user_id: str, item_ids: list[str], timestamp: float) -> Sale:
        sale = self.store.record_purchase(user_id, item_ids, timestamp)
        self.index.remove(sale.sold_out_keys)
        return sale

    def follow_changes(self) -> int:
        """Apply every change logged since the last call (by any process); returns how many."""
        with self._follow_lock:
            cursor, keys = self.store.changes_since(self._cursor)
            if keys:
                self._apply(keys)
            self._cursor = cursor
            return len(keys)

    def _apply(self, keys: list[int]) -> None:
        """Bring the index in line with the store for these keys (idempotent)."""
        items = self.store.index_records(keys)
        fresh = [i for i in items if i.for_sale and self.index.version(i.key) != i.updated_at]
        gone = [i.key for i in items if not i.for_sale]
        self.index.remove(gone)
        if fresh:
            self.index.upsert(
                [i.key for i in fresh],
                [i.id for i in fresh],
                [i.artist_id for i in fresh],
                np.stack([i.embedding for i in fresh]),
                [i.updated_at for i in fresh],
            )

    def user_vector(self, history_ids: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The user tower over the last N history items' stored embeddings."""
        recent = history_ids[-self.history_length :]
        stored = self.store.embeddings(recent)
        missing = [i for i in dict.fromkeys(recent) if i not in stored]
        if missing:
            raise UnknownItemsError(missing)
        history = np.stack([stored[i] for i in recent])[None]
        vector = self.model.embed_users(history, np.ones(history.shape[:2], np.float32))[0]
        return vector, stored

    def recommend(
        self,
        history_ids: list[str],
        k: int,
        filters: Filters,
        explain: int = 0,
    ) -> Recommendations:
        exclude = set(history_ids) if filters.exclude_purchased else set()
        if not history_ids:
            return Recommendations(FALLBACK, self._fallback(k, exclude, filters), 0)
        vector, history = self.user_vector(history_ids)
        hits = self._search_for_sale(
            vector, k, exclude, filters.include_artists, filters.exclude_artists
        )
        items = (
            self._explained(hits, history, explain)
            if explain
            else [Recommendation(h.item_id, h.artist_id, h.score) for h in hits]
        )
        return Recommendations(PERSONALIZED, items, min(len(history_ids), self.history_length))

    def similar(self, item_id: str, k: int) -> list[Recommendation]:
        embedding = self.store.embeddings([item_id]).get(item_id)
        if embedding is None:
            raise UnknownItemsError([item_id])
        hits = self._search_for_sale(embedding, k, {item_id})
        return [Recommendation(h.item_id, h.artist_id, h.score) for h in hits]

    def _search_for_sale(
        self,
        vector: np.ndarray,
        k: int,
        exclude: set[str],
        include_artists: set[str] | None = None,
        exclude_artists: set[str] | None = None,
    ) -> list[Hit]:
        """Search, then confirm with the store that every hit is still for sale.

        Another process may have sold or deleted a work in the last sync interval; such a hit
        is refreshed from the store (which takes it out of this index) and the search rerun.
        """
        for _ in range(STALE_RETRIES):
            hits = self.index.search(vector, k, exclude, include_artists, exclude_artists or set())
            live = self.store.for_sale([h.item_id for h in hits])
            stale = [h.key for h in hits if h.item_id not in live]
            if not stale:
                return hits
            self._apply(stale)
        return [h for h in hits if h.item_id in live]

    def _explained(
        self, hits: list[Hit], history: dict[str, np.ndarray], per_item: int
    ) -> list[Recommendation]:
        """For each hit, the history items whose embeddings agree with it most (dot product)."""
        if not hits:
            return []
        stored = self.store.embeddings([h.item_id for h in hits])
        history_ids = list(history)
        history_matrix = np.stack([history[i] for i in history_ids])
        result = []
        for hit in hits:
            contributions = history_matrix @ stored[hit.item_id]
            top = np.argsort(-contributions, kind="stable")[:per_item]
            because = [(history_ids[j], float(contributions[j])) for j in top]
            result.append(Recommendation(hit.item_id, hit.artist_id, hit.score, because))
        return result

    def _fallback(self, k: int, exclude: set[str], filters: Filters) -> list[Recommendation]:
        """Best sellers still for sale, then the newest works, under the same filters."""
        filtered = filters.include_artists is not None or bool(filters.exclude_artists)
        limit = k * FALLBACK_OVERFETCH if filtered else k + len(exclude)
        candidates = dict.fromkeys(self.store.best_sellers(limit) + self.store.newest(limit))
        chosen = []
        for item_id in candidates:
            entry = self.index.entry(item_id)
            if entry is None or item_id in exclude or entry.artist_id in filters.exclude_artists:
                continue
            if (
                filters.include_artists is not None
                and entry.artist_id not in filters.include_artists
            ):
                continue
            chosen.append(Recommendation(item_id, entry.artist_id, None))
            if len(chosen) == k:
                break
        return chosen
