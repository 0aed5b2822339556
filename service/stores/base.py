"""The store interface: the service's source of truth, behind which SQLite and Redis sit.

The FAISS index is derived from the store and can always be rebuilt from it. Every mutation
that can change what the index should hold (an upsert, a deletion, a sale that empties the
stock) appends the item's key to a change log, so that every process serving the same store
can bring its own index up to date by following that log.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class StoreError(Exception):
    """A request the store refused; nothing was written."""


class ChangesLost(StoreError):
    """The change log no longer holds every change after a cursor (Redis trims its stream):
    whoever follows from that cursor must rebuild from the store instead."""


class ItemsRefused(StoreError):
    """Refused because of these items; `status` is the HTTP answer that deserves."""

    status = 409
    reason = ""

    def __init__(self, item_ids: list[str]) -> None:
        super().__init__(f"{self.reason}: {item_ids}")
        self.item_ids = item_ids


class UnknownItemsError(ItemsRefused):
    status = 404
    reason = "unknown item id(s)"


class NotForSaleError(ItemsRefused):
    reason = "not for sale (sold out)"


class EditionExhaustedError(ItemsRefused):
    """An upload's stock beyond what the edition has left unsold: a sold one-of-a-kind work
    re-posted with stock 1 would be sold twice."""

    reason = "stock is more than the edition has left unsold"


@dataclass(frozen=True)
class Picture:
    """A stored artwork's web-sized picture (`service.pictures`) and its media type."""

    data: bytes
    media_type: str


@dataclass(frozen=True)
class NewItem:
    """An artwork as the API hands it to the store, already embedded by the current model."""

    id: str
    artist_id: str
    # float32 [F], as uploaded; stored as 16-bit integers (`features_blobs`), kept so that a future
    # model can re-embed the catalogue
    features: np.ndarray
    embedding: np.ndarray  # float32 [E]
    edition_size: int | None  # None: one-of-a-kind
    # Units for sale. None: a new work offers its whole edition (1 for one-of-a-kind); a
    # replaced one keeps its stock, so correcting a title never puts sold prints back on sale.
    stock: int | None
    metadata: dict[str, Any] = field(default_factory=dict)
    model_version: str = ""  # the model that computed `embedding`
    # The web-sized picture the work was uploaded as. An upload replaces the whole work: one
    # as features leaves it with none, so no picture outlives the features it showed.
    picture: Picture | None = None


@dataclass(frozen=True)
class Item:
    """A stored artwork. `key` is the int64 the index knows it by; it never changes."""

    key: int
    id: str
    artist_id: str
    features: np.ndarray  # float32 [F], as stored: to 1/65534 of its peak (`features_vector`)
    embedding: np.ndarray
    edition_size: int | None
    stock: int
    sold: int
    metadata: dict[str, Any]
    created_at: float
    updated_at: float
    deleted: bool

    @property
    def for_sale(self) -> bool:
        return self.stock > 0 and not self.deleted


@dataclass(frozen=True)
class IndexRecords:
    """What the index needs of some items, enough to add, replace or drop them: a column each,
    row n of every column one item. Columns, not an object per item: each process reads back
    every batch of works written (the writer, then every follower), and with a record object
    per work that read took 19 to 23 ms of CPU a batch of 1,000 works, 11 to 12 as columns."""

    keys: np.ndarray  # int64 [N]
    item_ids: list[str]
    artist_ids: list[str]
    embeddings: list[np.ndarray]  # float32 [E] each; models may differ in E
    for_sale: np.ndarray  # bool [N]
    updated_at: np.ndarray  # float64 [N]
    model_versions: list[str]  # embeddings of another model are recomputed from the features

    @classmethod
    def of_rows(cls, rows: list[tuple]) -> IndexRecords:
        """From rows of (key, id, artist_id, embedding blob, for sale, updated_at,
        model_version)."""
        columns = zip(*rows, strict=True) if rows else [()] * 7
        keys, ids, artists, blobs, selling, updated, versions = columns
        if len({len(blob) for blob in blobs}) == 1:  # one model's: one conversion for all
            embeddings = list(np.frombuffer(b"".join(blobs), np.float32).reshape(len(blobs), -1))
        else:
            embeddings = [as_vector(blob) for blob in blobs]
        return cls(
            np.array(keys, np.int64),
            list(ids),
            list(artists),
            embeddings,
            np.array(selling, bool),
            np.array(updated, np.float64),
            list(versions),
        )


@dataclass(frozen=True)
class UpsertResult:
    created: list[str]
    updated: list[str]
    keys: list[int]  # in the order of the request
    updated_at: float  # the version every item of the batch now has
    # The change log's newest position before this write's entries and after them: every
    # entry between is this write's. The index that applied the write moves its cursor over
    # them when it stood just before them, so neither its follower nor a request's catch-up
    # reads the batch back a second time.
    logged: tuple[str, str]


@dataclass(frozen=True)
class Purchase:
    item_id: str
    timestamp: float


