"""Soak: mixed traffic against two service processes on one Redis for a bounded time.

Why: faults and bad inputs are tests; what only a long run shows is whether the service keeps
its latency and its memory flat under steady traffic, and whether every acknowledged write is
in the store at the end. Loopback only: a redis-server (append-only file, `everysec`) and two
`python -m service` processes on this machine, driven by a few client threads that each pick,
per request, one process and one of: recommend (70 %: by a customer's id or a visitor's
history), upload a work (15 %: new or a replacement, from 1,000 ids) or buy one or two prints
(15 %, with an Idempotency-Key).

Every minute it prints requests, errors (5xx and broken connections), p50/p99 latency and each
process's RSS; at the end it compares the acknowledged uploads and purchases with what Redis
holds, and writes everything to benchmarks/results/soak.json.

    .venv/bin/python benchmarks/soak.py                  # 10 minutes
    .venv/bin/python benchmarks/soak.py --seconds 60     # a short run
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis
from durability import redis_server
from serve import FEATURE_DIM, MODEL_DIR, ROOT, Service

SEED_ITEMS = 2000
EDITION = 1000  # prints per work: purchases rarely sell one out
CUSTOMERS = 200
NEW_WORKS = 1000  # ids the uploads draw from
RSS_EVERY_S = 10.0


@dataclass
class Log:
    """What the clients saw, shared by their threads (appends are atomic under the GIL)."""

    started: float = field(default_factory=time.monotonic)
    requests: list[tuple[float, str, int, float]] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)
    units_bought: list[int] = field(default_factory=list)
    rss: list[tuple[float, float, float]] = field(default_factory=list)


def features(rng: np.random.Generator) -> list[float]:
    return np.round(np.abs(rng.normal(size=FEATURE_DIM)), 4).tolist()


def client(services: list[Service], seconds: float, seed: int, log: Log) -> None:
    rng, pick = np.random.default_rng(seed), random.Random(seed)
    clients = [httpx.Client(base_url=s.url, timeout=60) for s in services]
    deadline = log.started + seconds
    n = 0
    while time.monotonic() < deadline:
        http, roll, n = pick.choice(clients), pick.random(), n + 1
        works = [f"seed-{pick.randrange(SEED_ITEMS)}" for _ in range(pick.randint(1, 2))]
        headers: dict[str, str] = {}
        body: dict[str, Any]
        if roll < 0.70:
            kind, path = "recommend", "/recommend"
            by_user = pick.random() < 0.5
            body = {"user_id": f"c{pick.randrange(CUSTOMERS)}"} if by_user else {"history": works}
        elif roll < 0.85:
            # new works and replacements, from a bounded set: the catalogue (and the memory it
            # takes) stops growing once the set is stored, so RSS shows what else grows
            kind, path, work = "upload", "/items", f"new-{pick.randrange(NEW_WORKS)}"
            body = {"id": work, "artist_id": f"a{n % 50}", "features": features(rng)}
        else:
            kind, path = "purchase", "/purchases"
            body = {"user_id": f"c{pick.randrange(CUSTOMERS)}", "item_ids": works}
            headers = {"Idempotency-Key": str(uuid.uuid4())}
        before = time.monotonic()
        try:
            status = http.post(path, json=body, headers=headers).status_code
        except httpx.TransportError:
            status = 0
        log.requests.append((before - log.started, kind, status, time.monotonic() - before))
        if kind == "upload" and status == 200:
            log.uploaded.append(work)
        if kind == "purchase" and status == 201:
            log.units_bought.append(len(works))
    for http in clients:
        http.close()


def sample_rss(services: list[Service], seconds: float, log: Log) -> None:
    while time.monotonic() < log.started + seconds:
        rss = [s.rss_mib() for s in services]
        log.rss.append((time.monotonic() - log.started, rss[0], rss[1]))
        time.sleep(RSS_EVERY_S)


def per_minute(log: Log) -> list[dict[str, Any]]:
    minutes: dict[int, list[tuple[str, int, float]]] = defaultdict(list)
    for at, kind, status, seconds in log.requests:
        minutes[int(at // 60)].append((kind, status, seconds))
    rows = []
    for minute, requests in sorted(minutes.items()):
        latency = np.array([s for _, _, s in requests]) * 1000
        rss = [(a, b) for at, a, b in log.rss if int(at // 60) == minute]
        rows.append(
            {
                "minute": minute + 1,
                "requests": len(requests),
                "errors": sum(status == 0 or status >= 500 for _, status, _ in requests),
                "sold_out_409": sum(status == 409 for _, status, _ in requests),
                "p50_ms": round(float(np.percentile(latency, 50)), 1),
                "p99_ms": round(float(np.percentile(latency, 99)), 1),
                "rss_mib": [round(max(r[i] for r in rss), 1) for i in (0, 1)] if rss else None,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work, redis_server(Path(work), "everysec") as url:
        logs = Path(work)
        services = [Service(url, 1, logs / f"service-{n}.log", MODEL_DIR) for n in range(2)]
        try:
            rng = np.random.default_rng(0)
            seed = [
                {
                    "id": f"seed-{n}",
                    "artist_id": f"a{n % 50}",
                    "features": features(rng),
                    "edition_size": EDITION,
                }
                for n in range(SEED_ITEMS)
            ]
            for start in range(0, SEED_ITEMS, 500):
                batch = {"items": seed[start : start + 500]}
                services[0].client.post("/items", json=batch).raise_for_status()
            for customer in range(CUSTOMERS):
                sale = {"user_id": f"c{customer}", "item_ids": [f"seed-{customer}"]}
                services[1].client.post("/purchases", json=sale).raise_for_status()
            log = Log()
            threads = [
                threading.Thread(target=client, args=(services, args.seconds, n, log))
                for n in range(args.clients)
            ]
            threads.append(threading.Thread(target=sample_rss, args=(services, args.seconds, log)))
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            time.sleep(2)  # a sync interval or ten, for the followers to catch up
            store = redis.Redis.from_url(url)
            acknowledged = set(log.uploaded)
            uploaded_stored = sum(store.exists(f"curatornet:item:{i}") for i in acknowledged)
            purchases_stored = int(store.get("curatornet:purchase_count") or 0) - CUSTOMERS
            indexes = [s.index_size() for s in services]
            for_sale = int(store.zcard("curatornet:newest"))
            errors_logged = [line for s in services for line in s.errors_logged()]
        finally:
            for service in services:
                service.stop()
    rows = per_minute(log)
    for row in rows:
        print(row, flush=True)
    summary = {
        "seconds": args.seconds,
        "clients": args.clients,
        "requests": len(log.requests),
        "errors": sum(row["errors"] for row in rows),
        "uploads_acknowledged": len(log.uploaded),
        "distinct_works_uploaded": len(set(log.uploaded)),
        "distinct_works_stored": uploaded_stored,
        "purchase_units_acknowledged": sum(log.units_bought),
        "purchase_units_stored": purchases_stored,
        "index_sizes": indexes,
        "works_for_sale_in_redis": for_sale,
        "service_errors_logged": len(errors_logged),
    }
    print(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "minutes": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
