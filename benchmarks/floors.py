"""Where a recommendation's CPU goes: the service beside bare servers that do only part of its
work, on the same store, in one run.

Why: server CPU per `POST /recommend` is the service's cost figure (benchmarks/serve.py), and
the question after each cut is how much of it is the service's own and how much any server
must spend on this machine to answer the same request exactly. Each variant below is a real
uvicorn server (httptools, uvloop, one worker, Nagle off, as `python -m service` runs) started
by the same lifespan on the same SQLite file, so it holds the same catalogue index, model and
store; all but the last answer `POST /recommend` from a bare ASGI callable, with no FastAPI,
validation or middleware, and everything else (`/readyz`) from the real app:

- `http`: reads the body and answers a fixed 20-work answer: HTTP, the event loop and JSON.
- `search`: the same, answering with the exact search: the service's `ItemIndex.search` (top
  20, purchases excluded) of the customer's interest vectors, which were computed for every
  customer before the measured requests.
- `recommender`: the same, answering with the service's `Recommender.for_customer` (store
  read, user tower, search, answer).
- `service`: `python -m service` itself.

Each is driven one request at a time over one keep-alive connection (benchmarks/serve.py's
client: 1,000 customers with 1-5 purchases, k = 20) and its process tree's CPU read from /proc
over the measured requests. Rounds alternate the order of the variants, so that the machine's
drift falls alike on all; compare figures within one run.

    .venv/bin/python benchmarks/floors.py [--items 13297] [--requests 2000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import uvicorn
from serve import (
    MODEL_DIR,
    ROOT,
    K,
    Service,
    ingest,
    one_at_a_time,
    record_purchases,
    results_header,
    user_baskets,
    user_id,
    write_results,
)

from service.app import create_app
from service.config import Settings
from service.recommender import Filters

VARIANTS = ("http", "search", "recommender", "service")
Answer = Callable[[str], bytes]


def bare_server(variant: str, n_users: int) -> None:
    """Serve `variant` (one of VARIANTS but `service`) with the service's settings."""
    settings = Settings()
    app = create_app(settings)
    answers: list[Answer] = []  # built at the first request, once the lifespan has run

    async def bare(scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] != "/recommend":
            await app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        if not answers:
            answers.append(_answers(variant, app.state, n_users))
        payload = answers[0](orjson.loads(body)["user_id"])
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(payload)),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    config = uvicorn.Config(bare, host=settings.host, port=settings.port, log_level="info")
    sock = config.bind_socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    uvicorn.Server(config).run(sockets=[sock])


def _answers(variant: str, state: Any, n_users: int) -> Answer:
    """The variant's answer to a customer, as JSON of the service's answer's shape."""
    recommender, version = state.recommender, state.catalogue.serving.model.version

    def answer(user: str, hits: list[tuple[str, str, float]], used: int) -> bytes:
        items = [{"item_id": i, "artist_id": a, "score": s} for i, a, s in hits]
        return orjson.dumps(
            {
                "strategy": "personalized",
                "user_id": user,
                "model_version": version,
                "history_used": used,
                "items": items,
            }
        )

    if variant == "recommender":

        def recommend(user: str) -> bytes:
            result = recommender.for_customer(user, K, Filters())
            hits = [(r.item_id, r.artist_id, r.score) for r in result.items]
            return answer(user, hits, result.history_used)

        return recommend
    if variant == "http":
        fixed = [(f"item-{n:07d}", f"artist-{n:03d}", 1.0 - n / 100) for n in range(K)]
        return lambda user: answer(user, fixed, 1)
    serving = state.catalogue.serving
    customers = {}
    for n in range(n_users):
        history, found = state.store.purchases_and_embeddings(
            user_id(n), recommender.history_length, version
        )
        customers[user_id(n)] = (recommender._interests(serving.model, history, found)[0], history)
    index = serving.index

    def search(user: str) -> bytes:
        interests, history = customers[user]
        hits = index.search(interests, K, set(history))
        return answer(user, [(h.item_id, h.artist_id, h.score) for h in hits], len(history))

    return search


def measure(variant: str, database: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    command = (
        ("-m", "service")
        if variant == "service"
        else (str(Path(__file__).resolve()), "--serve", variant, "--users", str(args.users))
    )
    log = work / f"{variant}.log"
    with Service(database, 1, log, args.model_dir, command=command) as server:
        figures = one_at_a_time(server, args.users, args.requests, args.seed)
        figures["idle_cpu_cores"] = server.idle_cpu_share()
        figures["errors_logged"] = server.errors_logged()
    return figures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=13297, help="catalogue size N")
    parser.add_argument("--users", type=int, default=1000, help="customers with purchases")
    parser.add_argument("--requests", type=int, default=2000, help="requests timed per series")
    parser.add_argument("--rounds", type=int, default=2, help="series per variant, in turn")
    parser.add_argument("--seed", type=int, default=0, help="catalogue, baskets and request order")
    parser.add_argument(
        "--model-dir", type=Path, default=MODEL_DIR, help="the model served (default %(default)s)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "floors.json",
        help="JSON results (default benchmarks/results/floors.json)",
    )
    parser.add_argument("--serve", choices=VARIANTS[:-1], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.items <= K:
        parser.error(f"--items must be larger than k={K}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        bare_server(args.serve, args.users)
        return 0
    results: dict[str, Any] = {
        **results_header("floors", args, {"k": K, "variants": list(VARIANTS)}),
        "notes": [
            "Compare figures within one run only: the machine is shared and noisy.",
            "server_cpu_ms_per_request: user + system CPU of the server's process tree over"
            " the measured requests (one at a time, one keep-alive connection), divided by"
            " their number.",
        ],
        "series": {variant: [] for variant in VARIANTS},
    }
    with tempfile.TemporaryDirectory(prefix="curatornet-floors-") as tmp:
        work = Path(tmp)
        database = work / "catalogue.db"
        baskets = user_baskets(args.items, args.users, args.seed)
        print(f"... loading {args.items} works and {args.users} customers' purchases", flush=True)
        with Service(database, 1, work / "load.log", args.model_dir) as service:
            ingest(service, args.items, args.seed)
            asyncio.run(record_purchases(service.url, baskets, 8))
        for round_ in range(args.rounds):
            order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                print(f"... round {round_ + 1}: {variant}", flush=True)
                figures = measure(variant, database, args, work)
                results["series"][variant].append(figures)
    failed = print_table(results)
    write_results(results, args.out)
    print(f"\nwritten to {args.out}")
    if failed:
        print(f"error: {failed} requests failed or were not personalized", file=sys.stderr)
    return 1 if failed else 0


def print_table(results: dict[str, Any]) -> int:
    """The table of server CPU and p50 per variant, each round's; returns the failures."""
    series = results["series"]
    service = [s["server_cpu_ms_per_request"] for s in series["service"]]
    print(f"\n{'variant':<18} {'server CPU per request (ms)':<30} {'p50 (ms)':<22} share")
    failed = 0
    for variant, runs in series.items():
        cpu = [s["server_cpu_ms_per_request"] for s in runs]
        p50 = [s["p50_ms"] for s in runs]
        share = np.mean(cpu) / np.mean(service)
        print(
            f"{variant:<18} {' / '.join(f'{c:.3f}' for c in cpu):<30} "
            f"{' / '.join(f'{p:.2f}' for p in p50):<22} {share:.0%}"
        )
        failed += sum(s["errors"] + s["fallbacks"] for s in runs)
    return failed


if __name__ == "__main__":
    sys.exit(main())
