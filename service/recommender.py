"""Ranking: what to recommend to a customer or a visitor, which works are alike, why, and
what to offer someone with no history yet.

Every request reads one `Serving` snapshot (model and index together) and brings its index
level with the store's change log before searching, so a work sold through another process
is never offered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from curatornet.model_loader import LoadedModel
from service.index import Hit
from service.indexing import CatalogueIndex, Serving
from service.stores.base import Store, UnknownItemsError

PERSONALIZED = "personalized"
FALLBACK = "fallback_best_sellers_then_newest"
# Searches rerun at most this often when hits turn out sold by another process.
STALE_RETRIES = 3
# With artist filters the fallback reads this many times k candidates before filtering.
FALLBACK_OVERFETCH = 50


@dataclass(frozen=True)
class Filters:
    exclude_purchased: bool = True
    include_artists: set[str] | None = None
    exclude_artists: set[str] = field(default_factory=set)


class Recommendation(NamedTuple):
    """One recommended work, k of them a request: a NamedTuple, as `Hit` is."""

    item_id: str
    artist_id: str
    score: float | None
    because: list[tuple[str, float]] | None = None


@dataclass(frozen=True)
class Recommendations:
    strategy: str
    items: list[Recommendation]
    history_used: int
    model_version: str


class Recommender:
    """Ranks what the catalogue index holds, from one serving snapshot per request. It only
    reads the store; a hit found sold is handed back to the index to drop."""

    def __init__(self, store: Store, catalogue: CatalogueIndex, history_length: int) -> None:
        self._store, self._catalogue, self.history_length = store, catalogue, history_length

    def _embeddings(
        self,
        model: LoadedModel,
        item_ids: list[str],
        found: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """`model`'s embeddings of these items (deleted ones included): those in `found` (read
        already), then the stored ones, then recomputed from the stored features."""
        found = dict(found or {})
        wanted = [i for i in dict.fromkeys(item_ids) if i not in found]
        if wanted:
            found |= self._store.embeddings(wanted, model.version)
        missing = [i for i in wanted if i not in found]
        if missing:
            features = self._store.features(missing)
            unknown = [i for i in missing if i not in features]
            if unknown:
                raise UnknownItemsError(unknown)
            computed = model.embed_items(np.stack([features[i] for i in missing]))
            found |= dict(zip(missing, computed, strict=True))
        return found

    def _interests(
        self, model: LoadedModel, history_ids: list[str], found: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """[K, E] the user tower over the last N history items' embeddings (K = 1 for a
        single-vector model), and those embeddings."""
        recent = history_ids[-self.history_length :]
        stored = self._embeddings(model, recent, found)
        history = np.stack([stored[i] for i in recent])[None]
        interests = model.embed_users(history, np.ones(history.shape[:2], np.float32))[0]
        return interests, stored

    def for_customer(
        self, user_id: str, k: int, filters: Filters, explain: int = 0
    ) -> Recommendations:
        """`recommend` from what the customer bought, read with the embeddings of the last
        `history_length` of it in one store read."""
        serving = self._catalogue.serving
        history_ids, found = self._store.purchases_and_embeddings(
            user_id, self.history_length, serving.model.version
        )
        return self._recommend(serving, history_ids, found, k, filters, explain)

    def recommend(
        self,
        history_ids: list[str],
        k: int,
        filters: Filters,
        explain: int = 0,
    ) -> Recommendations:
        """Top k for a history (item ids, oldest first); UnknownItemsError names ids the
        store has never had."""
        return self._recommend(self._catalogue.serving, history_ids, {}, k, filters, explain)

    def _recommend(
        self,
        serving: Serving,
        history_ids: list[str],
        found: dict[str, np.ndarray],
        k: int,
        filters: Filters,
        explain: int,
    ) -> Recommendations:
        exclude = set(history_ids) if filters.exclude_purchased else set()
        if not history_ids:
            fallback = self._fallback(serving, k, exclude, filters)
            return Recommendations(FALLBACK, fallback, 0, serving.model.version)
        interests, history = self._interests(serving.model, history_ids, found)
        hits = self._search_for_sale(
            serving, interests, k, exclude, filters.include_artists, filters.exclude_artists
        )
        items = (
            self._explained(serving.model, hits, history, explain)
            if explain
            else [Recommendation(h.item_id, h.artist_id, h.score) for h in hits]
        )
        used = min(len(history_ids), self.history_length)
        return Recommendations(PERSONALIZED, items, used, serving.model.version)

    def similar(self, item_id: str, k: int) -> list[Recommendation]:
        """Works for sale closest to `item_id`; UnknownItemsError for a deleted work too, as
        GET /items/{id} has it (its embedding stays stored for its buyers' histories)."""
        if not self._store.get_items([item_id]):
            raise UnknownItemsError([item_id])
        serving = self._catalogue.serving
        embedding = self._embeddings(serving.model, [item_id])[item_id]
        hits = self._search_for_sale(serving, embedding, k, {item_id})
        return [Recommendation(h.item_id, h.artist_id, h.score) for h in hits]

    def _search_for_sale(
        self,
        serving: Serving,
        queries: np.ndarray,
        k: int,
        exclude: set[str],
        include_artists: set[str] | None = None,
        exclude_artists: set[str] | None = None,
    ) -> list[Hit]:
        """Search among what is for sale now.

        Other processes' sales and deletions reach this index through the change log every
        sync interval; a request first applies any logged since (`catch_up`: one cheap read
        when there are none, where confirming each hit with the store cost ten times that).
        When the index cannot be brought level so (see `catch_up`), each hit is confirmed with
        the store instead; a hit found sold is refreshed from the store (which takes it out of
        this index) and the search rerun.
        """
        if self._catalogue.catch_up(serving):
            return serving.index.search(
                queries, k, exclude, include_artists, exclude_artists or set()
            )
        for _ in range(STALE_RETRIES):
            hits = serving.index.search(
                queries, k, exclude, include_artists, exclude_artists or set()
            )
            live = self._store.for_sale([h.item_id for h in hits])
            stale = [h.key for h in hits if h.item_id not in live]
            if not stale:
                return hits
            self._catalogue.refresh(serving, stale)
        return [h for h in hits if h.item_id in live]

    def _explained(
        self,
        model: LoadedModel,
        hits: list[Hit],
        history: dict[str, np.ndarray],
        per_item: int,
    ) -> list[Recommendation]:
        """For each hit, the history items whose embeddings agree with it most (dot product)."""
        if not hits:
            return []
        stored = self._embeddings(model, [h.item_id for h in hits])
        history_ids = list(history)
        history_matrix = np.stack([history[i] for i in history_ids])
        result = []
        for hit in hits:
            contributions = history_matrix @ stored[hit.item_id]
            top = np.argsort(-contributions, kind="stable")[:per_item]
            because = [(history_ids[j], float(contributions[j])) for j in top]
            result.append(Recommendation(hit.item_id, hit.artist_id, hit.score, because))
        return result

    def _fallback(
        self, serving: Serving, k: int, exclude: set[str], filters: Filters
    ) -> list[Recommendation]:
        """Best sellers still for sale, then the newest works, under the same filters."""
        filtered = filters.include_artists is not None or bool(filters.exclude_artists)
        limit = k * FALLBACK_OVERFETCH if filtered else k + len(exclude)
        candidates = dict.fromkeys(self._store.best_sellers(limit) + self._store.newest(limit))
        chosen = []
        for item_id in candidates:
            entry = serving.index.entry(item_id)
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
