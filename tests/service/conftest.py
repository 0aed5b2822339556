"""Real backing services for the service tests: a redis-server on a free port, SQLite files."""

from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(
    directory: Path, port: int | None = None, appendfsync: str | None = None
) -> tuple[subprocess.Popen, int]:
    """A real redis-server answering PING: on a free port unless given one (a restart), and
    without persistence unless `appendfsync` turns its append-only file on."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (.ci/run installs it with apt-get)")
    port = port or free_port()
    aof = ["--appendonly", "yes", "--appendfsync", appendfsync] if appendfsync else []
    arguments = ["--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    arguments += aof or ["--appendonly", "no"]
    arguments += ["--dir", str(directory), "--databases", "64"]
    process = subprocess.Popen(
        [binary, *arguments], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            return process, port
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server for the whole session; tests use their own database numbers."""
    process, port = start_redis(tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


# Tests run one at a time, so databases are reused in turn, each flushed before use.
_next_database = itertools.cycle(range(1, 64))


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store of each kind: a new SQLite file, or an unused Redis database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    server = request.getfixturevalue("redis_server")
    database = next(_next_database)
    redis.Redis.from_url(f"{server}/{database}").flushdb()
    return f"{server}/{database}"


@pytest.fixture
def second_store_url(request: pytest.FixtureRequest, store_url: str, tmp_path: Path) -> str:
    """Another fresh store of the kind `store_url` is: two ways of filling a store compared."""
    if store_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'second.db'}"
    server = request.getfixturevalue("redis_server")
    database = next(_next_database)
    redis.Redis.from_url(f"{server}/{database}").flushdb()
    return f"{server}/{database}"
