"""Several service processes on one store, over real HTTP: in sync, and losing nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.service.helpers import SYNC_DEADLINE_S, LiveService, random_item


@pytest.fixture
def pair(store_url: str) -> Iterator[tuple[LiveService, LiveService]]:
    first = LiveService(store_url)
    try:
        second = LiveService(store_url)
    except Exception:
        first.stop()
        raise
    yield first, second
    first.stop()
    second.stop()


def recommended(service: LiveService, history: list[str], k: int = 50) -> list[str]:
    response = service.client.post("/recommend", json={"history": history, "k": k})
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def wait_until(condition, deadline_s: float = SYNC_DEADLINE_S) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > deadline_s:
            pytest.fail(f"not within {deadline_s} s")
        time.sleep(0.01)
    return time.monotonic() - started


def test_changes_through_one_process_reach_the_other(pair) -> None:
    first, second = pair
    catalogue = [random_item(f"w{i}", seed=i) for i in range(30)]
    assert first.client.post("/items", json={"items": catalogue}).status_code == 200
    wait_until(lambda: second.client.get("/readyz").json()["index_size"] == 30)

    new = random_item("fresh", seed=99)
    assert first.client.post("/items", json=new).status_code == 200
    wait_until(lambda: "fresh" in recommended(second, ["w0"]))

    sale = second.client.post("/purchases", json={"user_id": "u", "item_ids": ["fresh"]})
    assert sale.status_code == 201
    for _ in range(20):  # the first process must not offer it, not even once
        assert "fresh" not in recommended(first, ["w0"])
    assert first.client.get("/readyz").json()["index_size"] == 30

    assert second.client.delete("/items/w1").status_code == 200
    assert "w1" not in recommended(first, ["w0"])
    wait_until(lambda: first.client.get("/readyz").json()["index_size"] == 29)


def test_parallel_posts_purchases_and_recommends_lose_nothing(pair) -> None:
    first, second = pair
    base = [random_item(f"base{i}", seed=i) for i in range(20)]
    first.client.post("/items", json={"items": base})
    errors: list[str] = []
    bought: list[tuple[str, str]] = []

    def writer(service: LiveService, prefix: str) -> None:
        with httpx.Client(base_url=service.url, timeout=30) as http:
            for n in range(15):
                item = random_item(f"{prefix}{n}", seed=1000 + n)
                if http.post("/items", json=item).status_code != 200:
                    errors.append(f"post {prefix}{n}")
                sale = http.post("/purchases", json={"user_id": prefix, "item_ids": [item["id"]]})
                if sale.status_code != 201:
                    errors.append(f"purchase {prefix}{n}: {sale.text}")
                else:
                    bought.append((prefix, item["id"]))

    def reader(service: LiveService) -> None:
        with httpx.Client(base_url=service.url, timeout=30) as http:
            for _ in range(30):
                response = http.post("/recommend", json={"history": ["base0"], "k": 10})
                if response.status_code != 200:
                    errors.append(f"recommend: {response.text}")

    threads = [
        threading.Thread(target=writer, args=(first, "a")),
        threading.Thread(target=writer, args=(second, "b")),
        threading.Thread(target=writer, args=(second, "c")),
        threading.Thread(target=reader, args=(first,)),
        threading.Thread(target=reader, args=(second,)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(bought) == 45
    for prefix in "abc":
        history = first.client.get(f"/users/{prefix}/history").json()["purchases"]
        assert sorted(p["item_id"] for p in history) == sorted(f"{prefix}{n}" for n in range(15))
    for service in pair:
        wait_until(lambda s=service: s.client.get("/readyz").json()["index_size"] == 20)
