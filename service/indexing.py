"""The FAISS index kept in step with the store: built at start-up and for every model switch,
brought up to date by every write of this process and by the change log of all of them.

The store is written first and the index second, so a crash between them leaves the index
behind the store, never ahead of it; the change-log follower (and the next start-up, which
replays the log after its snapshot or rebuilds) brings it level. Other processes serving the
same store learn of each change through that same log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from curatornet.model_loader import LoadedModel
from service.index import ItemIndex
from service.snapshot import IndexSnapshots, SnapshotRejected
from service.stores.base import ChangesLost, Item, NewItem, Sale, Store, UpsertResult

log = logging.getLogger(__name__)

# Artworks embedded per call when a model recomputes what another model stored.
EMBED_BATCH = 2048
# Changes read from the log per call.
CHANGES_BATCH = 10_000
# Artworks read from the store per page while building an index: what a build holds beside
# the index itself (about 30 MB of row objects), however large the catalogue.
CATALOGUE_PAGE = 50_000
# A start that replayed this many changes after its snapshot saves a new one before serving,
# so that a process that never shuts down cleanly does not replay more and more of them.
RESAVE_AFTER_CHANGES = 10_000


@dataclass(frozen=True)
class Serving:
    """A model and the index its embeddings fill: swapped together, read together, so a
    request never scores one model's user vector against another model's items."""

    model: LoadedModel
    index: ItemIndex


@dataclass(frozen=True)
class IndexBuild:
    """What switching to a model took: the index built for it from the store, or loaded from
    its snapshot and brought level with the change log."""

    version: str
    model_dir: str
    indexed: int
    embedded: int  # items whose stored embedding was another model's, recomputed
    seconds: float
    snapshot: str | None = None  # the snapshot it was loaded from; None: built from the store
    replayed: int = 0  # changes applied after the snapshot or the catalogue read


class FeatureDimensionMismatch(ValueError):
    """The model takes features of another length than the stored artworks have."""


class CatalogueIndex:
    """The artworks for sale in the store, in a FAISS index for the model being served."""

    def __init__(
        self,
        store: Store,
        new_index: Callable[[int], ItemIndex],
        snapshots: IndexSnapshots | None = None,
    ) -> None:
        self._store = store
        self._new_index = new_index
        self._snapshots = snapshots
        self._serving: Serving | None = None
        self._cursor = "0"
        self._saved_cursor: str | None = None  # the snapshot on disk is level with this
        self._follow_lock = threading.Lock()

    @property
    def serving(self) -> Serving:
        """The current model and index, as one snapshot: read it once per request."""
        if self._serving is None:
            raise RuntimeError("no model is being served yet")
        return self._serving

    def switch_model(self, model: LoadedModel, from_snapshot: bool = True) -> IndexBuild:
        """Serve `model` from now on, with an index for it: at start-up, to roll out a new
        model, and with the same model to rebuild from the store (`from_snapshot` False).

        The new index is loaded from the snapshot when that matches, else built from the store
        (artworks whose stored embedding another model computed are re-embedded from their
        stored features, and the result written back) and saved as the snapshot; either way
        beside the old index, brought level with the change log, then swapped in at once.
        Requests go on being answered by the old model until then.
        """
        started = time.perf_counter()
        stored_dim = self._store.feature_dim()
        if stored_dim is not None and stored_dim != model.feature_dim:
            raise FeatureDimensionMismatch(
                f"{model.directory} takes {model.feature_dim}-d features, but the stored "
                f"artworks have {stored_dim}-d features; it cannot embed this catalogue "
                f"(serve a model on {stored_dim}-d features, or start from an empty store)"
            )
        loaded = self._loaded(model) if from_snapshot else None
        saved: str | None  # the cursor the snapshot on disk is level with, if known
        if loaded is not None:
            candidate, saved, cursor, replayed = loaded
            embedded = 0
        else:
            candidate, cursor, embedded = self._built(model)
            cursor, replayed = self._replay(candidate, cursor)
            saved = None
        if self._snapshots is not None and (saved is None or replayed >= RESAVE_AFTER_CHANGES):
            written = self._snapshots.save(candidate.index, model.version, cursor)
            saved = cursor if written else saved
        with self._follow_lock:
            cursor, late = self._replay(candidate, cursor)
            self._serving, self._cursor, self._saved_cursor = candidate, cursor, saved
        return IndexBuild(
            model.version,
            str(model.directory),
            len(candidate.index),
            embedded,
            time.perf_counter() - started,
            None if loaded is None or self._snapshots is None else str(self._snapshots.path),
            replayed + late,
        )

    def _loaded(self, model: LoadedModel) -> tuple[Serving, str, str, int] | None:
        """`model`'s index from the snapshot brought level with the change log: the index,
        the snapshot's cursor, the cursor reached and the changes replayed; None (logging
        why) when the snapshot cannot be trusted."""
        if self._snapshots is None:
            return None
        try:
            index, saved = self._snapshots.load(
                self._new_index(model.embedding_dim), model.version, self._store.change_cursor()
            )
            candidate = Serving(model, index)
            cursor, replayed = self._replay(candidate, saved)
        except (SnapshotRejected, ChangesLost) as why:
            # A warning when it should have been usable: damaged, ahead, or the log trimmed.
            usual = isinstance(why, SnapshotRejected) and why.usual
            log.log(
                logging.INFO if usual else logging.WARNING,
                "index snapshot %s not used: %s; building the index from the store",
                self._snapshots.path,
                why,
            )
            return None
        return candidate, saved, cursor, replayed

    def _built(self, model: LoadedModel) -> tuple[Serving, str, int]:
        """`model`'s index built from the store's catalogue, a page at a time, the cursor the
        catalogue is at least as recent as, and how many embeddings were recomputed."""
        candidate = Serving(model, self._new_index(model.embedding_dim))
        cursor = self._store.change_cursor()  # before the catalogue: nothing is missed
        embedded, after = 0, 0
        while True:
            page = self._store.catalogue(after, CATALOGUE_PAGE)
            if not len(page.keys):
                return candidate, cursor, embedded
            embeddings, recomputed = self._current_embeddings(
                model,
                page.keys,
                page.item_ids,
                page.embeddings,
                page.model_versions,
                page.updated_at,
            )
            candidate.index.upsert(
                page.keys, page.item_ids, page.artist_ids, embeddings, page.updated_at
            )
            embedded += recomputed
            after = int(page.keys[-1])

    def _replay(self, serving: Serving, cursor: str) -> tuple[str, int]:
        """Apply every change logged after `cursor` to `serving`'s index: the cursor reached
        and how many changes that was. Without the follower's lock only for an index no
        request sees yet, which nothing else changes."""
        applied = 0
        while True:
            cursor, keys = self._store.changes_since(cursor)
            if not keys:
                return cursor, applied
            self._apply(serving, keys)
            applied += len(keys)

    def save_snapshot(self) -> None:
        """Bring the index being served level with the change log and save it as the
        snapshot, unless the one on disk is level with it already: at a clean shutdown, so
        that the next start replays nothing. Not when the log cannot be read to the end (the
        store is down, or trimmed past this process): the index may lag behind the store."""
        if self._snapshots is None or self._serving is None:
            return
        with self._follow_lock:
            serving = self.serving
            try:
                self._cursor, _ = self._replay(serving, self._cursor)
            except Exception as error:  # an outage, or ChangesLost
                log.warning("index snapshot not saved: cannot read the change log (%s)", error)
                return
            if self._saved_cursor != self._cursor and self._snapshots.save(
                serving.index, serving.model.version, self._cursor
            ):
                self._saved_cursor = self._cursor

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
        current = model.version
        kept: list[int] = []
        stale: list[int] = []
        for n, version in enumerate(versions):
            (kept if version == current else stale).append(n)
        if kept:
            rows[kept] = np.stack([stored[n] for n in kept])
        for start in range(0, len(stale), EMBED_BATCH):
            chunk = stale[start : start + EMBED_BATCH]
            features = self._store.features([item_ids[n] for n in chunk])
            rows[chunk] = model.embed_items(np.stack([features[item_ids[n]] for n in chunk]))
            self._store.set_embeddings(
                [(int(keys[n]), updated_at[n], rows[n]) for n in chunk], model.version
            )
        return rows, len(stale)

    def upsert_items(self, items: list[NewItem]) -> UpsertResult:
        """Store embedded artworks (new or replaced), then index them.

        The write's own change-log entries are then passed over when the index stood just
        before them (nothing else logged meanwhile): read back here once, not again by the
        follower and by the next request's catch-up (11 ms of CPU a batch of 1,000 works)."""
        result = self._store.upsert_items(items)
        with self._follow_lock:
            if result.keys:
                self._apply(self.serving, result.keys)
            if self._cursor == result.logged[0]:
                self._cursor = result.logged[1]
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
        index = serving.index
        fresh = np.flatnonzero(
            records.for_sale & (index.versions(records.keys) != records.updated_at)
        ).tolist()
        index.remove(records.keys[~records.for_sale])
        if fresh:
            fresh_keys, updated_at = records.keys[fresh], records.updated_at[fresh].tolist()
            item_ids = [records.item_ids[n] for n in fresh]
            embeddings, _ = self._current_embeddings(
                serving.model,
                fresh_keys,
                item_ids,
                [records.embeddings[n] for n in fresh],
                [records.model_versions[n] for n in fresh],
                updated_at,
            )
            artists = [records.artist_ids[n] for n in fresh]
            index.upsert(fresh_keys, item_ids, artists, embeddings, updated_at)
