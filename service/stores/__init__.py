"""Stores: the catalogue, stock, purchase histories and the change log, behind one interface."""

from __future__ import annotations

import sqlite3

import redis

from service.stores.base import Store

# What a store raises while it cannot answer: Redis down, restarting or loading its data,
# SQLite locked by another process beyond its timeout. Answered 503 with Retry-After, so a
# client waits and retries (a write that answered 503 either happened once or not at all;
# a purchase retried with its Idempotency-Key is applied once either way).
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    sqlite3.OperationalError,
)


def open_store(url: str, sqlite_synchronous: str = "NORMAL") -> Store:
    """A store from its URL: `sqlite:///path.db` (embedded default) or `redis://host:port/db`.
    `sqlite_synchronous` is SQLite's durability setting (README: Durability)."""
    if url.startswith("sqlite:///"):
        from service.stores.sqlite import SQLiteStore

        return SQLiteStore(url, sqlite_synchronous)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from service.stores.redis import RedisStore

        return RedisStore(url)
    raise ValueError(
        f"unsupported store URL {url!r}: use sqlite:///path.db or redis://host:port/db"
    )
