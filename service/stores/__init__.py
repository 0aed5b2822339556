"""Stores: the catalogue, stock, purchase histories and the change log, behind one interface."""

from __future__ import annotations

from service.stores.base import Store


def open_store(url: str) -> Store:
    """A store from its URL: `sqlite:///path.db` (embedded default) or `redis://host:port/db`."""
    if url.startswith("sqlite:///"):
        from service.stores.sqlite import SQLiteStore

        return SQLiteStore(url)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from service.stores.redis import RedisStore

        return RedisStore(url)
    raise ValueError(
        f"unsupported store URL {url!r}: use sqlite:///path.db or redis://host:port/db"
    )
