"""The embedded default store: one SQLite file in WAL mode, safe for several processes.

Writes take SQLite's write lock up front (BEGIN IMMEDIATE), so a purchase's stock check and
its decrement cannot interleave with another process's; the change log is a table whose
autoincrement sequence is the cursor other processes follow.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from service.stores.base import (
    IDEMPOTENCY_SECONDS,
    Catalogue,
    Counts,
    EditionExhaustedError,
    IndexRecords,
    Item,
    NewItem,
    NotForSaleError,
    Picture,
    Purchase,
    Sale,
    Store,
    UnknownItemsError,
    UpsertResult,
    as_blob,
    as_vector,
    feature_count,
    features_blobs,
    features_vector,
    replay,
)

log = logging.getLogger(__name__)

# SQLite's own codes for "another connection holds the lock" (its extended codes, such as
# SQLITE_BUSY_SNAPSHOT, keep the primary code in their low byte).
BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
# Rows written (inserted, updated or deleted) from one checkpoint to the next (`Checkpoints`):
# one after each POST /items batch of 1,000 works, or every few hundred purchases, about as
# often as SQLite's own checkpoint at 1,000 pages of log came.
CHECKPOINT_ROWS = 1_000
# Pages of log past which a commit checkpoints by itself, as SQLite does by default at 1,000:
# a backstop should the checkpoint thread fall behind, never reached while it keeps up.
AUTOCHECKPOINT_PAGES = 25_000
OUTAGES = (sqlite3.OperationalError,)  # what `is_outage` sorts


def is_outage(error: Exception) -> bool:
    """Whether `error` is SQLite giving up on a lock another process held beyond the busy
    timeout: a retry gets past it (503). Every other OperationalError ("no such table", a
    syntax error, too many SQL variables) is a defect no retry mends, and stays a 500."""
    if not isinstance(error, sqlite3.OperationalError):
        return False
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:  # raised by the sqlite3 module itself, not by SQLite
        return "locked" in str(error)
    return code & 0xFF in BUSY


SCHEMA = """
-- The features, the one large column, come last: a row longer than a page keeps only its
-- first few hundred bytes on the table's own page and the rest in overflow pages, so every
-- other column stays on the table's page, and reading the catalogue (embeddings and all)
-- never pages through the features. Stores made before have them fourth; every query names
-- its columns.
CREATE TABLE IF NOT EXISTS items (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    artist_id TEXT NOT NULL,
    embedding BLOB NOT NULL,
    edition_size INTEGER,
    stock INTEGER NOT NULL,
    sold INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    model_version TEXT NOT NULL DEFAULT '',
    metadata TEXT NOT NULL,
    features BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS items_by_sales ON items (sold);
CREATE INDEX IF NOT EXISTS items_by_age ON items (created_at);
CREATE TABLE IF NOT EXISTS purchases (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    timestamp REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS purchases_by_user ON purchases (user_id, timestamp, seq);
CREATE TABLE IF NOT EXISTS settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS purchase_keys (
    key TEXT PRIMARY KEY,
    sale TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS purchase_keys_by_age ON purchase_keys (created_at);
-- Pictures apart from items: scans of the catalogue never page through their bytes.
CREATE TABLE IF NOT EXISTS pictures (
    key INTEGER PRIMARY KEY REFERENCES items (key),
    media_type TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key INTEGER NOT NULL
);
"""

ITEM_COLUMNS = (
    "key, id, artist_id, features, embedding, edition_size, stock, sold, metadata, "
    "created_at, updated_at, deleted"
)
FOR_SALE = "deleted = 0 AND stock > 0"
NEWEST_CHANGE = "SELECT COALESCE(MAX(seq), 0) FROM changes"  # the change-log cursor


def path_from_url(url: str) -> str:
    """`sqlite:///relative.db`, `sqlite:////absolute.db` or `sqlite:///:memory:`."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise ValueError(f"not a SQLite URL: {url!r} (expected sqlite:///path/to/file.db)")
    return url[len(prefix) :]


def _row_to_item(row: tuple) -> Item:
    (
        key,
        id_,
        artist,
        features,
        embedding,
        edition,
        stock,
        sold,
        metadata,
        created,
        updated,
        gone,
    ) = row
    return Item(
        key=key,
        id=id_,
        artist_id=artist,
        features=features_vector(features),
        embedding=as_vector(embedding),
        edition_size=edition,
        stock=stock,
        sold=sold,
        metadata=json.loads(metadata),
        created_at=created,
        updated_at=updated,
        deleted=bool(gone),
    )


def _columns(item: NewItem, features: bytes) -> tuple:
    """What every write of `item` sets: artist_id, features (stored as `features`), embedding,
    edition_size, metadata, model_version."""
    return (
        item.artist_id,
        features,
        as_blob(item.embedding),
        item.edition_size,
        json.dumps(item.metadata),
        item.model_version,
    )


def _initial_stock(item: NewItem) -> int:
    """A new work offers what its upload says, else its whole edition (1: one-of-a-kind)."""
    return item.stock if item.stock is not None else (item.edition_size or 1)


def _distinct_runs(items: list[NewItem]) -> Iterator[list[NewItem]]:
    """The batch cut before each id that repeats within it: each run is written in bulk, and an
    id given twice is inserted by one run and replaced by the next, as one write per work
    would have done."""
    run: list[NewItem] = []
    ids: set[str] = set()
    for item in items:
        if item.id in ids:
            yield run
            run, ids = [], set()
        run.append(item)
        ids.add(item.id)
    if run:
        yield run


class Checkpoints:
    """Copies the write-ahead log into the database file (a WAL checkpoint) on a thread and a
    connection of its own, once CHECKPOINT_ROWS rows were written since the last one.

    Why: SQLite checkpoints inside the commit that takes the log past 1,000 pages (4 MB), and a
    checkpoint ends by syncing the database file to disk. A POST /items batch of 1,000 works
    (4.5 MB) waited on that at every commit, as did each batch of a bulk load: about 18 µs a
    work of the 35 µs SQLite took to write it on the README's machine. Here the disk's wait
    overlaps the next request's work instead. Checkpoints come about as often as before, so
    what a commit promises is unchanged: with synchronous=FULL the commit synced the log
    itself; with NORMAL, a power loss can lose the commits since the last checkpoint.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._rows_then = 0  # the writing connection's total_changes at the last request
        self._pending = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoints", daemon=True)
        self._thread.start()

    def written(self, rows: int) -> None:
        """After a commit: `rows` is how many rows the writing connection has written so far."""
        if rows - self._rows_then >= CHECKPOINT_ROWS:
            self._rows_then = rows
            self._pending.set()

    def stop(self) -> None:
        self._stopping.set()
        self._pending.set()
        self._thread.join()

    def _run(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None)  # this thread's alone
        try:
            while True:
                self._pending.wait()
                self._pending.clear()  # rows written during the checkpoint count for the next
                if self._stopping.is_set():
                    return
                try:
                    # PASSIVE: never waits for, nor blocks, a reader or a writer; what it could
                    # not copy (a reader still on those pages) the next one copies.
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as error:  # another process checkpointing, a full disk
                    log.warning("WAL checkpoint of %s failed: %s", self._path, error)
        finally:
            db.close()


class SQLiteStore(Store):
    def __init__(self, url: str, synchronous: str = "NORMAL") -> None:
        """`synchronous`: NORMAL (WAL's default here) can lose the last commits to a power
        loss, never to a crash of the process; FULL syncs every commit first."""
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        path = path_from_url(url)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        with self._lock:
            self._db.executescript(SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(items)")}
            if "model_version" not in columns:  # a store made before embeddings were tagged
                self._db.execute(
                    "ALTER TABLE items ADD COLUMN model_version TEXT NOT NULL DEFAULT ''"
                )
        self._checkpoints = None if path == ":memory:" else Checkpoints(path)
        if self._checkpoints is not None:
            self._db.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # also when COMMIT itself failed
                    self._db.execute("ROLLBACK")
                raise
        if self._checkpoints is not None:
            self._checkpoints.written(self._db.total_changes)

    def _read(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def upsert_items(self, items: list[NewItem]) -> UpsertResult:
        """One transaction, a few statements per batch (executemany), not per item: a bulk
        load writes thousands of works a second."""
        now = time.time()
        created: list[str] = []
        updated: list[str] = []
        keys: list[int] = []
        with self._write() as db:
            sold = dict(self._where_id_in(db, "id, sold", [i.id for i in items]))
            exhausted = [
                i.id
                for i in items
                if i.stock is not None and (i.edition_size or 1) - sold.get(i.id, 0) < i.stock
            ]
            if exhausted:
                raise EditionExhaustedError(exhausted)
            for run in _distinct_runs(items):
                features = features_blobs([i.features for i in run])
                blobs = dict(zip([i.id for i in run], features, strict=True))
                stored = {id_ for (id_,) in self._where_id_in(db, "id", [i.id for i in run])}
                replaced = [i for i in run if i.id in stored]
                new = [i for i in run if i.id not in stored]
                # An unspecified stock keeps what is left, within what the edition leaves unsold.
                db.executemany(
                    "UPDATE items SET artist_id = ?, features = ?, embedding = ?, "
                    "edition_size = ?, metadata = ?, model_version = ?, "
                    "stock = COALESCE(?, MIN(stock, MAX(COALESCE(?, 1) - sold, 0))), "
                    "updated_at = ?, deleted = 0 WHERE id = ?",
                    [
                        (*_columns(i, blobs[i.id]), i.stock, i.edition_size, now, i.id)
                        for i in replaced
                    ],
                )
                db.executemany(
                    "INSERT INTO items (artist_id, features, embedding, edition_size, metadata, "
                    "model_version, stock, updated_at, created_at, id) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(*_columns(i, blobs[i.id]), _initial_stock(i), now, now, i.id) for i in new],
                )
                key_of = dict(self._where_id_in(db, "id, key", [i.id for i in run]))
                run_keys = [key_of[i.id] for i in run]
                # Only a replaced work can have had a picture: keys are never reused.
                db.executemany(
                    "DELETE FROM pictures WHERE key = ?",
                    [
                        (key,)
                        for i, key in zip(run, run_keys, strict=True)
                        if i.picture is None and i.id in stored
                    ],
                )
                db.executemany(
                    "INSERT OR REPLACE INTO pictures (key, media_type, data) VALUES (?, ?, ?)",
                    [
                        (key, i.picture.media_type, i.picture.data)
                        for i, key in zip(run, run_keys, strict=True)
                        if i.picture is not None
                    ],
                )
                created += [i.id for i in new]
                updated += [i.id for i in replaced]
                keys += run_keys
            before = db.execute(NEWEST_CHANGE).fetchone()[0]
            db.executemany("INSERT INTO changes (key) VALUES (?)", [(k,) for k in keys])
            after = db.execute(NEWEST_CHANGE).fetchone()[0]
        return UpsertResult(created, updated, keys, now, (str(before), str(after)))

    @staticmethod
    def _where_id_in(db: sqlite3.Connection, columns: str, item_ids: list[str]) -> list[tuple]:
        """`columns` of the items among `item_ids`, in one statement however many there are
        (a JSON array, not one SQL variable per id)."""
        return db.execute(
            f"SELECT {columns} FROM items WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(item_ids),),
        ).fetchall()

    def get_items(self, item_ids: list[str], include_deleted: bool = False) -> dict[str, Item]:
        condition = "1" if include_deleted else "deleted = 0"
        rows = self._select_ids(ITEM_COLUMNS, item_ids, condition)
        return {item.id: item for item in map(_row_to_item, rows)}

    def _select_ids(self, columns: str, item_ids: list[str], condition: str = "1") -> list[tuple]:
        rows: list[tuple] = []
        unique = list(dict.fromkeys(item_ids))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows += self._read(
                f"SELECT {columns} FROM items WHERE id IN ({marks}) AND {condition}", chunk
            )
        return rows

    def picture(self, item_id: str) -> Picture | None:
        rows = self._read(
            "SELECT p.data, p.media_type FROM pictures p JOIN items i ON i.key = p.key "
            "WHERE i.id = ? AND i.deleted = 0",
            (item_id,),
        )
        return Picture(*rows[0]) if rows else None

    def embeddings(self, item_ids: list[str], model_version: str) -> dict[str, np.ndarray]:
        rows = self._select_ids("id, embedding, model_version", item_ids)
        return {id_: as_vector(blob) for id_, blob, version in rows if version == model_version}

    def features(self, item_ids: list[str]) -> dict[str, np.ndarray]:
        rows = self._select_ids("id, features", item_ids)
        return {id_: features_vector(blob) for id_, blob in rows}

    def set_embeddings(self, rows: list[tuple[int, float, np.ndarray]], model_version: str) -> int:
        with self._write() as db:
            cursor = db.executemany(
                "UPDATE items SET embedding = ?, model_version = ? "
                "WHERE key = ? AND updated_at = ?",
                [(as_blob(e), model_version, int(k), u) for k, u, e in rows],
            )
            return cursor.rowcount

    def feature_dim(self) -> int | None:
        rows = self._read("SELECT substr(features, 1, 4), length(features) FROM items LIMIT 1")
        return feature_count(*rows[0]) if rows else None

    def get_setting(self, name: str) -> str | None:
        rows = self._read("SELECT value FROM settings WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    def set_setting(self, name: str, value: str) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO settings (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    def for_sale(self, item_ids: list[str]) -> set[str]:
        return {row[0] for row in self._select_ids("id", item_ids, FOR_SALE)}

    def index_records(self, keys: list[int]) -> IndexRecords:
        columns = f"key, id, artist_id, embedding, {FOR_SALE}, updated_at, model_version"
        rows = []
        unique = list(dict.fromkeys(int(k) for k in keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows += self._read(f"SELECT {columns} FROM items WHERE key IN ({marks})", chunk)
        return IndexRecords.of_rows(rows)

    def delete_item(self, item_id: str) -> Item | None:
        with self._write() as db:
            row = db.execute(
                f"UPDATE items SET deleted = 1, updated_at = ? WHERE id = ? AND deleted = 0 "
                f"RETURNING {ITEM_COLUMNS}",
                (time.time(), item_id),
            ).fetchone()
            if row is not None:
                db.execute("INSERT INTO changes (key) VALUES (?)", (row[0],))
                db.execute("DELETE FROM pictures WHERE key = ?", (row[0],))
        return None if row is None else _row_to_item(row)

    def record_purchase(
        self,
        user_id: str,
        item_ids: list[str],
        timestamp: float,
        idempotency_key: str | None = None,
    ) -> Sale:
        units = Counter(item_ids)
        with self._write() as db:
            if idempotency_key is not None:
                now = time.time()
                db.execute(
                    "DELETE FROM purchase_keys WHERE created_at < ?", (now - IDEMPOTENCY_SECONDS,)
                )
                seen = db.execute(
                    "SELECT sale FROM purchase_keys WHERE key = ?", (idempotency_key,)
                ).fetchone()
                if seen is not None:
                    return replay(seen[0], user_id, item_ids)
            marks = ",".join("?" * len(units))
            rows = db.execute(
                f"SELECT id, key, stock FROM items WHERE deleted = 0 AND id IN ({marks})",
                list(units),
            ).fetchall()
            stock = {id_: (key, left) for id_, key, left in rows}
            unknown = [i for i in units if i not in stock]
            if unknown:
                raise UnknownItemsError(unknown)
            short = [i for i, n in units.items() if stock[i][1] < n]
            if short:
                raise NotForSaleError(short)
            db.executemany(
                "UPDATE items SET stock = stock - ?, sold = sold + ? WHERE id = ?",
                [(n, n, i) for i, n in units.items()],
            )
            db.executemany(
                "INSERT INTO purchases (user_id, item_id, timestamp) VALUES (?, ?, ?)",
                [(user_id, i, timestamp) for i in item_ids],
            )
            sold_out = [i for i, n in units.items() if stock[i][1] == n]
            sold_out_keys = [stock[i][0] for i in sold_out]
            db.executemany("INSERT INTO changes (key) VALUES (?)", [(k,) for k in sold_out_keys])
            sale = Sale(user_id, list(item_ids), timestamp, sold_out, sold_out_keys)
            if idempotency_key is not None:
                db.execute(
                    "INSERT INTO purchase_keys (key, sale, created_at) VALUES (?, ?, ?)",
                    (idempotency_key, sale.remembered(), now),
                )
        return sale

    def history(self, user_id: str, limit: int | None = None) -> list[Purchase]:
        rows = self._read(
            "SELECT item_id, timestamp FROM purchases WHERE user_id = ? "
            "ORDER BY timestamp DESC, seq DESC LIMIT ?",
            (user_id, -1 if limit is None else limit),
        )
        return [Purchase(item_id, timestamp) for item_id, timestamp in reversed(rows)]

    def purchases_and_embeddings(
        self, user_id: str, recent: int, model_version: str
    ) -> tuple[list[str], dict[str, np.ndarray]]:
        # One statement, so no write can come between the history and the embeddings.
        rows = self._read(
            "SELECT p.item_id, i.embedding, i.model_version FROM ("
            "  SELECT item_id, timestamp, seq, "
            "    ROW_NUMBER() OVER (ORDER BY timestamp DESC, seq DESC) AS age"
            "  FROM purchases WHERE user_id = ?"
            ") AS p LEFT JOIN items AS i ON i.id = p.item_id AND p.age <= ? "
            "ORDER BY p.timestamp, p.seq",
            (user_id, recent),
        )
        embeddings = {
            item_id: as_vector(blob)
            for item_id, blob, version in rows
            if blob is not None and version == model_version
        }
        return [row[0] for row in rows], embeddings

    def customers(self, limit: int) -> list[str]:
        # purchases_by_user is ordered by user_id: DISTINCT walks it and stops after `limit`.
        rows = self._read(
            "SELECT DISTINCT user_id FROM purchases ORDER BY user_id LIMIT ?", (limit,)
        )
        return [row[0] for row in rows]

    def catalogue(self, after: int = 0, limit: int | None = None) -> Catalogue:
        rows = self._read(
            "SELECT key, id, artist_id, embedding, model_version, updated_at FROM items "
            f"WHERE key > ? AND {FOR_SALE} ORDER BY key LIMIT ?",
            (after, -1 if limit is None else limit),
        )
        keys, ids, artists, blobs, versions, updated = list(zip(*rows, strict=True)) or [()] * 6
        return Catalogue(
            np.array(keys, np.int64),
            list(ids),
            list(artists),
            [as_vector(blob) for blob in blobs],
            list(versions),
            list(updated),
        )

    def best_sellers(self, limit: int) -> list[str]:
        rows = self._read(
            f"SELECT id FROM items WHERE {FOR_SALE} AND sold > 0 "
            "ORDER BY sold DESC, created_at DESC, key DESC LIMIT ?",
            (limit,),
        )
        return [row[0] for row in rows]

    def newest(self, limit: int) -> list[str]:
        rows = self._read(
            f"SELECT id FROM items WHERE {FOR_SALE} ORDER BY created_at DESC, key DESC LIMIT ?",
            (limit,),
        )
        return [row[0] for row in rows]

    def change_cursor(self) -> str:
        return str(self._read(NEWEST_CHANGE)[0][0])

    def changes_since(self, cursor: str, limit: int = 10_000) -> tuple[str, list[int]]:
        rows = self._read(
            "SELECT seq, key FROM changes WHERE seq > ? ORDER BY seq LIMIT ?", (int(cursor), limit)
        )
        if not rows:
            return cursor, []
        return str(rows[-1][0]), [key for _, key in rows]

    def counts(self) -> Counts:
        items, for_sale = self._read(
            f"SELECT COUNT(*), COALESCE(SUM({FOR_SALE}), 0) FROM items WHERE deleted = 0"
        )[0]
        users, purchases = self._read("SELECT COUNT(DISTINCT user_id), COUNT(*) FROM purchases")[0]
        return Counts(items=items, for_sale=for_sale, users=users, purchases=purchases)

    def ping(self) -> None:
        self._read("SELECT 1")

    def close(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.stop()
        with self._lock:
            self._db.close()