@dataclass(frozen=True)
class Sale:
    """What a recorded purchase changed: the keys of items whose stock reached zero.
    `replayed`: an earlier request with the same idempotency key recorded it."""

    user_id: str
    item_ids: list[str]
    timestamp: float
    sold_out: list[str]
    sold_out_keys: list[int]
    replayed: bool = False

    def remembered(self) -> str:
        """The sale as its idempotency key keeps it, for `replay`."""
        fields = ("user_id", "item_ids", "timestamp", "sold_out", "sold_out_keys")
        return json.dumps({name: getattr(self, name) for name in fields})


# How long a purchase's idempotency key is remembered: a client retrying a purchase whose
# answer it never saw (a timeout, a 503) within a day gets that purchase, not a second one.
IDEMPOTENCY_SECONDS = 24 * 3600


class IdempotencyKeyReused(StoreError):
    """The idempotency key of an earlier purchase, sent with another user or other items."""


def replay(remembered: str, user_id: str, item_ids: list[str]) -> Sale:
    """The purchase an idempotency key recorded, when this request repeats it."""
    sale = json.loads(remembered)
    if sale["user_id"] != user_id or sale["item_ids"] != list(item_ids):
        # Not saying which: whoever reuses a key must not learn someone else's purchase.
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used within the last day for another purchase"
        )
    return Sale(
        sale["user_id"],
        sale["item_ids"],
        float(sale["timestamp"]),
        list(sale["sold_out"] or []),  # Lua's cjson writes an empty list as {}
        list(sale["sold_out_keys"] or []),
        replayed=True,
    )


@dataclass(frozen=True)
class Catalogue:
    """Everything for sale, in the shape the index is built from."""

    keys: np.ndarray  # int64 [N]
    item_ids: list[str]
    artist_ids: list[str]
    embeddings: list[np.ndarray]  # float32 [E] each; models may differ in E
    model_versions: list[str]  # which model computed each row's embedding
    updated_at: list[float]


@dataclass(frozen=True)
class Counts:
    items: int
    for_sale: int
    users: int
    purchases: int


class Store(Protocol):
    """Thread-safe; every method is atomic with respect to other processes on the same store.

    SQLiteStore and RedisStore subclass it, so the type checker holds each to every method
    and signature here.
    """

    def upsert_items(self, items: list[NewItem]) -> UpsertResult:
        """Insert or replace a batch, all or nothing. A replaced item keeps its key and sales.

        Raises EditionExhaustedError when an item's given stock is more than its edition
        (1 for one-of-a-kind) less the units already sold.
        """

    def get_items(self, item_ids: list[str], include_deleted: bool = False) -> dict[str, Item]:
        """The stored items among `item_ids` (unknown ids are simply absent)."""

    def picture(self, item_id: str) -> Picture | None:
        """The picture of a work not deleted; None when unknown, deleted or uploaded without
        one. Read apart from `get_items`, so no other read carries its bytes."""

    def embeddings(self, item_ids: list[str], model_version: str) -> dict[str, np.ndarray]:
        """Stored embeddings computed by `model_version`, deleted items included (they still
        describe their buyers); items embedded by another model are left out."""

    def features(self, item_ids: list[str]) -> dict[str, np.ndarray]:
        """Raw features, deleted items included: what a new model embeds."""

    def set_embeddings(self, rows: list[tuple[int, float, np.ndarray]], model_version: str) -> int:
        """Store (key, updated_at, embedding) rows computed by `model_version`; a row whose
        item changed since `updated_at` is skipped. Returns how many were written."""

    def feature_dim(self) -> int | None:
        """The length of the stored feature vectors (None while the store holds no item)."""

    def get_setting(self, name: str) -> str | None: ...

    def set_setting(self, name: str, value: str) -> None:
        """Small shared values every process serving the store reads (the model to serve)."""

    def for_sale(self, item_ids: list[str]) -> set[str]:
        """Which of these are for sale now: the last word before a recommendation leaves."""

    def index_records(self, keys: list[int]) -> IndexRecords:
        """Items by index key, deleted ones included: what the change-log follower reads."""

    def delete_item(self, item_id: str) -> Item | None:
        """Take an item off the catalogue; it stays in histories, its picture goes. None when
        unknown."""

    def record_purchase(
        self,
        user_id: str,
        item_ids: list[str],
        timestamp: float,
        idempotency_key: str | None = None,
    ) -> Sale:
        """Append to the user's history and take stock, all or nothing.

        Raises UnknownItemsError for unknown or deleted ids and NotForSaleError when any
        item (counting repeats in `item_ids` as units) has too little stock left. With an
        `idempotency_key` recorded in the last IDEMPOTENCY_SECONDS, nothing is written: the
        sale it recorded comes back (`replay`), or IdempotencyKeyReused when it differs.
        """

    def history(self, user_id: str, limit: int | None = None) -> list[Purchase]:
        """The user's purchases, oldest first; the last `limit` of them when given."""

    def purchases_and_embeddings(
        self, user_id: str, recent: int, model_version: str
    ) -> tuple[list[str], dict[str, np.ndarray]]:
        """What a customer's recommendation starts from, in one read: the ids of everything
        they bought, oldest first, and the stored embeddings `model_version` computed of the
        last `recent` of them (as `embeddings` gives them: another model's are left out)."""

    def customers(self, limit: int) -> list[str]:
        """Ids of up to `limit` customers with purchases, by id: a few to show, cheap at any
        number of customers (which ones is not a ranking)."""

    def catalogue(self, after: int = 0, limit: int | None = None) -> Catalogue:
        """The items for sale whose key is above `after`, in key order, at most `limit` of
        them (None: all): what the index is built from, a page at a time, so that building
        it never holds a million rows' objects at once."""

    def best_sellers(self, limit: int) -> list[str]:
        """Ids of items for sale, most units sold first (ties: newest first)."""

    def newest(self, limit: int) -> list[str]:
        """Ids of items for sale, most recently created first."""

    def change_cursor(self) -> str:
        """The position of the newest change; follow from here to see only later ones."""

    def changes_since(self, cursor: str, limit: int = 10_000) -> tuple[str, list[int]]:
        """Keys changed after `cursor` (at most `limit` changes) and the cursor to go on from;
        ChangesLost when some of them are no longer in the log."""

    def counts(self) -> Counts: ...

    def ping(self) -> None:
        """Raise when the store cannot be reached."""

    def close(self) -> None: ...


