"""Durability's price: purchases per second and their latency with each store's default
setting (survives a crash of the process or of Redis, can lose the last second of acknowledged
writes to a power loss) and with its strict one (every acknowledged write is on disk).

Redis runs as a real redis-server with its append-only file (`appendfsync everysec`, then
`always`); SQLite in WAL mode (`synchronous=NORMAL`, then `FULL`). Each store gets the same
catalogue, then the same purchases one at a time, as the service records them (one script or
transaction each). The figures depend on the disk under --dir: measure where the data lives.

    .venv/bin/python benchmarks/durability.py                 # 2000 purchases per setting
    .venv/bin/python benchmarks/durability.py --purchases 500 --dir /var/lib/curatornet
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import numpy as np
import redis

from service.stores.base import NewItem, Store
from service.stores.redis import RedisStore
from service.stores.sqlite import SQLiteStore

ITEMS = 100
FEATURE_DIM = 2048
EMBEDDING_DIM = 65


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def redis_server(directory: Path, appendfsync: str) -> Iterator[str]:
    """A real redis-server with its append-only file in `directory`; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    arguments = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir"]
    arguments += [str(directory), "--appendonly", "yes", "--appendfsync", appendfsync]
    server = subprocess.Popen([binary, *arguments], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis(port=port).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextmanager
def redis_store(directory: Path, appendfsync: str) -> Iterator[Store]:
    with redis_server(directory, appendfsync) as url:
        store = RedisStore(url)
        yield store
        store.close()


@contextmanager
def sqlite_store(directory: Path, synchronous: str) -> Iterator[Store]:
    store = SQLiteStore(f"sqlite:///{directory / 'store.db'}", synchronous)
    yield store
    store.close()


def measure(store: Store, purchases: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    store.upsert_items(
        [
            NewItem(
                f"w{n}",
                "artist",
                rng.random(FEATURE_DIM, np.float32),
                rng.random(EMBEDDING_DIM, np.float32),
                edition_size=1_000_000,
                stock=None,
            )
            for n in range(ITEMS)
        ]
    )
    latencies = []
    started = time.perf_counter()
    for n in range(purchases):
        before = time.perf_counter()
        store.record_purchase(f"u{n % 50}", [f"w{n % ITEMS}"], time.time())
        latencies.append(time.perf_counter() - before)
    seconds = time.perf_counter() - started
    milliseconds = np.array(latencies) * 1000
    return {
        "purchases_per_s": round(purchases / seconds, 1),
        "p50_ms": round(float(np.percentile(milliseconds, 50)), 3),
        "p99_ms": round(float(np.percentile(milliseconds, 99)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--purchases", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    settings: list[tuple[str, Callable[[Path], AbstractContextManager[Store]]]] = [
        ("redis appendfsync everysec", lambda d: redis_store(d, "everysec")),
        ("redis appendfsync always", lambda d: redis_store(d, "always")),
        ("sqlite synchronous=NORMAL", lambda d: sqlite_store(d, "NORMAL")),
        ("sqlite synchronous=FULL", lambda d: sqlite_store(d, "FULL")),
    ]
    results = {}
    for name, opened in settings:
        with (
            tempfile.TemporaryDirectory(dir=args.dir) as directory,
            opened(Path(directory)) as store,
        ):
            results[name] = measure(store, args.purchases)
        print(name, results[name], flush=True)
    print(json.dumps({"purchases": args.purchases, "dir": str(args.dir), "results": results}))


if __name__ == "__main__":
    main()
