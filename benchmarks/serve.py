"""Serving benchmark: the real `python -m service` over HTTP, and the naive way beside it.

Why: the service's case rests on figures that only a run of the real thing can give: how fast
artworks go in, how long a restart takes to rebuild the index from the store, how much memory
each 10,000 artworks cost, recommend throughput and tail latency, and how much the ONNX + FAISS
path gains over the obvious alternative (the Keras user tower called per request, then numpy
scoring the whole catalogue). Performance is never a timed test; this script prints the figures
and writes them as JSON. The machine is small and shared, so absolute figures drift between
runs: compare the figures of one run with each other (ratios), not across runs.

For each catalogue size N, a 1-worker service on a fresh SQLite file takes N synthetic artworks
through POST /items (batches of 1000) and ~3,000 customers' purchases through POST /purchases.
Then, for each worker count, the service is restarted on that file (start-up: time to /readyz,
the index rebuild it reports), its memory is read from /proc and POST /recommend is driven over
real HTTP with bounded concurrency, then one request at a time. Last, with no service running,
the naive way runs in this process on the same catalogue and histories.

    .venv/bin/python benchmarks/serve.py --quick        # smoke run: N=2000, 3 s per load
    .venv/bin/python benchmarks/serve.py                # N=13297 and N=100000, 1 and 2 workers
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis
from durability import free_port, redis_server

ROOT = Path(__file__).resolve().parents[1]
# Serving from feature vectors (the image path is benchmarks/images.py): the 2048-d model.
MODEL_DIR = ROOT / "models" / "synthetic-2048"
FEATURE_DIM = 2048
BATCH_ITEMS = 1000  # the service's default CURATORNET_MAX_BATCH_ITEMS
EDITION_SIZE = 1000  # so that no purchase here sells a work out
ARTISTS = 500
K = 20
WARM_REQUESTS = 20  # discarded before each one-at-a-time series
START_TIMEOUT_S = 600.0
SETTLE_S = 1.0  # pause between "all workers started" and reading their memory
METRIC_SCRAPES = 10  # fresh connections to /metrics, to reach each worker's gauge
# service/app.py's start-up line: "index (flat) built from the store with N items (M
# re-embedded by this model) in S s".
REBUILD_LOG = re.compile(
    r"index \((\w+)\) built from the store with (\d+) items(?: \([^)]*\))? in ([\d.]+) s"
)
STARTED_LOG = "Application startup complete."  # uvicorn's, once per worker process
REBUILD_METRIC = re.compile(r"^curatornet_index_rebuild_seconds (\S+)$", re.MULTILINE)


def item_id(row: int) -> str:
    return f"item-{row:07d}"


def user_id(user: int) -> str:
    return f"user-{user:05d}"


def catalogue_batches(n_items: int, seed: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, features) per batch of 1000: |N(0, 1)| rounded to 4 decimals.

    Rounding keeps a batch of JSON float lists near 15 MB (full float32 precision would be about
    41 MB, still under the 64 MiB body limit), and the values survive the float32 round trip,
    so the service and the naive way score one catalogue.
    """
    for batch, start in enumerate(range(0, n_items, BATCH_ITEMS)):
        rng = np.random.default_rng([seed, 0, batch])
        size = min(BATCH_ITEMS, n_items - start)
        yield start, np.round(np.abs(rng.normal(size=(size, FEATURE_DIM))), 4)


def user_baskets(n_items: int, n_users: int, seed: int) -> list[np.ndarray]:
    """One basket of 1-5 distinct catalogue rows per customer."""
    rng = np.random.default_rng([seed, 1, n_items])
    return [rng.choice(n_items, int(rng.integers(1, 6)), replace=False) for _ in range(n_users)]


def percentiles(seconds: list[float]) -> dict[str, float]:
    p50, p95, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99)}


