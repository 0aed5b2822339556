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
from collections.abc import Callable
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
# Artworks embedded per call when a model recomputes what another model stored.
EMBED_BATCH = 2048
# With artist filters the fallback reads this many times k candidates before filtering.
FALLBACK_OVERFETCH = 50


@dataclass(frozen=True)
class ItemDraft:
    """A validated artwork from a request, before the model has embedded it."""

    id: str
    artist_id: str
    features: np.ndarray
    edition_size: int | None
    stock: int | None  # None: the store's default (see NewItem)
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
    model_version: str


@dataclass(frozen=True)
class Serving:
    """A model and the index its embeddings fill: swapped together, read together, so a
    request never scores one model's user vector against another model's items."""

    model: LoadedModel
    index: ItemIndex


@dataclass(frozen=True)
class Rollout:
    version: str
    model_dir: str
    indexed: int
    embedded: int  # items whose stored embedding was another model's, recomputed
    seconds: float


class FeatureDimensionMismatch(ValueError):
    """The model takes features of another length than the stored artworks have."""


class Recommender:
    def __init__(
        self, store: Store, history_length: int, new_index: Callable[[int], ItemIndex]
    ) -> None:
        self.store, self.history_length = store, history_length
        self._new_index = new_index
        self._serving: Serving | None = None
        self._cursor = "0"
        self._follow_lock = threading.Lock()
        self.rollout_lock = threading.Lock()  # one roll-out at a time (service.rollout)
        self.last_rollout: Rollout | None = None

    @property
    def serving(self) -> Serving:
        if self._serving is None:
            raise RuntimeError("no model is being served yet")
        return self._serving

    @property
    def model(self) -> LoadedModel:
        return self.serving.model

    @property
    def index(self) -> ItemIndex:
        return self.serving.index

    @property
    def model_version(self) -> str:
        return self.serving.model.version

    def serve(self, model: LoadedModel) -> Rollout:
        """Start serving `model`: at start-up, and to roll out a new one while serving.

        The new index is built beside the old one (artworks whose stored embedding another
        model computed are re-embedded from their stored features, and the result written
        back), brought up to date with the change log, then swapped in at once; requests go
        on being answered by the old model until then.
        """
        started = time.perf_counter()
        stored_dim = self.store.feature_dim()
        if stored_dim is not None and stored_dim != model.feature_dim:
            raise FeatureDimensionMismatch(
                f"{model.directory} takes {model.feature_dim}-d features, but the stored "
                f"artworks have {stored_dim}-d features; it cannot embed this catalogue "
                f"(serve a model on {stored_dim}-d features, or start from an empty store)"
            )
        candidate = Serving(model, self._new_index(model.embedding_dim))
        cursor = self.store.change_cursor()  # before the snapshot: nothing is missed
        catalogue = self.store.catalogue()
        embeddings, embedded = self._current_embeddings(
            model,
            catalogue.keys,
            catalogue.item_ids,
            catalogue.embeddings,
            catalogue.model_versions,
            catalogue.updated_at,
        )
        if len(catalogue.keys):
            candidate.index.upsert(
                catalogue.keys,
                catalogue.item_ids,
                catalogue.artist_ids,
                embeddings,
                catalogue.updated_at,
            )
        with self._follow_lock:
            while True:
                cursor, keys = self.store.changes_since(cursor)
                if not keys:
                    break
                self._apply(candidate, keys)
            self._serving, self._cursor = candidate, cursor
        self.last_rollout = Rollout(
            model.version,
            str(model.directory),
            len(candidate.index),
            embedded,
            time.perf_counter() - started,
        )
        return self.last_rollout

    def _current_embeddings(
        self,
        model: LoadedModel,
        keys: np.ndarray | list[int],
        item_ids: list[str],
        stored: list[np.ndarray],
        versions: list[str],
        updated_at: list[float],
    ) -> tuple[np.ndarray, int]:
        """`model`'s embeddings for these rows: stored ones where `model` computed them, the
        rest recomputed from the stored features and written back for the next reader."""
        rows = np.empty((len(item_ids), model.embedding_dim), np.float32)
        stale = [n for n, version in enumerate(versions) if version != model.version]
        for n in set(range(len(item_ids))) - set(stale):
            rows[n] = stored[n]
        for start in range(0, len(stale), EMBED_BATCH):
            chunk = stale[start : start + EMBED_BATCH]
            features = self.store.features([item_ids[n] for n in chunk])
            rows[chunk] = model.embed_items(np.stack([features[item_ids[n]] for n in chunk]))
            self.store.set_embeddings(
                [(int(keys[n]), updated_at[n], rows[n]) for n in chunk], model.version
            )
        return rows, len(stale)

    def add_items(self, drafts: list[ItemDraft]) -> UpsertResult:
        serving = self.serving
        embeddings = serving.model.embed_items(np.stack([d.features for d in drafts]))
        version = serving.model.version
        items = [
            NewItem(d.id, d.artist_id, d.features, e, d.edition_size, d.stock, d.metadata, version)
            for d, e in zip(drafts, embeddings, strict=True)
        ]
        result = self.store.upsert_items(items)
        self._refresh(result.keys)
        return result

    def delete_item(self, item_id: str) -> Item | None:
        item = self.store.delete_item(item_id)
        if item is not None:
            self._refresh([item.key])
        return item

    def purchase(self, user_id: str, item_ids: list[str], timestamp: float) -> Sale:
        sale = self.store.record_purchase(user_id, item_ids, timestamp)
        self._refresh(sale.sold_out_keys)
        return sale

    def _refresh(self, keys: list[int]) -> None:
        """Bring this process's index in line with the store for keys it just changed.

        Always from a fresh read of the store and under the follower's lock, so two writes to
        one artwork racing with a follower tick can never leave the older one in the index.
        The artworks just embedded carry this model's version: nothing is embedded twice.
        """
        if keys:
            with self._follow_lock:
                self._apply(self.serving, keys)

    def follow_changes(self) -> int:
        """Apply every change logged since the last call (by any process); returns how many."""
        with self._follow_lock:
            cursor, keys = self.store.changes_since(self._cursor)
            if keys:
                self._apply(self.serving, keys)
            self._cursor = cursor
            return len(keys)

    def _apply(self, serving: Serving, keys: list[int]) -> None:
        """Bring the index in line with the store for these keys (idempotent)."""
        records = self.store.index_records(keys)
        fresh = [r for r in records if r.for_sale and serving.index.version(r.key) != r.updated_at]
        serving.index.remove([r.key for r in records if not r.for_sale])
        if fresh:
            embeddings, _ = self._current_embeddings(
                serving.model,
                [r.key for r in fresh],
                [r.id for r in fresh],
                [r.embedding for r in fresh],
                [r.model_version for r in fresh],
                [r.updated_at for r in fresh],
            )
            serving.index.upsert(
                [r.key for r in fresh],
                [r.id for r in fresh],
                [r.artist_id for r in fresh],
                embeddings,
                [r.updated_at for r in fresh],
            )

    def _embeddings(self, model: LoadedModel, item_ids: list[str]) -> dict[str, np.ndarray]:
        """`model`'s embeddings of these items (deleted ones included), stored or recomputed."""
        found = self.store.embeddings(item_ids, model.version)
        missing = [i for i in dict.fromkeys(item_ids) if i not in found]
        if missing:
            features = self.store.features(missing)
            unknown = [i for i in missing if i not in features]
            if unknown:
                raise UnknownItemsError(unknown)
            computed = model.embed_items(np.stack([features[i] for i in missing]))
            found |= dict(zip(missing, computed, strict=True))
        return found

    def _user_vector(
        self, model: LoadedModel, history_ids: list[str]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The user tower over the last N history items' embeddings."""
        recent = history_ids[-self.history_length :]
        stored = self._embeddings(model, recent)
        history = np.stack([stored[i] for i in recent])[None]
        vector = model.embed_users(history, np.ones(history.shape[:2], np.float32))[0]
        return vector, stored

    def recommend(
        self,
        history_ids: list[str],
        k: int,
        filters: Filters,
        explain: int = 0,
    ) -> Recommendations:
        exclude = set(history_ids) if filters.exclude_purchased else set()
        serving = self.serving
        if not history_ids:
            fallback = self._fallback(serving, k, exclude, filters)
            return Recommendations(FALLBACK, fallback, 0, serving.model.version)
        vector, history = self._user_vector(serving.model, history_ids)
        hits = self._search_for_sale(
            serving, vector, k, exclude, filters.include_artists, filters.exclude_artists
        )
        items = (
            self._explained(serving.model, hits, history, explain)
            if explain
            else [Recommendation(h.item_id, h.artist_id, h.score) for h in hits]
        )
        used = min(len(history_ids), self.history_length)
        return Recommendations(PERSONALIZED, items, used, serving.model.version)

    def similar(self, item_id: str, k: int) -> list[Recommendation]:
        serving = self.serving
        embedding = self._embeddings(serving.model, [item_id])[item_id]
        hits = self._search_for_sale(serving, embedding, k, {item_id})
        return [Recommendation(h.item_id, h.artist_id, h.score) for h in hits]

    def _search_for_sale(
        self,
        serving: Serving,
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
            hits = serving.index.search(
                vector, k, exclude, include_artists, exclude_artists or set()
            )
            live = self.store.for_sale([h.item_id for h in hits])
            stale = [h.key for h in hits if h.item_id not in live]
            if not stale:
                return hits
            with self._follow_lock:
                self._apply(serving, stale)
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
        candidates = dict.fromkeys(self.store.best_sellers(limit) + self.store.newest(limit))
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
