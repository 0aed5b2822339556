"""The FAISS index kept in step with the store: built at start-up and for every model switch,
brought up to date by every write of this process and by the change log of all of them.

The store is written first and the index second, so a crash between them leaves the index
behind the store, never ahead of it; the change-log follower (and the next start-up's
rebuild) brings it level. Other processes serving the same store learn of each change
through that same log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from curatornet.model_loader import LoadedModel
from service.index import ItemIndex
from service.stores.base import ChangesLost, Item, NewItem, Sale, Store, UpsertResult

# Artworks embedded per call when a model recomputes what another model stored.
EMBED_BATCH = 2048
# Changes read from the log per call.
CHANGES_BATCH = 10_000


@dataclass(frozen=True)
class Serving:
    """A model and the index its embeddings fill: swapped together, read together, so a
    request never scores one model's user vector against another model's items."""

    model: LoadedModel
    index: ItemIndex


@dataclass(frozen=True)
class IndexBuild:
    """What switching to a model took: the index built for it from the store."""

    version: str
    model_dir: str
    indexed: int
    embedded: int  # items whose stored embedding was another model's, recomputed
    seconds: float


class FeatureDimensionMismatch(ValueError):
    """The model takes features of another length than the stored artworks have."""


class CatalogueIndex:
    """The artworks for sale in the store, in a FAISS index for the model being served."""

    def __init__(self, store: Store, new_index: Callable[[int], ItemIndex]) -> None:
        self._store = store
        self._new_index = new_index
        self._serving: Serving | None = None
        self._cursor = "0"
        self._follow_lock = threading.Lock()

    @property
    def serving(self) -> Serving:
        """The current model and index, as one snapshot: read it once per request."""
        if self._serving is None:
            raise RuntimeError("no model is being served yet")
        return self._serving

    def switch_model(self, model: LoadedModel) -> IndexBuild:
        """Serve `model` from now on, with an index built for it: at start-up, to roll out a
        new model, and with the same model to rebuild from the store.

        The new index is built beside the old one (artworks whose stored embedding another
        model computed are re-embedded from their stored features, and the result written
        back), brought up to date with the change log, then swapped in at once; requests go
        on being answered by the old model until then.
        """
        started = time.perf_counter()
        stored_dim = self._store.feature_dim()
        if stored_dim is not None and stored_dim != model.feature_dim:
            raise FeatureDimensionMismatch(
                f"{model.directory} takes {model.feature_dim}-d features, but the stored "
                f"artworks have {stored_dim}-d features; it cannot embed this catalogue "
                f"(serve a model on {stored_dim}-d features, or start from an empty store)"
            )
        candidate = Serving(model, self._new_index(model.embedding_dim))
        cursor = self._store.change_cursor()  # before the snapshot: nothing is missed
        catalogue = self._store.catalogue()
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
                cursor, keys = self._store.changes_since(cursor)
                if not keys:
                    break
                self._apply(candidate, keys)
            self._serving, self._cursor = candidate, cursor
        return IndexBuild(
            model.version,
            str(model.directory),
            len(candidate.index),
            embedded,
            time.perf_counter() - started,
        )

    def _current_embeddings(
        self,
        model: LoadedModel,
        keys: np.ndarray | Sequence[int],
        item_ids: Sequence[str],
        stored: Sequence[np.ndarray],
        versions: Sequence[str],
        updated_at: Sequence[float],
    ) -> tuple[np.ndarray, int]:
        """`model`'s embeddings for these rows: stored ones where `model` computed them, the
        rest recomputed from the stored features and written back for the next reader."""
        rows = np.empty((len(item_ids), model.embedding_dim), np.float32)
        stale = [n for n, version in enumerate(versions) if version != model.version]
        for n in set(range(len(item_ids))) - set(stale):
            rows[n] = stored[n]
        for start in range(0, len(stale), EMBED_BATCH):
            chunk = stale[start : start + EMBED_BATCH]
            features = self._store.features([item_ids[n] for n in chunk])
            rows[chunk] = model.embed_items(np.stack([features[item_ids[n]] for n in chunk]))
            self._store.set_embeddings(
                [(int(keys[n]), updated_at[n], rows[n]) for n in chunk], model.version
            )
        return rows, len(stale)

    def upsert_items(self, items: list[NewItem]) -> UpsertResult:
        """Store embedded artworks (new or replaced), then index them."""
        result = self._store.upsert_items(items)
        self.refresh(self.serving, result.keys)
        return result

    def delete_item(self, item_id: str) -> Item | None:
        item = self._store.delete_item(item_id)
        if item is not None:
            self.refresh(self.serving, [item.key])
        return item

    def record_purchase(
        self,
        user_id: str,
        item_ids: list[str],
        timestamp: float,
        idempotency_key: str | None = None,
    ) -> Sale:
        sale = self._store.record_purchase(user_id, item_ids, timestamp, idempotency_key)
        self.refresh(self.serving, sale.sold_out_keys)
        return sale

    def refresh(self, serving: Serving, keys: list[int]) -> None:
        """Bring `serving`'s index in line with the store for these keys: after this process
        changed them, or a search found them sold or deleted by another process.

        Always from a fresh read of the store and under the follower's lock, so two writes to
        one artwork racing with a follower tick can never leave the older one in the index.
        """
        if keys:
            with self._follow_lock:
                self._apply(serving, keys)

    def catch_up(self, serving: Serving) -> bool:
        """Apply what was logged since the last sync (up to one batch of changes), so that
        `serving` holds exactly what the store has for sale now: True when it does.

        Nothing logged since costs one read of the log's newest position. False when this
        cannot be said: the log was trimmed past this process's cursor (the follower will
        rebuild), more changes are waiting than one batch, or a roll-out replaced `serving`.
        """
        if self._store.change_cursor() != self._cursor:
            try:
                applied = self.follow_changes()
            except ChangesLost:
                return False
            if applied >= CHANGES_BATCH:
                return False
        return serving is self._serving

    def follow_changes(self) -> int:
        """Apply every change logged since the last call (by any process); returns how many."""
        with self._follow_lock:
            cursor, keys = self._store.changes_since(self._cursor, CHANGES_BATCH)
            if keys:
                self._apply(self.serving, keys)
            self._cursor = cursor
            return len(keys)

    def _apply(self, serving: Serving, keys: list[int]) -> None:
        """Bring the index in line with the store for these keys (idempotent)."""
        records = self._store.index_records(keys)
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