def process_tree(root: int) -> list[int]:
    """The process and all its descendants (uvicorn's workers, multiprocessing's tracker)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while /proc was listed
            continue
        parents[int(stat.parent.name)] = int(text.rsplit(")", 1)[1].split()[1])
    tree, frontier = [root], {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier}
        tree += sorted(frontier)
    return tree


def rss_mib(pids: list[int]) -> float:
    total_kib = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
IDLE_S = 2.0  # how long an idle service is watched for CPU it should not spend


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU the processes have spent so far, all their threads included (fields
    14 and 15 of /proc/PID/stat): a figure that stays put on a shared machine where
    latency and req/s move with the neighbours' load."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


class Service:
    """`python -m service` in its own session at log level info, its stderr kept in a file."""

    def __init__(
        self,
        database: Path | str,
        workers: int,
        log: Path,
        model_dir: Path,
        checkout: Path = ROOT,
        command: tuple[str, ...] = ("-m", "service"),
    ) -> None:
        """`database`: a SQLite file, or any store URL (benchmarks/soak.py serves Redis);
        `checkout`: the source tree whose service runs (benchmarks/ingest.py --before);
        `command`: Python's arguments, another server on the same settings in its place
        (benchmarks/floors.py)."""
        self.workers, self.log = workers, log
        self.url = f"http://127.0.0.1:{free_port()}"
        environment = {
            **os.environ,
            "CURATORNET_STORE_URL": str(database)
            if str(database).startswith("redis://")
            else f"sqlite:///{database}",
            "CURATORNET_PORT": self.url.rsplit(":", 1)[1],
            "CURATORNET_WORKERS": str(workers),
            "CURATORNET_LOG_LEVEL": "info",
            "CURATORNET_MODEL_DIR": str(model_dir),
        }
        started = time.perf_counter()
        with log.open("w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, *command],
                cwd=checkout,
                env=environment,
                stdout=subprocess.DEVNULL,  # uvicorn's access log
                stderr=stderr,
                start_new_session=True,
            )
        self.client = httpx.Client(base_url=self.url, timeout=120)
        try:
            self.ready_s = self._wait_for(self._ready, started)
            self.all_workers_started_s = self._wait_for(
                lambda: log.read_text().count(STARTED_LOG) >= workers, started
            )
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        try:
            return self.client.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def _wait_for(self, condition: Callable[[], bool], started: float) -> float:
        while not condition():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the service exited with {self.process.returncode}; its log ends:\n"
                    + self.log.read_text()[-3000:]
                )
            if time.perf_counter() - started > START_TIMEOUT_S:
                raise RuntimeError(f"the service did not start in {START_TIMEOUT_S} s")
            time.sleep(0.02)
        return time.perf_counter() - started

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def rss_mib(self) -> float:
        return rss_mib(process_tree(self.process.pid))

    def cpu_seconds(self) -> float:
        return cpu_seconds(process_tree(self.process.pid))

    def idle_cpu_share(self) -> float:
        """Cores the service keeps busy while no request arrives (threads spinning between
        requests show here): 0 is right."""
        before = self.cpu_seconds()
        time.sleep(IDLE_S)
        return (self.cpu_seconds() - before) / IDLE_S

    def index_size(self) -> int:
        return int(self.client.get("/readyz").json()["index_size"])

    def rebuilds_logged(self) -> list[dict[str, Any]]:
        return [
            {"index": kind, "items": int(items), "seconds": float(seconds)}
            for kind, items, seconds in REBUILD_LOG.findall(self.log.read_text())
        ]

    def rebuilds_from_metrics(self) -> list[float]:
        """Distinct curatornet_index_rebuild_seconds values, one per worker reached."""
        values: set[float] = set()
        for _ in range(METRIC_SCRAPES):
            text = httpx.get(f"{self.url}/metrics", timeout=30).text
            values.update(float(v) for v in REBUILD_METRIC.findall(text))
        return sorted(values)

    def errors_logged(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if " ERROR " in line]


def ingest(service: Service, n_items: int, seed: int) -> dict[str, Any]:
    """POST /items in batches of 1000, alternating the two feature encodings batch by batch
    (JSON float lists, base64 float32), so both rates come from the same run; only the
    requests are timed, not building their JSON."""
    seconds = {"list": 0.0, "b64": 0.0}
    items_sent = {"list": 0, "b64": 0}
    largest = {"list": 0, "b64": 0}
    for batch, (start, block) in enumerate(catalogue_batches(n_items, seed)):
        encoding = "list" if batch % 2 == 0 else "b64"
        items = [
            {
                "id": item_id(start + j),
                "artist_id": f"artist-{(start + j) % ARTISTS:03d}",
                "edition_size": EDITION_SIZE,
                **(
                    {"features": row.tolist()}
                    if encoding == "list"
                    else {"features_b64": base64.b64encode(row.astype("<f4").tobytes()).decode()}
                ),
            }
            for j, row in enumerate(block)
        ]
        body = json.dumps({"items": items}).encode()
        largest[encoding] = max(largest[encoding], len(body))
        began = time.perf_counter()
        response = service.client.post(
            "/items", content=body, headers={"content-type": "application/json"}
        )
        seconds[encoding] += time.perf_counter() - began
        items_sent[encoding] += len(items)
        if response.status_code != 200:
            raise RuntimeError(f"POST /items: {response.status_code} {response.text[:500]}")
    return {
        "items": n_items,
        "batch_items": BATCH_ITEMS,
        "seconds": sum(seconds.values()),
        "items_per_s": n_items / sum(seconds.values()),
        **{
            encoding: {
                "items": items_sent[encoding],
                "largest_body_mb": largest[encoding] / 1e6,
                "seconds": seconds[encoding],
                "items_per_s": items_sent[encoding] / seconds[encoding]
                if seconds[encoding]
                else None,
            }
            for encoding in seconds
        },
    }


async def record_purchases(url: str, baskets: list[np.ndarray], concurrency: int) -> dict:
    """One POST /purchases per customer, `concurrency` in flight."""
    bodies = iter(
        {"user_id": user_id(u), "item_ids": [item_id(int(row)) for row in basket]}
        for u, basket in enumerate(baskets)
    )
    failures: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def post_some() -> None:
            for body in bodies:  # one iterator shared by every task: each body is posted once
                response = await client.post("/purchases", json=body)
                if response.status_code != 201:
                    failures.append(f"{response.status_code} {response.text[:300]}")

        began = time.perf_counter()
        await asyncio.gather(*(post_some() for _ in range(concurrency)))
        seconds = time.perf_counter() - began
    if failures:
        raise RuntimeError(f"{len(failures)} purchases failed, the first: {failures[0]}")
    purchases = sum(len(basket) for basket in baskets)
    return {
        "users": len(baskets),
        "purchases": purchases,
        "concurrency": concurrency,
        "seconds": seconds,
        "requests_per_s": len(baskets) / seconds,
    }


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    fallbacks: int = 0  # answered, but not personalized: the history was not found
    server_cpu_s: float | None = None  # the service's CPU over the measured requests

    def add(self, seconds: float, response: httpx.Response | None) -> None:
        self.latencies.append(seconds)
        if response is None or response.status_code != 200:
            self.errors += 1
        elif response.json()["strategy"] != "personalized":
            self.fallbacks += 1

    def summary(self) -> dict[str, Any]:
        requests = len(self.latencies)
        cpu = self.server_cpu_s
        return {
            "requests": requests,
            **percentiles(self.latencies),
            "server_cpu_ms_per_request": None if cpu is None else cpu / requests * 1000,
            "errors": self.errors,
            "fallbacks": self.fallbacks,
        }


def recommend_body(rng: random.Random, n_users: int) -> dict[str, Any]:
    return {"user_id": user_id(rng.randrange(n_users)), "k": K}


def drive_with_wrk(
    service: Service, n_users: int, concurrency: int, warmup_s: float, duration_s: float
) -> dict[str, Any] | None:
    """The same load from wrk (C, one thread per core's worth of connections), when installed.

    A Python client on the same two cores spends as much CPU as the service it measures;
    wrk spends a fraction of it, so its figures are closer to what the service can do.
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    env = {**os.environ, "BENCH_USERS": str(n_users), "BENCH_K": str(K)}
    script = str(ROOT / "benchmarks" / "recommend.lua")
    command = [wrk, "-t1", f"-c{concurrency}", "-s", script, service.url]
    subprocess.run(
        [*command[:1], f"-d{max(1, round(warmup_s))}s", *command[1:]],
        env=env,
        capture_output=True,
        check=True,
    )
    cpu_before = service.cpu_seconds()
    done = subprocess.run(
        [*command[:1], f"-d{round(duration_s)}s", *command[1:]],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    server_cpu_s = service.cpu_seconds() - cpu_before
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    seconds = figures["duration_us"] / 1e6
    return {
        "client": "wrk -t1",
        "requests": figures["requests"],
        "requests_per_s": figures["requests"] / seconds,
        **{f"{p}_ms": figures[f"{p}_us"] / 1000 for p in ("p50", "p95", "p99", "max")},
        "server_cpu_ms_per_request": server_cpu_s / figures["requests"] * 1000,
        "errors": figures["socket_errors"] + figures["status_errors"],
    }


async def drive_recommend(
    service: Service,
    n_users: int,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    seed: int,
) -> dict[str, Any]:
    """`concurrency` tasks, each sending its next request when the last one is answered."""
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=service.url, timeout=60, limits=limits) as client:

        async def loop(deadline: float, tally: Tally) -> None:
            while time.perf_counter() < deadline:
                body = recommend_body(rng, n_users)
                began = time.perf_counter()
                try:
                    response: httpx.Response | None = await client.post("/recommend", json=body)
                except httpx.HTTPError:
                    response = None
                tally.add(time.perf_counter() - began, response)

        async def phase(seconds: float) -> tuple[Tally, float]:
            tally, began = Tally(), time.perf_counter()
            cpu_before = service.cpu_seconds()
            await asyncio.gather(*(loop(began + seconds, tally) for _ in range(concurrency)))
            tally.server_cpu_s = service.cpu_seconds() - cpu_before
            return tally, time.perf_counter() - began

        await phase(warmup_s)
        tally, seconds = await phase(duration_s)
    return {
        "concurrency": concurrency,
        "seconds": seconds,
        "requests_per_s": len(tally.latencies) / seconds,
        **tally.summary(),
    }


def one_at_a_time(service: Service, n_users: int, count: int, seed: int) -> dict[str, Any]:
    """Sequential requests on one keep-alive connection: latency without queueing."""
    rng, tally = random.Random(seed), Tally()
    cpu_before = 0.0
    for n in range(WARM_REQUESTS + count):
        if n == WARM_REQUESTS:
            cpu_before = service.cpu_seconds()
        body = recommend_body(rng, n_users)
        began = time.perf_counter()
        try:
            response: httpx.Response | None = service.client.post("/recommend", json=body)
        except httpx.HTTPError:
            response = None
        if n >= WARM_REQUESTS:
            tally.add(time.perf_counter() - began, response)
    tally.server_cpu_s = service.cpu_seconds() - cpu_before
    return tally.summary()


class NaiveRecommender:
    """The served model's towers in Keras with its trained weights, which are read back from
    the ONNX export's initializers (the export writes them there unchanged)."""

    def __init__(self, model_dir: Path) -> None:
        import onnx
        from onnx import numpy_helper

        from curatornet.model_format import MANIFEST_FILE

        manifest = json.loads((model_dir / MANIFEST_FILE).read_text())
        weights = {}
        for key in ("item_tower", "user_tower"):
            graph = onnx.load(model_dir / manifest[key]["file"]).graph
            weights.update({t.name: numpy_helper.to_array(t) for t in graph.initializer})
        self.architecture = manifest["model"].get("architecture", "paper")
        if self.architecture == "paper":
            self.net: Any = self._paper(manifest, weights)
        else:
            self.net = self._multi_interest(manifest, weights)

    @staticmethod
    def _paper(manifest: dict, weights: dict[str, np.ndarray]) -> Any:
        from training.model import CuratorNet, ModelConfig

        config = ModelConfig(
            tuple(manifest["model"]["item_layers"]), tuple(manifest["model"]["user_layers"])
        )
        net = CuratorNet(weights["feature_mean"], weights["feature_std"], config)
        for tower, prefix in ((net.item_tower, "item_dense"), (net.user_tower, "user_dense")):
            tower.set_weights(_dense_weights(weights, prefix, len(tower.layers)))
        return net

    @staticmethod
    def _multi_interest(manifest: dict, weights: dict[str, np.ndarray]) -> Any:
        from training.multi_interest import MultiInterestConfig, MultiInterestNet

        described = manifest["model"]
        config = MultiInterestConfig(
            projection_dim=described["projection_dim"],
            style_dim=described["style_dim"],
            bias_hidden=described["bias_hidden"],
            interests=described["interests"],
            attention_dim=described["attention_dim"],
        )
        net = MultiInterestNet(weights["projection"], config)
        net.style.kernel.assign(weights["style_kernel"])
        net.log_scale.assign(np.log(weights["scale"]))
        for stack, prefix in ((net.bias_tower, "bias_dense"), (net.attention, "attention")):
            stack.set_weights(_dense_weights(weights, prefix, len(stack.layers)))
        return net

    def parity_with_onnx(self, model_dir: Path, seed: int) -> float:
        """Max |Keras - ONNX Runtime| over both towers: the weights are the trained ones."""
        from curatornet.model_loader import load_model

        served = load_model(model_dir)
        _, block = next(catalogue_batches(64, seed))
        features = block.astype(np.float32)
        embeddings = served.embed_items(features)
        history, mask = embeddings[None], np.ones((1, len(embeddings)), np.float32)
        users = served.embed_users(history, mask)
        return max(
            float(np.abs(self.net.embed_items(features) - embeddings).max()),
            float(np.abs(self.net.embed_users(history, mask).reshape(users.shape) - users).max()),
        )

    def benchmark(
        self, n_items: int, baskets: list[np.ndarray], count: int, seed: int
    ) -> dict[str, Any]:
        """Per-request latency of the ways to run the user tower, each plus numpy top k (an
        item's best dot product with the user's vectors)."""
        embeddings = np.concatenate(
            [
                self.net.embed_items(block.astype(np.float32))
                for _, block in catalogue_batches(n_items, seed)
            ]
        )

        def called(history: np.ndarray) -> np.ndarray:
            mask = np.ones((1, len(history)), np.float32)
            users = self.net.embed_users(history[None], mask)
            return users.reshape(-1, embeddings.shape[1])

        ways: list[tuple[str, Callable[[np.ndarray], np.ndarray]]] = [("keras_call", called)]
        if self.architecture == "paper":
            tower = self.net.user_tower

            def predicted(history: np.ndarray) -> np.ndarray:
                pooled = np.concatenate([history.mean(axis=0), history.max(axis=0)])[None]
                return tower.predict(pooled, verbose=0)

            ways.append(("keras_predict", predicted))
        results = {}
        for name, user_vectors in ways:
            rng, latencies = random.Random(seed), []
            for n in range(WARM_REQUESTS + count):
                basket = baskets[rng.randrange(len(baskets))]
                began = time.perf_counter()
                scores = (embeddings @ user_vectors(embeddings[basket]).T).max(axis=1)
                scores[basket] = -np.inf  # the service leaves out what the customer bought
                top = np.argpartition(-scores, K)[:K]
                top = top[np.argsort(-scores[top])]
                if n >= WARM_REQUESTS:
                    latencies.append(time.perf_counter() - began)
            results[name] = {"requests": count, **percentiles(latencies)}
        return results


def _dense_weights(weights: dict[str, np.ndarray], prefix: str, layers: int) -> list[np.ndarray]:
    return [weights[f"{prefix}{n}_{part}"] for n in range(layers) for part in ("kernel", "bias")]


def measure_running(service: Service) -> dict[str, Any]:
    """Start-up figures and idle memory of a freshly started service."""
    time.sleep(SETTLE_S)
    return {
        "ready_s": service.ready_s,
        "all_workers_started_s": service.all_workers_started_s,
        "processes": len(process_tree(service.process.pid)),
        "rss_mib": service.rss_mib(),
        "index_size": service.index_size(),
    }


def bench_size(
    n_items: int,
    args: argparse.Namespace,
    empty: dict[int, dict],
    work: Path,
    naive: NaiveRecommender,
) -> dict[str, Any]:
    database = work / f"catalogue-{n_items}.db"
    baskets = user_baskets(n_items, args.users, args.seed)
    print(f"... N={n_items}: loading the catalogue and purchases (1 worker)", flush=True)
    with Service(database, 1, work / f"load-{n_items}.log", args.model_dir) as service:
        loading = {
            "ingest": ingest(service, n_items, args.seed),
            "purchases": asyncio.run(record_purchases(service.url, baskets, args.concurrency)),
            "rss_mib_after_loading": service.rss_mib(),
            "errors_logged": service.errors_logged(),
        }
    runs = []
    for workers in args.workers:
        print(f"... N={n_items}: restart with {workers} worker(s), drive /recommend", flush=True)
        log = work / f"serve-{n_items}-{workers}.log"
        with Service(database, workers, log, args.model_dir) as service:
            run = {"workers": workers, **measure_running(service)}
            run["rebuild_logged"] = service.rebuilds_logged()
            run["rebuild_s_from_metrics"] = service.rebuilds_from_metrics()
            extra = run["rss_mib"] - empty[workers]["rss_mib"]
            run["rss_mib_per_10k_items"] = extra / (n_items / 10_000)
            run["recommend"] = asyncio.run(
                drive_recommend(
                    service,
                    args.users,
                    args.concurrency,
                    args.warmup,
                    args.duration,
                    args.seed,
                )
            )
            run["recommend_wrk"] = drive_with_wrk(
                service, args.users, args.concurrency, args.warmup, args.duration
            )
            run["one_at_a_time"] = one_at_a_time(service, args.users, args.requests, args.seed)
            run["idle_cpu_cores"] = service.idle_cpu_share()
            run["rss_mib_after_serving"] = service.rss_mib()
            run["errors_logged"] = service.errors_logged()
        runs.append(run)
    compared: dict[str, Any] | None = None
    if args.compare_model_dir is not None:
        print(f"... N={n_items}: 1 worker on {args.compare_model_dir}, one at a time", flush=True)
        log = work / f"compare-{n_items}.log"
        with Service(database, 1, log, args.compare_model_dir) as service:
            other = one_at_a_time(service, args.users, args.requests, args.seed)
        compared = {"model_dir": str(args.compare_model_dir), "one_at_a_time": other}
        print(f"... N={n_items}: 1 worker on {args.model_dir} again, one at a time", flush=True)
        with Service(database, 1, work / f"again-{n_items}.log", args.model_dir) as service:
            again = one_at_a_time(service, args.users, args.requests, args.seed)
        compared["model_one_at_a_time_again"] = again
        compared["model_p50_over_compared_p50"] = again["p50_ms"] / other["p50_ms"]
    on_redis = on_a_redis_server(n_items, baskets, args, work) if args.redis else None
    before = against_before(n_items, baskets, args, work) if args.before else None
    print(f"... N={n_items}: the naive way (Keras + numpy, in process)", flush=True)
    naive_result = naive.benchmark(n_items, baskets, args.requests, args.seed)
    for run in runs:
        run["naive_p50_over_service_p50"] = {
            name: {
                "one_at_a_time": figures["p50_ms"] / run["one_at_a_time"]["p50_ms"],
                f"at_concurrency_{args.concurrency}": figures["p50_ms"]
                / run["recommend"]["p50_ms"],
            }
            for name, figures in naive_result.items()
        }
    return {
        "n_items": n_items,
        **loading,
        "runs": runs,
        "compared": compared,
        "redis": on_redis,
        "before": before,
        "naive": naive_result,
    }


def against_before(
    n_items: int, baskets: list[np.ndarray], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """The same catalogue and purchases served by an earlier checkout (`--before`, on a store
    of its own, as its store format may differ), then one request at a time on it and on this
    checkout, back to back: the change in server CPU per request, measured in one run."""
    print(f"... N={n_items}: 1 worker of {args.before}, one at a time", flush=True)
    database = work / f"before-{n_items}.db"
    log = work / f"before-{n_items}.log"
    with Service(database, 1, log, args.model_dir, args.before) as service:
        ingest(service, n_items, args.seed)
        asyncio.run(record_purchases(service.url, baskets, args.concurrency))
    with Service(database, 1, log, args.model_dir, args.before) as service:
        earlier = one_at_a_time(service, args.users, args.requests, args.seed)
    print(f"... N={n_items}: 1 worker of this checkout again, one at a time", flush=True)
    log = work / f"now-{n_items}.log"
    with Service(work / f"catalogue-{n_items}.db", 1, log, args.model_dir) as service:
        now = one_at_a_time(service, args.users, args.requests, args.seed)
    return {
        "checkout": str(args.before),
        "before_one_at_a_time": earlier,
        "now_one_at_a_time": now,
        "cpu_before_over_now": earlier["server_cpu_ms_per_request"]
        / now["server_cpu_ms_per_request"],
    }


def redis_counters(url: str) -> tuple[float, int]:
    """The Redis server's own CPU seconds (user + system, all its threads) and the commands
    it has run so far: read before and after a series, they give its cost per request."""
    client = redis.Redis.from_url(url)
    cpu = client.info("cpu")
    commands = client.info("commandstats")
    client.close()
    calls = sum(int(stats["calls"]) for stats in commands.values())
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), calls


def on_a_redis_server(
    n_items: int, baskets: list[np.ndarray], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """The same catalogue and purchases on a real redis-server (append-only file, fsync every
    second: the compose file's), then one request at a time: what each recommendation costs
    the service, and what it costs Redis (its commands and its CPU), which says how many
    replicas one Redis can serve."""
    print(f"... N={n_items}: 1 worker on Redis, one at a time", flush=True)
    directory = work / f"redis-{n_items}"
    directory.mkdir()
    with redis_server(directory, "everysec") as url:
        with Service(url, 1, work / f"redis-load-{n_items}.log", args.model_dir) as service:
            ingest(service, n_items, args.seed)
            asyncio.run(record_purchases(service.url, baskets, args.concurrency))
        used = redis.Redis.from_url(url).info("memory")["used_memory"]
        with Service(url, 1, work / f"redis-{n_items}.log", args.model_dir) as service:
            one_at_a_time(service, args.users, WARM_REQUESTS, args.seed + 1)
            cpu_before, calls_before = redis_counters(url)
            series = one_at_a_time(service, args.users, args.requests, args.seed)
            cpu_after, calls_after = redis_counters(url)
            errors = service.errors_logged()
    requests = series["requests"] + WARM_REQUESTS  # one_at_a_time's warm-up reaches Redis too
    return {
        "one_at_a_time": series,
        "redis_commands_per_request": (calls_after - calls_before - 2) / requests,
        "redis_cpu_ms_per_request": (cpu_after - cpu_before) / requests * 1000,
        "redis_used_memory_mib": used / 2**20,
        "redis_bytes_per_item": used / n_items,
        "errors_logged": errors,
    }


def print_table(results: dict[str, Any]) -> None:
    print(
        "\nempty store: "
        + ", ".join(
            f"{w} worker(s) {e['rss_mib']:.0f} MiB, ready in {e['ready_s']:.2f} s"
            for w, e in results["empty_store"].items()
        )
    )
    header = (
        f"{'N':>7} {'w':>2} {'ready s':>8} {'rebuild s':>10} {'RSS MiB':>8} {'MiB/10K':>8} "
        f"{'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'CPU ms':>7} {'err':>4} "
        f"{'1-by-1 p50':>10} {'CPU ms':>7} {'idle':>5}"
    )
    for size in results["sizes"]:
        ingest_ = size["ingest"]
        purchases = size["purchases"]
        print(
            f"\nN={size['n_items']}: ingestion {ingest_['items_per_s']:.0f} items/s "
            f"({ingest_['seconds']:.1f} s; JSON lists {ingest_['list']['items_per_s']:.0f}, "
            f"base64 {ingest_['b64']['items_per_s'] or 0:.0f} items/s), "
            f"purchases {purchases['requests_per_s']:.0f} req/s "
            f"({purchases['users']} users, {purchases['purchases']} items)"
        )
        print(header)
        for run in size["runs"]:
            rebuilds = [r["seconds"] for r in run["rebuild_logged"]] or run[
                "rebuild_s_from_metrics"
            ]
            rebuild = "/".join(f"{s:.3f}" for s in rebuilds) or "-"
            recommend = run["recommend"]
            print(
                f"{size['n_items']:>7} {run['workers']:>2} {run['ready_s']:>8.2f} {rebuild:>10} "
                f"{run['rss_mib']:>8.0f} {run['rss_mib_per_10k_items']:>8.1f} "
                f"{recommend['requests_per_s']:>7.0f} {recommend['p50_ms']:>7.1f} "
                f"{recommend['p95_ms']:>7.1f} {recommend['p99_ms']:>7.1f} "
                f"{recommend['server_cpu_ms_per_request']:>7.2f} {recommend['errors']:>4} "
                f"{run['one_at_a_time']['p50_ms']:>10.2f} "
                f"{run['one_at_a_time']['server_cpu_ms_per_request']:>7.2f} "
                f"{run['idle_cpu_cores']:>5.2f}"
            )
            if run["recommend_wrk"]:
                wrk = run["recommend_wrk"]
                print(
                    f"{'  (wrk)':>7} {run['workers']:>2} {'':>8} {'':>10} {'':>8} {'':>8} "
                    f"{wrk['requests_per_s']:>7.0f} {wrk['p50_ms']:>7.1f} {wrk['p95_ms']:>7.1f} "
                    f"{wrk['p99_ms']:>7.1f} {wrk['server_cpu_ms_per_request']:>7.2f} "
                    f"{wrk['errors']:>4}"
                )
        if size.get("compared"):
            compared = size["compared"]
            again = compared["model_one_at_a_time_again"]
            print(
                f"1 worker one-by-one p50: {again['p50_ms']:.2f} ms "
                f"with the model, {compared['one_at_a_time']['p50_ms']:.2f} ms with "
                f"{compared['model_dir']} (ratio {compared['model_p50_over_compared_p50']:.2f})"
            )
        if size.get("redis"):
            on_redis = size["redis"]
            series = on_redis["one_at_a_time"]
            print(
                f"on Redis, 1 worker one-by-one: p50 {series['p50_ms']:.2f} ms, service CPU "
                f"{series['server_cpu_ms_per_request']:.2f} ms; Redis ran "
                f"{on_redis['redis_commands_per_request']:.1f} commands and "
                f"{on_redis['redis_cpu_ms_per_request']:.3f} ms of CPU per request; it holds "
                f"{on_redis['redis_bytes_per_item']:.0f} bytes per work"
            )
        if size.get("before"):
            before = size["before"]
            earlier, now = before["before_one_at_a_time"], before["now_one_at_a_time"]
            print(
                f"1 worker one-by-one, {before['checkout']} then this checkout: server CPU "
                f"{earlier['server_cpu_ms_per_request']:.2f} against "
                f"{now['server_cpu_ms_per_request']:.2f} ms per request "
                f"({before['cpu_before_over_now']:.1f}x), p50 {earlier['p50_ms']:.2f} against "
                f"{now['p50_ms']:.2f} ms"
            )
        for name, figures in size["naive"].items():
            ratios = ", ".join(
                f"{run['naive_p50_over_service_p50'][name]['one_at_a_time']:.2f}x "
                f"({run['workers']} worker(s))"
                for run in size["runs"]
            )
            print(
                f"naive {name:<13} p50 {figures['p50_ms']:7.2f} ms, "
                f"p99 {figures['p99_ms']:7.2f} ms; "
                f"naive p50 / service 1-by-1 p50 over HTTP: {ratios}"
            )


def numbers(text: str) -> list[int]:
    """A command-line list of whole numbers, comma-separated: "13297,100000"."""
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=numbers, default=[13297, 100_000], help="catalogue sizes N")
    parser.add_argument("--workers", type=numbers, default=[1, 2], help="uvicorn worker counts")
    parser.add_argument("--concurrency", type=int, default=8, help="recommend requests in flight")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of measured load")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of unmeasured load first"
    )
    parser.add_argument("--users", type=int, default=3000, help="customers with purchases")
    parser.add_argument(
        "--requests", type=int, default=200, help="requests timed one at a time (service and naive)"
    )
    parser.add_argument("--seed", type=int, default=0, help="catalogue, baskets and request order")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "serve.json",
        help="JSON results (default benchmarks/results/serve.json)",
    )
    parser.add_argument(
        "--model-dir", type=Path, default=MODEL_DIR, help="the model served (default %(default)s)"
    )
    parser.add_argument(
        "--compare-model-dir",
        type=Path,
        default=None,
        help="another model (e.g. the paper architecture) to time one request at a time on the "
        "same catalogue, alternating with --model-dir in the same run",
    )
    parser.add_argument(
        "--redis",
        action="store_true",
        help="also serve each catalogue from a real redis-server (needs redis-server installed) "
        "and measure what a recommendation costs Redis",
    )
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        help="a checkout of an earlier release (e.g. `git archive REV | tar -x -C DIR`) to "
        "serve the same catalogue with, one request at a time, beside this one",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: --sizes 2000 --duration 3")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.duration = [2000], 3.0
    if min(args.sizes) <= K:
        parser.error(f"every size must be larger than k={K}")
    return args


