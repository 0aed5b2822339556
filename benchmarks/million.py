"""A million artworks on one replica: HNSW recall, latency and CPU per request, start-up with and
without the index snapshot, memory per worker, and the bytes each artwork costs the stores.

Why: a catalogue the size of the largest art marketplaces must start, fit and answer on one
replica, and only a run of the real thing at that size says whether it does. Performance is
never a timed test; this script prints the figures and writes them as JSON.

The works are the synthetic market's (`curatornet.synthetic.catalogue_batches` at the scale
that gives N works: its artists, styles and feature map, so the catalogue is shaped like a
market, not like noise), 2048-d features generated in this process and written to a SQLite
store by the bulk path, `python -m service load -` reading them from its standard input (which
embeds them with models/synthetic-2048; not over HTTP), with customers of 1 to 5 purchases
each (editions large enough that nothing sells out). Then:

1. exact answers, in this process: each sampled customer's top 20 by the served rule (the
   user tower over the stored embeddings of their purchases, an item's score its best inner
   product with the interests, purchases left out), over every work; and, once the service
   has written its snapshot, that snapshot loaded here and the HNSW search alone timed, on
   the service's search threads, for the same customers, so a request's latency splits into
   the search and the rest;
2. `python -m service` with CURATORNET_INDEX_KIND=hnsw and no snapshot on disk: time to
   /readyz (the rebuild from the store, and the snapshot it then writes), RSS; the sampled
   customers' POST /recommend one at a time on one keep-alive connection: latency, server CPU
   per request (utime + stime of the service's processes, from /proc, over the series), and
   recall@20 of its answers against the exact ones; then a clean shutdown;
3. the service again for each --ef-search, now starting from the snapshot (efSearch is a
   search setting, not part of the snapshot's identity): time to /readyz, RSS, the same series;
   then after --replay works were loaded again (new features, the same ids) by another
   process, a start that replays those changes after its snapshot; and with --workers > 1,
   that many workers starting from the snapshot at once, RSS per worker;
4. a redis-server of its own holding --redis-items of the same works, loaded the same way:
   INFO used_memory per work.

    .venv/bin/python benchmarks/million.py --quick   # smoke run: 20,000 works
    .venv/bin/python benchmarks/million.py           # 1,000,000 works (a quarter of an hour)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import redis
import serve
from durability import redis_server
from serve import (
    MODEL_DIR,
    ROOT,
    Service,
    numbers,
    percentiles,
    process_tree,
    results_header,
    rss_mib,
    write_results,
)

from curatornet.model_loader import LoadedModel, load_model
from curatornet.synthetic import MarketConfig, catalogue_batches
from service.config import Settings
from service.index import ItemIndex
from service.snapshot import IndexSnapshots
from service.stores import open_store
from service.stores.base import Store

K = 20
BATCH = 10_000  # works generated at a time and handed to the loader
EDITION = 1_000_000  # prints per work (the most a work may have): no purchase sells one out
WARM_REQUESTS = 20
# service/app.py's start-up line after loading a snapshot.
REPLAYED_LOG = re.compile(r"loaded from \S+ with \d+ items, (\d+) changes replayed")
# service/snapshot.py's line after writing one.
SNAPSHOT_LOG = re.compile(
    r"index snapshot written to \S+ \((\d+) items, cursor \S+\) in ([\d.]+) s"
)


def item_id(row: int) -> str:
    return f"work-{row:07d}"


def user_id(user: int) -> str:
    return f"customer-{user:05d}"


def ndjson(n_items: int, seed: int) -> Iterator[bytes]:
    """The first `n_items` works of a market scaled to hold them, as `python -m service load`
    reads them (one work per line, features as base64 float32), a batch of lines at a time."""
    market = MarketConfig()
    config = dataclasses.replace(market.scaled(n_items / market.n_items), n_items=n_items)
    start = 0
    for artists, features in catalogue_batches(config, seed, BATCH):
        encoded = [base64.b64encode(row.tobytes()).decode() for row in features]
        yield "".join(
            f'{{"id":"{item_id(start + n)}","artist_id":"artist-{artist:05d}",'
            f'"edition_size":{EDITION},"features_b64":"{vector}"}}\n'
            for n, (artist, vector) in enumerate(zip(artists.tolist(), encoded, strict=True))
        ).encode()
        start += len(features)


def bulk_load(url: str, n_items: int, seed: int, log: Path) -> dict[str, Any]:
    """`python -m service load -` into the store at `url` (the bulk path, which embeds them
    too), the works' lines written to its standard input as they are generated."""
    environment = {
        **os.environ,
        "CURATORNET_STORE_URL": url,
        "CURATORNET_MODEL_DIR": str(MODEL_DIR),
    }
    began = time.perf_counter()
    with log.open("w") as output:
        loader = subprocess.Popen(
            [sys.executable, "-m", "service", "load", "-"],
            cwd=ROOT,
            env=environment,
            stdin=subprocess.PIPE,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        assert loader.stdin is not None
        try:
            for lines in ndjson(n_items, seed):
                loader.stdin.write(lines)
        finally:
            loader.stdin.close()
            loader.wait()
    seconds = time.perf_counter() - began
    said = log.read_text().strip().splitlines()
    if loader.returncode != 0:
        raise RuntimeError("python -m service load failed:\n" + "\n".join(said[-20:]))
    return {
        "works": n_items,
        "seconds": seconds,
        "works_per_s": n_items / seconds,
        "said": said[-1],
    }


def stored_embeddings(store: Store, n_items: int, dim: int) -> np.ndarray:
    """Every work's embedding as the store holds it, by row (work-0000123 is row 123): the
    very vectors the service indexes."""
    embeddings = np.empty((n_items, dim), np.float32)
    after = 0
    while (page := store.catalogue(after, 50_000)).item_ids:
        rows = [int(work.removeprefix("work-")) for work in page.item_ids]
        embeddings[rows] = np.stack(page.embeddings)
        after = int(page.keys[-1])
    return embeddings


def customers(store: Store, n_items: int, n_users: int, seed: int) -> list[list[int]]:
    """One basket of 1 to 5 distinct works per customer, recorded through the store."""
    rng = np.random.default_rng([seed, 1])
    baskets = []
    for user in range(n_users):
        basket = rng.choice(n_items, int(rng.integers(1, 6)), replace=False).tolist()
        store.record_purchase(user_id(user), [item_id(row) for row in basket], 1.7e9)
        baskets.append(basket)
    return baskets


def exact_answers(
    model: LoadedModel, embeddings: np.ndarray, baskets: list[list[int]]
) -> tuple[list[list[str]], list[np.ndarray]]:
    """Each customer's exact top K over every work, as the service ranks (purchases left out),
    and the customer's interests it ranks by."""
    answers, queries = [], []
    for basket in baskets:
        history = embeddings[basket][None]
        interests = model.embed_users(history, np.ones(history.shape[:2], np.float32))[0]
        scores = (embeddings @ interests.T).max(axis=1)
        scores[basket] = -np.inf
        top = np.argpartition(-scores, K)[:K]
        answers.append([item_id(row) for row in top[np.argsort(-scores[top])]])
        queries.append(interests)
    return answers, queries


def search_times(
    database: Path,
    model: LoadedModel,
    queries: list[np.ndarray],
    baskets: list[list[int]],
    efs: list[int],
    threads: list[int],
) -> dict[str, Any]:
    """The HNSW search alone, in this process, for the same customers: the snapshot the
    service wrote loaded here, each customer's interests searched for the top K with their
    purchases left out, as the service searches, for each efSearch and search thread count.
    What a request costs beside it is the service's own (HTTP, the user tower, the store)."""
    settings = Settings(store_url=f"sqlite:///{database}")
    store = open_store(settings.store_url)
    try:
        snapshots = IndexSnapshots.for_store(settings, store)
        assert snapshots is not None
        empty = ItemIndex(
            model.embedding_dim,
            "hnsw",
            settings.hnsw_m,
            efs[0],
            hnsw_search_threads=threads[0],
        )
        began = time.perf_counter()
        index, _ = snapshots.load(empty, model.version, store.change_cursor())
        loaded = time.perf_counter() - began
    finally:
        store.close()
    figures: dict[str, Any] = {"snapshot_load_s": loaded, "searches": []}
    for ef in efs:
        for count in threads:
            index.hnsw_ef_search, index.hnsw_search_threads = ef, count
            seconds = []
            cpu_before = time.process_time()
            for interests, basket in zip(queries, baskets, strict=True):
                excluded = {item_id(row) for row in basket}
                began = time.perf_counter()
                index.search(interests, K, excluded)
                seconds.append(time.perf_counter() - began)
            cpu_ms = 1000 * (time.process_time() - cpu_before) / len(queries)
            figures["searches"].append(
                {"ef_search": ef, "threads": count, **percentiles(seconds), "cpu_ms": cpu_ms}
            )
    return figures


def peak_rss_mib(pid: int) -> float:
    """The most memory the process has held at once (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def series(service: Service, exact: list[list[str]]) -> dict[str, Any]:
    """Every sampled customer's POST /recommend, one at a time: latency, server CPU per
    request, and recall@K against the exact answers."""
    bodies = [{"user_id": user_id(user), "k": K} for user in range(len(exact))]
    for body in bodies[:WARM_REQUESTS]:
        service.client.post("/recommend", json=body)
    latencies, recalls, failures = [], [], 0
    cpu_before = service.cpu_seconds()
    for body, expected in zip(bodies, exact, strict=True):
        began = time.perf_counter()
        response = service.client.post("/recommend", json=body)
        latencies.append(time.perf_counter() - began)
        answer = response.json() if response.status_code == 200 else {}
        if answer.get("strategy") != "personalized":
            failures += 1
            continue
        found = {item["item_id"] for item in answer["items"]}
        recalls.append(len(found & set(expected)) / K)
    cpu = service.cpu_seconds() - cpu_before
    return {
        "requests": len(bodies),
        **percentiles(latencies),
        "server_cpu_ms_per_request": 1000 * cpu / len(bodies),
        "recall_at_20": float(np.mean(recalls)) if recalls else None,
        "recall_at_20_min": float(np.min(recalls)) if recalls else None,
        "failures": failures,
    }


@contextlib.contextmanager
def environment(**variables: str) -> Iterator[None]:
    """CURATORNET_* settings for the services started inside (Service copies os.environ)."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def started(service: Service) -> dict[str, Any]:
    """Start-up figures and memory of a service that just became ready."""
    log = service.log.read_text()
    workers = [
        pid  # uvicorn's supervisor and multiprocessing's resource tracker hold no index
        for pid in process_tree(service.process.pid)
        if service.workers == 1 or b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    written = SNAPSHOT_LOG.findall(log)
    replayed = REPLAYED_LOG.findall(log)
    return {
        "ready_s": service.ready_s,
        "all_workers_started_s": service.all_workers_started_s,
        "loaded_from_snapshot": "loaded from" in log,
        "changes_replayed": [int(count) for count in replayed],
        "rebuild_logged": service.rebuilds_logged(),
        "snapshot_written_s": [float(seconds) for _, seconds in written],
        "index_size": service.index_size(),
        "rss_mib_per_worker": [rss_mib([pid]) for pid in workers],
        "peak_rss_mib_per_worker": [peak_rss_mib(pid) for pid in workers],
        "errors_logged": service.errors_logged(),
    }


def serve_once(
    database: Path,
    log: Path,
    workers: int,
    ef_search: int,
    threads: int,
    exact: list[list[str]] | None,
) -> dict[str, Any]:
    with environment(
        CURATORNET_HNSW_EF_SEARCH=str(ef_search), CURATORNET_HNSW_SEARCH_THREADS=str(threads)
    ):
        service = Service(database, workers, log, MODEL_DIR)
    try:
        run = {
            "workers": workers,
            "ef_search": ef_search,
            "search_threads": threads,
            **started(service),
        }
        if exact is not None:
            run["recommend"] = series(service, exact)
    finally:
        began = time.perf_counter()
        service.stop()
    run["shutdown_s"] = time.perf_counter() - began
    return run


def redis_bytes(n_items: int, seed: int, work: Path) -> dict[str, Any]:
    """Redis's memory per work for the first `n_items` works, loaded by the bulk path
    (append-only file on, as deployed)."""
    with redis_server(work, "everysec") as url:
        client = redis.Redis.from_url(url)
        empty = client.info("memory")["used_memory"]
        loaded = bulk_load(url, n_items, seed, work / "redis-load.log")
        used = client.info("memory")["used_memory"] - empty
        client.close()
    return {
        "items": n_items,
        "used_memory_bytes": used,
        "bytes_per_work": used / n_items,
        "load": loaded,
    }


def measure(args: argparse.Namespace, model: LoadedModel, work: Path, results: dict) -> None:
    """Every phase (see the module docstring), its figures into `results` as they come."""
    database = work / "store.db"
    url = f"sqlite:///{database}"
    print(f"... {args.items:,} works through python -m service load", flush=True)
    results["load"] = bulk_load(url, args.items, args.seed, work / "load.log")
    store = open_store(url)
    try:
        embeddings = stored_embeddings(store, args.items, model.embedding_dim)
        baskets = customers(store, args.items, args.users, args.seed)
    finally:
        store.close()
    sizes = {path.name: path.stat().st_size for path in work.glob("store.db*")}
    results["sqlite"] = {"files": sizes, "bytes_per_work": sum(sizes.values()) / args.items}
    print("... exact answers in process", flush=True)
    exact, queries = exact_answers(model, embeddings, baskets)
    del embeddings
    default_ef, threads = args.ef_search[0], args.search_threads[0]
    with environment(CURATORNET_INDEX_KIND="hnsw", CURATORNET_INFERENCE_THREADS="1"):
        print("... service without a snapshot: rebuild from the store", flush=True)
        results["without_snapshot"] = serve_once(
            database, work / "rebuild.log", 1, default_ef, threads, exact
        )
        snapshot = database.with_name(database.name + ".index")
        results["snapshot_bytes_per_work"] = snapshot.stat().st_size / args.items
        print("... the HNSW search alone, in process", flush=True)
        results["search_in_process"] = search_times(
            database, model, queries, baskets, args.ef_search, args.search_threads
        )
        results["with_snapshot"] = []
        for ef in args.ef_search:
            for count in args.search_threads:
                print(f"... service from the snapshot, efSearch {ef}, {count} threads", flush=True)
                log = work / f"snapshot-ef{ef}-threads{count}.log"
                results["with_snapshot"].append(serve_once(database, log, 1, ef, count, exact))
        if args.replay:
            print(f"... {args.replay:,} works uploaded again, then from the snapshot", flush=True)
            # The first works again, with the features of another market's: new versions.
            results["replay"] = bulk_load(url, args.replay, args.seed + 1, work / "again.log")
            log = work / "snapshot-replay.log"
            results["with_snapshot"].append(serve_once(database, log, 1, default_ef, threads, None))
        for workers in [w for w in args.workers if w > 1]:
            print(f"... {workers} workers from the snapshot", flush=True)
            log = work / f"snapshot-{workers}-workers.log"
            results["with_snapshot"].append(
                serve_once(database, log, workers, default_ef, threads, None)
            )
    if args.redis_items:
        print(f"... Redis: {args.redis_items:,} works", flush=True)
        results["redis"] = redis_bytes(args.redis_items, args.seed, work)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    serve.START_TIMEOUT_S = args.start_timeout  # a rebuild of a million works takes minutes
    model = load_model(MODEL_DIR)
    results: dict[str, Any] = {
        **results_header("million", args, {"k": K, "model": str(MODEL_DIR), "index_kind": "hnsw"}),
        "notes": [
            "Latency is client-side over real HTTP (localhost), one request at a time on one"
            " keep-alive connection, client and service sharing the machine's CPUs.",
            "Server CPU per request is the utime + stime of the service's processes (every"
            " thread) over the series, divided by its requests: the follower's 0.2 s ticks"
            " included.",
            "Recall@20 compares the service's answer with the exact top 20 computed in this"
            " process over the same embeddings (the same rule: best inner product with the"
            " user tower's interests, purchases left out).",
            "RSS is VmRSS of each worker process once ready; peak is VmHWM.",
        ],
    }
    try:
        with tempfile.TemporaryDirectory(prefix="curatornet-million-", dir=args.dir) as tmp:
            measure(args, model, Path(tmp), results)
    finally:  # what was measured is kept, whatever stopped the run
        write_results(results, args.out)
    print_summary(results)
    print(f"\nwritten to {args.out}")
    failed = sum(
        run["recommend"]["failures"]
        for run in [results["without_snapshot"], *results["with_snapshot"]]
        if "recommend" in run
    )
    if failed:
        print(
            f"error: {failed} recommend requests failed or were not personalized", file=sys.stderr
        )
    return 1 if failed else 0


def print_summary(results: dict[str, Any]) -> None:
    n = results["settings"]["items"]
    load = results["load"]
    print(
        f"\n{n:,} works: loaded in {load['seconds']:.0f} s "
        f"({load['works_per_s']:,.0f} works/s through python -m service load, generating "
        f"them included); SQLite {results['sqlite']['bytes_per_work']:,.0f} bytes per work, "
        f"index snapshot {results['snapshot_bytes_per_work']:,.0f} bytes per work"
    )
    if "redis" in results:
        redis_ = results["redis"]
        print(f"Redis: {redis_['bytes_per_work']:,.0f} bytes per work ({redis_['items']:,} works)")
    header = (
        f"{'start':<9} {'w':>2} {'ef':>4} {'thr':>3} {'replayed':>8} {'ready s':>8} "
        f"{'RSS MiB/worker':>15} {'peak MiB':>9} {'recall@20':>9} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'CPU ms/req':>10}"
    )
    searched = results["search_in_process"]
    print(
        f"snapshot loaded in process in {searched['snapshot_load_s']:.1f} s; HNSW search alone, "
        "p50/p95 ms (CPU ms): "
        + ", ".join(
            f"efSearch {f['ef_search']} on {f['threads']} {f['p50_ms']:.2f}/{f['p95_ms']:.2f}"
            f" ({f['cpu_ms']:.2f})"
            for f in searched["searches"]
        )
    )
    print(header)
    nan = float("nan")
    for run in [results["without_snapshot"], *results["with_snapshot"]]:
        figures = run.get("recommend", {})
        recall = figures.get("recall_at_20")
        print(
            f"{'snapshot' if run['loaded_from_snapshot'] else 'rebuild':<9} {run['workers']:>2} "
            f"{run['ef_search']:>4} {run['search_threads']:>3} "
            f"{sum(run['changes_replayed']):>8} {run['ready_s']:>8.1f} "
            f"{'/'.join(f'{r:.0f}' for r in run['rss_mib_per_worker']):>15} "
            f"{max(run['peak_rss_mib_per_worker']):>9.0f} "
            f"{'-' if recall is None else f'{recall:.3f}':>9} "
            f"{figures.get('p50_ms', nan):>7.2f} {figures.get('p95_ms', nan):>7.2f} "
            f"{figures.get('server_cpu_ms_per_request', nan):>10.2f}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=1_000_000, help="works N (default 1M)")
    parser.add_argument("--users", type=int, default=500, help="customers, each one request")
    parser.add_argument(
        "--ef-search",
        type=numbers,
        default=[Settings.model_fields["hnsw_ef_search"].default, 64, 128],
        help="HNSW efSearch values served from the snapshot; the first also for the rebuild "
        "(default: the service's default, 64, 128)",
    )
    parser.add_argument(
        "--search-threads",
        type=numbers,
        default=[Settings.model_fields["hnsw_search_threads"].default],
        help="CURATORNET_HNSW_SEARCH_THREADS values, each served with every efSearch; the "
        "first for the other starts (default: the service's default)",
    )
    parser.add_argument("--workers", type=numbers, default=[1, 2], help="worker counts")
    parser.add_argument(
        "--replay",
        type=int,
        default=20_000,
        help="works uploaded again after the snapshot, for a start that replays them",
    )
    parser.add_argument(
        "--redis-items", type=int, default=None, help="works stored in Redis (default N; 0: none)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the stores go (default: the temp dir)"
    )
    parser.add_argument("--start-timeout", type=float, default=3600.0, help="seconds to /readyz")
    parser.add_argument("--out", type=Path, default=None, help="JSON results")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20,000 works")
    args = parser.parse_args(argv)
    if args.quick:
        args.items, args.users, args.replay = 20_000, 100, 2_000
    if args.redis_items is None:
        args.redis_items = args.items
    if args.out is None:
        name = "million-quick.json" if args.quick else "million.json"
        args.out = ROOT / "benchmarks" / "results" / name
    return args


if __name__ == "__main__":
    sys.exit(main())