def cursor_position(cursor: str) -> tuple[int, ...]:
    """A change-log cursor as numbers that order as the log does: SQLite's is a sequence
    number ("42"), Redis's a stream entry id ("1700000000000-3")."""
    return tuple(int(part) for part in cursor.split("-"))


def as_vector(blob: bytes) -> np.ndarray:
    """Stored float32 bytes back to a read-only vector (no copy)."""
    return np.frombuffer(blob, dtype=np.float32)


def as_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


# Raw features are stored as 16-bit integers and one float32 scale per vector, behind this tag:
# half the bytes of float32 (4 KB rather than 8 KB per 2048-d work, 4 GB rather than 8 GB of
# SQLite file or Redis memory at a million works). Each value is off by at most 1/65534 of the
# vector's largest magnitude, which float16 matches only for values above 1/32 of it: on the
# shipped models' catalogues, embeddings recomputed from stored features differ from those of
# the uploaded float32 values by at most 1.9e-4 (float16: 1.04e-3; benchmarks/ingest.py),
# the scale adapts to any range, and decoding is one multiplication. Stores written before keep
# untagged float32 blobs, which stay readable: the tag's four bytes read as a float32 NaN, and
# no stored vector begins with one, since every upload's features are checked finite.
SCALED_TAG = b"\x16\xf0\xff\x7f"
_HEADER = len(SCALED_TAG) + 4  # the tag, then the scale (little-endian float32)
_STEPS = 32767  # the largest int16: the vector's largest magnitude maps to it


def features_blobs(vectors: Sequence[np.ndarray]) -> list[bytes]:
    """Raw features as the stores keep them: the tag, the scale, then little-endian int16.

    Encoded as one matrix, each row's blob laid out in it and copied out once: converting row
    by row was a third of a bulk load's store time, and assembling each blob from its parts
    another fifth. Vectors of different lengths (never those of one model) go one at a time.
    """
    if not vectors:
        return []
    lengths = {len(vector) for vector in vectors}
    if 0 in lengths:
        raise ValueError("an empty feature vector cannot be stored")
    if len(lengths) > 1:
        return [blob for vector in vectors for blob in features_blobs([vector])]
    matrix = np.stack(vectors).astype(np.float32, copy=False)  # a copy: scaled in place below
    peaks = np.maximum(matrix.max(axis=1), -matrix.min(axis=1))
    if not np.isfinite(peaks).all():  # NaN or infinity in a row makes its peak so
        raise ValueError("features that are not finite cannot be stored")
    scales = np.where(peaks > 0, peaks / _STEPS, 1).astype("<f4")
    np.multiply(matrix, (np.float32(1) / scales)[:, None], out=matrix)
    blobs = np.empty((len(matrix), _HEADER + 2 * matrix.shape[1]), np.uint8)
    blobs[:, : len(SCALED_TAG)] = np.frombuffer(SCALED_TAG, np.uint8)
    blobs[:, len(SCALED_TAG) : _HEADER] = scales.view(np.uint8).reshape(-1, 4)
    steps = blobs[:, _HEADER:].view("<i2")
    np.copyto(steps, np.rint(matrix, out=matrix), casting="unsafe")  # as astype("<i2")
    return [blob.tobytes() for blob in blobs]


def features_vector(blob: bytes) -> np.ndarray:
    """Stored features, scaled int16 (tagged) or float32 (a store written before), as float32."""
    if blob[: len(SCALED_TAG)] == SCALED_TAG:
        scale = np.frombuffer(blob, dtype="<f4", count=1, offset=len(SCALED_TAG))[0]
        return np.frombuffer(blob, dtype="<i2", offset=_HEADER).astype(np.float32) * scale
    return as_vector(blob)


def feature_count(head: bytes, size: int) -> int:
    """How many features a stored blob of `size` bytes holds, from its first bytes."""
    if head[: len(SCALED_TAG)] == SCALED_TAG:
        return (size - _HEADER) // 2
    return size // 4
