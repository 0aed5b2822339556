"""Readiness follows the store: a Redis server that goes away, or a change follower that
fails or falls behind, makes /readyz answer 503."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.follower import Follower
from service.stores.redis import PREFIX
from tests.service.conftest import start_redis
from tests.service.helpers import FEATURES_MODEL, eventually, random_item
from tests.service.test_api import post_items, running


def test_readyz_reports_an_unreachable_store(tmp_path: Path) -> None:
    server, port = start_redis(tmp_path)
    try:
        settings = Settings(model_dir=FEATURES_MODEL, store_url=f"redis://127.0.0.1:{port}/0")
        with TestClient(create_app(settings)) as app:
            assert app.get("/readyz").json()["status"] == "ready"
            server.terminate()
            server.wait(timeout=10)
            response = app.get("/readyz")
            assert response.status_code == 503
            assert response.json()["status"] == "unavailable"
            assert app.get("/healthz").status_code == 200  # alive, just not ready
    finally:
        server.kill()
        server.wait(timeout=10)


def test_a_follower_behind_the_trimmed_stream_rebuilds(
    redis_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis trims the change stream (MAXLEN): a process whose cursor fell out of it must
    notice the gap and rebuild from the store, not serve a stale index until restarted. The
    reader's follower is stopped while the works are posted and the stream trimmed, so that
    no tick between the two can read the entries: the gap is certain."""
    url = f"{redis_server}/62"
    redis.Redis.from_url(url).flushdb()
    with running(url) as writer, running(url) as reader:
        post_items(writer, [random_item("first")])
        assert eventually(lambda: reader.get("/readyz").json()["index_size"] == 1)
        state = reader.app.state
        state.follower.stop()
        post_items(writer, [random_item(f"w{n}", seed=n) for n in range(5)])
        redis.Redis.from_url(url).xtrim(f"{PREFIX}changes", maxlen=0)
        state.follower = Follower(state.catalogue, state.rollouts, interval=0.2)
        state.follower.start()
        try:
            assert eventually(lambda: reader.get("/readyz").json()["index_size"] == 6)
            assert "the change stream was trimmed past" in caplog.text
            assert "rebuilding the index from the store" in caplog.text
            assert reader.get("/items/w4/similar").status_code == 200
        finally:
            state.follower.stop()


def test_a_process_behind_the_trimmed_stream_never_offers_a_sold_work(redis_server: str) -> None:
    """A process that cannot catch up with the change log before searching (here: trimmed
    past its cursor) confirms each hit with the store instead. Its follower is stopped, so
    that confirmation alone stands between the work sold through the other process and the
    answer."""
    url = f"{redis_server}/60"
    redis.Redis.from_url(url).flushdb()
    with running(url) as writer, running(url) as reader:
        post_items(writer, [random_item(f"w{n}", seed=n) for n in range(10)])
        assert eventually(lambda: reader.get("/readyz").json()["index_size"] == 10)
        reader.app.state.follower.stop()

        def offered() -> list[str]:
            answer = reader.post("/recommend", json={"history": ["w0"], "k": 9})
            assert answer.status_code == 200, answer.text
            return [item["item_id"] for item in answer.json()["items"]]

        first = offered()[0]
        sale = writer.post("/purchases", json={"user_id": "u", "item_ids": [first]})
        assert sale.status_code == 201
        redis.Redis.from_url(url).xtrim(f"{PREFIX}changes", maxlen=0)
        assert reader.app.state.catalogue.catch_up(reader.app.state.catalogue.serving) is False
        now = offered()
        assert first not in now
        assert len(now) == 8  # the other eight works, none lost with the stale one


def test_readyz_reports_a_failing_follower(redis_server: str) -> None:
    """A change no follower can apply (an embedding of 3 bytes) makes every process's
    follower fail each tick: /readyz says so until the record is mended."""
    url = f"{redis_server}/61"
    redis.Redis.from_url(url).flushdb()
    with running(url) as writer, running(url) as reader:
        post_items(writer, [random_item("fine")])
        assert eventually(lambda: reader.get("/readyz").status_code == 200)
        raw = redis.Redis.from_url(url)
        item = f"{PREFIX}item:fine"
        embedding, key = raw.hmget(item, "embedding", "key")
        raw.hset(item, mapping={"embedding": b"abc", "updated_at": "1"})
        raw.xadd(f"{PREFIX}changes", {"key": key})
        assert eventually(lambda: reader.get("/readyz").status_code == 503)
        behind = reader.get("/readyz").json()
        assert behind["status"] == "behind"
        assert "ValueError" in behind["follower"]
        raw.hset(item, "embedding", embedding)
        assert eventually(lambda: reader.get("/readyz").status_code == 200)
        assert reader.get("/items/fine/similar").status_code == 200
