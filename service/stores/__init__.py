"""Stores: the catalogue, stock, purchase histories and the change log, behind one interface."""

from __future__ import annotations

from service.stores import redis as redis_store
from service.stores import sqlite as sqlite_store
from service.stores.base import Store
from service.stores.redis import RedisStore
from service.stores.sqlite import SQLiteStore

# The exception classes a store's outage is raised as. Each is answered 503 with Retry-After
# when `is_outage` says so, so a client waits and retries (a write that answered 503 either
# happened once or not at all; a purchase retried with its Idempotency-Key is applied once
# either way); anything else of these classes is a defect, answered 500.
OUTAGE_CLASSES: tuple[type[Exception], ...] = (*sqlite_store.OUTAGES, *redis_store.OUTAGES)


def is_outage(error: Exception) -> bool:
    """Whether a store cannot answer now but will: Redis down, restarting, loading, read-only
    or out of memory; SQLite locked by another process beyond its busy timeout."""
    return redis_store.is_outage(error) or sqlite_store.is_outage(error)


def open_store(url: str, sqlite_synchronous: str = "NORMAL") -> Store:
    """A store from its URL: `sqlite:///path.db` (embedded default) or `redis://host:port/db`.
    `sqlite_synchronous` is SQLite's durability setting (README: Durability)."""
    if url.startswith("sqlite:///"):
        return SQLiteStore(url, sqlite_synchronous)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url)
    raise ValueError(
        f"unsupported store URL {url!r}: use sqlite:///path.db or redis://host:port/db"
    )