def results_header(name: str, args: argparse.Namespace, fixed: dict[str, Any]) -> dict[str, Any]:
    """What a benchmark's JSON starts with: its name, when, the machine and its load at the
    start (figures are to be read against it), and every setting of the run."""
    return {
        "benchmark": name,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": os.getloadavg(),
        },
        "settings": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items()
            if key != "out"
        }
        | fixed,
    }


def write_results(results: dict[str, Any], out: Path) -> None:
    """The run's JSON, with the machine's load at its end beside that at its start."""
    results["machine"]["load_average_at_end"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, Any] = {
        **results_header(
            "serve", args, {"k": K, "batch_items": BATCH_ITEMS, "edition_size": EDITION_SIZE}
        ),
        "notes": [
            "Compare figures within one run only: the machine is shared and noisy.",
            "Service latencies are client-side over real HTTP (localhost), client and service"
            " sharing the machine's CPUs; 'recommend' runs at --concurrency requests in flight,"
            " 'one_at_a_time' sends each request after the last is answered.",
            "The service runs at log level info (its default), uvicorn's access log included.",
            "server_cpu_ms_per_request: user + system CPU of the service's whole process tree"
            " (every thread, from /proc/PID/stat) over the measured requests, divided by their"
            " number; idle_cpu_cores: the same over 2 s with no request, in cores (0: nothing"
            " spins between requests). CPU figures stay put where latency and req/s move with"
            " the machine's other load.",
            "Ingestion times only the POST /items requests, not building their JSON.",
            "rss_mib sums VmRSS over the service's process tree, idle after start-up;"
            " rss_mib_per_10k_items subtracts the same service started on an empty store.",
            "rebuild_logged parses the service's start-up log line (empty where the workers do"
            " not log it); rebuild_s_from_metrics reads curatornet_index_rebuild_seconds from"
            " /metrics (distinct values, one per worker reached over fresh connections).",
            "The naive way runs in this process with no service running, one request at a time:"
            " the user tower in Keras (direct call, or model.predict), then numpy dot products"
            " with all N item embeddings, purchased items left out, np.argpartition top k.",
        ],
    }
    with tempfile.TemporaryDirectory(prefix="curatornet-bench-") as tmp:
        work = Path(tmp)
        empty = {}
        for workers in args.workers:
            print(f"... empty store, {workers} worker(s)", flush=True)
            database, log = work / f"empty-{workers}.db", work / f"empty-{workers}.log"
            with Service(database, workers, log, args.model_dir) as s:
                empty[workers] = measure_running(s)
        results["empty_store"] = empty
        print("... building the naive Keras model", flush=True)
        naive = NaiveRecommender(args.model_dir)
        results["naive_model"] = {
            "weights": f"trained: {args.model_dir}'s weights read back from its ONNX"
            f" initializers into the Keras model of training/ ({naive.architecture})",
            "parity_max_abs_diff_vs_onnx": naive.parity_with_onnx(args.model_dir, args.seed),
        }
        results["sizes"] = [bench_size(n, args, empty, work, naive) for n in args.sizes]
    write_results(results, args.out)
    print_table(results)
    print(f"\nwritten to {args.out}")
    failed = sum(
        run[part]["errors"] + run[part]["fallbacks"]
        for size in results["sizes"]
        for run in size["runs"]
        for part in ("recommend", "one_at_a_time")
    )
    if failed:
        print(
            f"error: {failed} recommend requests failed or were not personalized", file=sys.stderr
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
