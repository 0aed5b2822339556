"""The built index kept on disk between starts, so that a million works need not be re-indexed.

Building an HNSW index of a million works takes minutes; reading one back takes seconds. A
snapshot is one file: a header naming what it reflects (the store, by a random id kept in the
store's settings; the model; the index kind and graph degree; the change-log cursor it is
level with), the index (`ItemIndex.write`), and a CRC-32 of the index's bytes. It is trusted
only when all of that matches the process loading it and the cursor is not ahead of the
store's; the changes logged after its cursor are then replayed. Anything else (a missing,
truncated or corrupt file, another store or a wiped and refilled one, another model, kind or
degree, a cursor the store never reached, a change log trimmed past it) means a rebuild from
the store, which is always right.

Where: beside a SQLite store's file (`curatornet.db.index`) unless CURATORNET_INDEX_SNAPSHOT_DIR
names a directory, where it is named after the store's id; a Redis store has none unless that
directory is set (the service may run on hosts with no lasting disk of their own). Written
atomically (a temporary file, synced, then renamed over the old one) under an exclusive
lock file: with several processes serving one store, one writes while the others skip, and
whichever snapshot is on disk is a valid one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import struct
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from service.config import Settings
from service.index import ItemIndex
from service.stores.base import Store, cursor_position
from service.stores.sqlite import path_from_url

log = logging.getLogger(__name__)

MAGIC = b"curatornet index snapshot\n"
FORMAT = 1
STORE_ID = "store_id"  # the store setting that tells one store from another
LENGTH = struct.Struct("<Q")
CHECKSUM = struct.Struct("<I")


class SnapshotRejected(Exception):
    """The snapshot cannot stand for the index wanted; the message says why. `usual`: for
    an everyday reason (none yet, or of another model or index settings, as after a
    roll-out), not a snapshot that should have served and did not."""

    def __init__(self, why: str, usual: bool = False) -> None:
        super().__init__(why)
        self.usual = usual


def store_id(store: Store) -> str:
    """The store's identity: a random id in its settings, made by the first process that asks.
    A wiped store (a new SQLite file, a flushed Redis database) has lost it and gets a new one,
    so no snapshot of its former contents is trusted. Two processes racing to make it both
    read back the one that won (a snapshot written under the other is merely not trusted)."""
    found = store.get_setting(STORE_ID)
    if found:
        return found
    store.set_setting(STORE_ID, uuid.uuid4().hex)
    return store.get_setting(STORE_ID) or ""


@dataclass(frozen=True)
class Header:
    """What a snapshot reflects; `identity` is what must match for it to be trusted."""

    store_id: str
    model_version: str
    kind: str
    dim: int
    hnsw_m: int | None  # None for the flat index
    cursor: str
    items: int

    @classmethod
    def of(cls, index: ItemIndex, store: str, model_version: str, cursor: str) -> Header:
        degree = index.hnsw_m if index.kind == "hnsw" else None
        return cls(store, model_version, index.kind, index.dim, degree, cursor, len(index))

    def identity(self) -> tuple[str, str, str, int, int | None]:
        return (self.store_id, self.model_version, self.kind, self.dim, self.hnsw_m)

    def differences(self, wanted: Header) -> list[str]:
        """Why this snapshot cannot stand for `wanted`'s index, in words (empty: it can)."""
        found = []
        if self.store_id != wanted.store_id:
            found.append("of another store (or of this one before it was wiped)")
        if self.model_version != wanted.model_version:
            found.append(f"of model {self.model_version}, not {wanted.model_version}")
        if (self.kind, self.dim, self.hnsw_m) != (wanted.kind, wanted.dim, wanted.hnsw_m):
            found.append(
                f"a {self._shape()} index, not a {wanted._shape()} one (index kind or "
                "CURATORNET_HNSW_M changed)"
            )
        return found

    def _shape(self) -> str:
        degree = f", M={self.hnsw_m}" if self.hnsw_m is not None else ""
        return f"{self.kind} ({self.dim}-d{degree})"


class _Checksummed:
    """A binary stream that keeps the CRC-32 of every byte read from or written to it."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream, self.crc = stream, 0

    def write(self, data: bytes) -> int:
        self.crc = zlib.crc32(data, self.crc)
        return self._stream.write(data)

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.crc = zlib.crc32(data, self.crc)
        return data


class IndexSnapshots:
    """The snapshot file of one store's index: `load` it, `save` it."""

    def __init__(self, path: Path, store: str) -> None:
        self.path, self.store_id = path, store
        # Set when `load` refused the file: its header may still look level with what this
        # process would save (a damaged body, a cursor ahead), but it is to be replaced.
        self._refused = False

    @classmethod
    def for_store(cls, settings: Settings, store: Store) -> IndexSnapshots | None:
        """Where this store's snapshot lives under `settings` (see the module docstring);
        None when snapshots are off, or for a store with no place for one."""
        if not settings.index_snapshots:
            return None
        if settings.index_snapshot_dir is not None:
            identity = store_id(store)
            return cls(settings.index_snapshot_dir / f"curatornet-{identity}.index", identity)
        if not settings.store_url.startswith("sqlite:///"):
            return None
        database = path_from_url(settings.store_url)
        if database == ":memory:":
            return None
        return cls(Path(database).with_name(Path(database).name + ".index"), store_id(store))

    def load(
        self, empty: ItemIndex, model_version: str, store_cursor: str
    ) -> tuple[ItemIndex, str]:
        """The index for `model_version` shaped as `empty` is, and the cursor it is level
        with; SnapshotRejected (saying why) when the snapshot cannot stand for it."""
        try:
            return self._load(empty, model_version, store_cursor)
        except SnapshotRejected:
            self._refused = True
            raise

    def _load(
        self, empty: ItemIndex, model_version: str, store_cursor: str
    ) -> tuple[ItemIndex, str]:
        wanted = Header.of(empty, self.store_id, model_version, store_cursor)
        try:
            with self.path.open("rb") as file:
                header = _read_header(file)
                problems = header.differences(wanted)
                if problems:
                    usual = header.store_id == self.store_id
                    raise SnapshotRejected("it is " + "; ".join(problems), usual)
                if cursor_position(header.cursor) > cursor_position(store_cursor):
                    raise SnapshotRejected(
                        f"its change-log cursor {header.cursor} is ahead of the store's "
                        f"{store_cursor} (a store restored from an older copy?)"
                    )
                body = _Checksummed(file)
                index = ItemIndex.read(body, empty)
                (expected,) = CHECKSUM.unpack(_exactly(file, CHECKSUM.size))
                if body.crc != expected or file.read(1):
                    raise SnapshotRejected("it is corrupt (its checksum does not match)")
        except FileNotFoundError:
            raise SnapshotRejected("there is none", usual=True) from None
        except SnapshotRejected:
            raise
        except Exception as error:  # whatever a damaged file makes numpy or FAISS raise
            raise SnapshotRejected(f"it cannot be read ({type(error).__name__}: {error})") from None
        return index, header.cursor

    def save(self, index: ItemIndex, model_version: str, cursor: str) -> bool:
        """Write `index`, level with `cursor`, as the snapshot; False when skipped, as another
        process is writing one or one as recent is there already. Never raises: a snapshot
        that cannot be written costs the next start a rebuild, not this process its work."""
        started = time.perf_counter()
        header = Header.of(index, self.store_id, model_version, cursor)
        try:
            with self._exclusive() as mine:
                if not mine or (not self._refused and self._holds(header)):
                    return False
                for leftover in self.path.parent.glob(f"{self.path.name}.*.tmp"):
                    leftover.unlink(missing_ok=True)  # of a writer that died: the lock is ours
                temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
                try:
                    with temporary.open("wb") as file:
                        _write(file, header, index)
                        file.flush()
                        os.fsync(file.fileno())
                    os.replace(temporary, self.path)
                    self._refused = False
                finally:
                    temporary.unlink(missing_ok=True)
        except OSError as error:
            log.warning("cannot write the index snapshot %s: %s", self.path, error)
            return False
        log.info(
            "index snapshot written to %s (%d items, cursor %s) in %.2f s",
            self.path,
            header.items,
            cursor,
            time.perf_counter() - started,
        )
        return True

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[bool]:
        """Holds the snapshot's lock file if no other process does; yields whether it does."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.with_name(self.path.name + ".lock").open("ab") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _holds(self, header: Header) -> bool:
        """Whether the snapshot on disk is of the same index and at least as recent."""
        try:
            with self.path.open("rb") as file:
                found = _read_header(file)
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return found.identity() == header.identity() and cursor_position(
            found.cursor
        ) >= cursor_position(header.cursor)


def _write(file: BinaryIO, header: Header, index: ItemIndex) -> None:
    described = json.dumps({"format": FORMAT, **header.__dict__}).encode()
    file.write(MAGIC + LENGTH.pack(len(described)) + described)
    body = _Checksummed(file)
    index.write(body)
    file.write(CHECKSUM.pack(body.crc))


def _read_header(file: BinaryIO) -> Header:
    if _exactly(file, len(MAGIC)) != MAGIC:
        raise ValueError("not an index snapshot")
    (length,) = LENGTH.unpack(_exactly(file, LENGTH.size))
    described: dict[str, Any] = json.loads(_exactly(file, length))
    if described.pop("format") != FORMAT:
        raise ValueError("written by another version of the service")
    return Header(**described)


def _exactly(file: BinaryIO, size: int) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise EOFError("the file ends early")
    return data
