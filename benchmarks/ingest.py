"""Ingestion benchmark (issue 17): how fast a catalogue goes in, and what it costs to keep.

Why: a store is filled once with a whole catalogue (a migration, a marketplace joining) and
then a work at a time; both rates, and the bytes each work takes in SQLite and in Redis, decide
what one replica and one Redis can hold. Figures are printed and written as JSON, never
asserted by a test.

- The bulk path: `python -m service load` (a subprocess, as a user runs it) over NDJSON files of
  N works with 2048-d features (|N(0, 1)| rounded to 4 decimals, as benchmarks/serve.py
  uploads them), once with the features as JSON lists and once as base64, into a fresh SQLite
  file and into a fresh redis-server (append-only file on, `everysec`, as the compose file
  runs it). Works/s is the command's own figure (reading, checking, embedding and writing;
  start-up, which loads the model and indexes the store, is printed apart); CPU per work is
  the command's user + system time less that of a run with nothing to load, and for Redis
  the server's too.
- POST /items: the real service (`python -m service`, models/synthetic-2048, SQLite) taking
  the first works of the same files in batches of 1,000, alternately as JSON lists and base64,
  with the service's CPU from /proc per work and encoding. With `--before`, both checkouts'
  services run at once and take each batch in turn, so that the neighbours' load falls alike
  on both.
- Bytes per work: the SQLite file's size over N, Redis's `used_memory` growth over N.
- Precision: embeddings recomputed from features as stored, against those of the uploaded
  float32 features, on each shipped model's own catalogue (data/pixels, data/synthetic) when
  it is there: in the stores' 16-bit steps, and in float16 for comparison.
- `--before DIR` (a checkout of the code before this change, e.g.
  `git archive $(git merge-base main HEAD) | tar -x -C DIR`): its loader takes the same bulk
  loads and its service the same POST /items batches, for its rates, CPU and bytes per work in
  the same run.

    .venv/bin/python benchmarks/ingest.py [--works 50000] [--http-works 20000] [--before DIR]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis
from durability import redis_server
from serve import (
    ARTISTS,
    BATCH_ITEMS,
    EDITION_SIZE,
    MODEL_DIR,
    ROOT,
    Service,
    catalogue_batches,
    item_id,
)

from curatornet.model_loader import LoadOptions, load_model
from service.stores.base import features_blobs, features_vector

ENCODINGS = ("list", "b64")
# `python -m service load`'s last line: "N works loaded (C new, U replaced) in S s: R works/s".
LOADED = re.compile(r"(\d+) works loaded \(\d+ new, \d+ replaced\) in ([\d.]+) s: (\d+) works/s")


def write_catalogue(directory: Path, works: int, seed: int) -> dict[str, Path]:
    """The same N works as two NDJSON files, one per feature encoding."""
    paths = {encoding: directory / f"works-{encoding}.ndjson" for encoding in ENCODINGS}
    with paths["list"].open("wb") as lists, paths["b64"].open("wb") as encoded:
        for start, block in catalogue_batches(works, seed):
            for j, row in enumerate(block):
                work = {
                    "id": item_id(start + j),
                    "artist_id": f"artist-{(start + j) % ARTISTS:03d}",
                    "edition_size": EDITION_SIZE,
                    "metadata": {"title": f"work {start + j}"},
                }
                lists.write(orjson.dumps({**work, "features": row.tolist()}) + b"\n")
                raw = row.astype("<f4").tobytes()
                features_b64 = base64.b64encode(raw).decode()
                encoded.write(orjson.dumps({**work, "features_b64": features_b64}) + b"\n")
    return paths


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def bulk_load(store_url: str, path: Path, works: int, checkout: Path = ROOT) -> dict[str, Any]:
    """One `python -m service load` run of `checkout`: its rate, its CPU and its wall time."""
    environment = {**os.environ, "CURATORNET_MODEL_DIR": str(MODEL_DIR)}
    command = [sys.executable, "-m", "service", "load", "--store-url", store_url, str(path)]
    output = path.with_suffix(".out")
    began = time.perf_counter()
    with output.open("w") as out:
        process = subprocess.Popen(command, cwd=checkout, env=environment, stdout=out, stderr=out)
        _, status, usage = os.wait4(process.pid, 0)  # its own CPU, start-up included
    wall = time.perf_counter() - began
    text = output.read_text()
    found = LOADED.search(text)
    if status != 0 or found is None or int(found.group(1)) != works:
        raise RuntimeError(f"python -m service load failed ({status}):\n{text[-3000:]}")
    loading_s = float(found.group(2))
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "works": works,
        "works_per_s": works / loading_s if works else None,
        "loading_s": loading_s,
        "start_up_s": wall - loading_s,
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_us_per_work": cpu / works * 1e6 if works else None,
    }


def sqlite_bytes(path: Path) -> int:
    return sum(part.stat().st_size for part in path.parent.glob(path.name + "*"))


def bulk_runs(
    work: Path, files: dict[str, Path], works: int, checkout: Path, name: str
) -> dict[str, Any]:
    """The CLI of `checkout` into SQLite and into Redis, per encoding, each into a fresh store;
    and its CPU with nothing to load (start-up alone), taken off the per-work figure."""
    work = work / f"bulk-{name}"
    work.mkdir()
    empty = work / "empty.ndjson"
    empty.touch()
    start_up = bulk_load(f"sqlite:///{work / 'empty.db'}", empty, 0, checkout)["cpu_s"]
    runs: dict[str, Any] = {"start_up_cpu_s": start_up, "sqlite": {}, "redis": {}}
    for encoding, path in files.items():
        database = work / f"bulk-{encoding}.db"
        run = bulk_load(f"sqlite:///{database}", path, works, checkout)
        run["loading_cpu_us_per_work"] = (run["cpu_s"] - start_up) / works * 1e6
        run["bytes_per_work"] = sqlite_bytes(database) / works
        runs["sqlite"][encoding] = run
        rate = run["works_per_s"]
        print(f"load into SQLite, {encoding} ({name}): {rate:.0f} works/s", flush=True)
        redis_dir = work / f"redis-{encoding}"
        redis_dir.mkdir()
        with redis_server(redis_dir, "everysec") as url:
            client = redis.Redis.from_url(url)
            memory, cpu = client.info("memory")["used_memory"], redis_cpu(client)
            run = bulk_load(url, path, works, checkout)
            run["loading_cpu_us_per_work"] = (run["cpu_s"] - start_up) / works * 1e6
            run["redis_cpu_us_per_work"] = (redis_cpu(client) - cpu) / works * 1e6
            run["bytes_per_work"] = (client.info("memory")["used_memory"] - memory) / works
            client.close()
        runs["redis"][encoding] = run
        rate = run["works_per_s"]
        print(f"load into Redis, {encoding} ({name}): {rate:.0f} works/s", flush=True)
    return runs


def upload_bodies(files: dict[str, Path], works: int) -> Iterator[tuple[str, int, bytes]]:
    """The first `works` works as POST /items bodies of BATCH_ITEMS, (encoding, works, body),
    the encodings alternating batch by batch as benchmarks/serve.py sends them: each batch the
    NDJSON lines of the bulk loads, so that both paths take the same works."""
    with files["list"].open("rb") as lists, files["b64"].open("rb") as encoded:
        for batch, start in enumerate(range(0, works, BATCH_ITEMS)):
            size = min(BATCH_ITEMS, works - start)
            lines = [(lists, encoded)[n % 2].readline() for n in range(2 * size)]
            encoding = ENCODINGS[batch % 2]
            chosen = [line.rstrip(b"\n") for line in lines[ENCODINGS.index(encoding) :: 2]]
            yield encoding, size, b'{"items": [' + b", ".join(chosen) + b"]}"


def http_runs(
    work: Path, files: dict[str, Path], works: int, checkouts: dict[str, Path]
) -> dict[str, Any]:
    """POST /items against the service of each checkout on SQLite, all running at once: each
    batch goes to each service in turn (the order alternating), so that the neighbours' load
    falls alike on all, and the difference in server CPU per work (from /proc) is the code's.
    Then, for the bytes per work in Redis, the same uploads into a fresh redis-server each."""
    results: dict[str, Any] = {}
    with contextlib.ExitStack() as running:
        services = {
            name: running.enter_context(
                Service(work / f"http-{name}.db", 1, work / f"http-{name}.log", MODEL_DIR, path)
            )
            for name, path in checkouts.items()
        }
        spent = {(name, e): [0, 0.0, 0.0] for name in services for e in ENCODINGS}
        for batch, (encoding, size, body) in enumerate(upload_bodies(files, works)):
            order = list(services) if batch % 4 < 2 else list(reversed(services))
            for name in order:
                tally = spent[name, encoding]
                tally[1] -= services[name].cpu_seconds()
                tally[2] -= time.perf_counter()
                post(services[name], body)
                tally[1] += services[name].cpu_seconds()
                tally[2] += time.perf_counter()
                tally[0] += size
    for name in checkouts:
        per = {e: spent[name, e] for e in ENCODINGS}
        results[name] = {
            e: {"items": n, "server_cpu_us_per_work": cpu / n * 1e6, "items_per_s": n / seconds}
            for e, (n, cpu, seconds) in per.items()
        }
        results[name]["server_cpu_us_per_work"] = (
            sum(cpu for _, cpu, _ in per.values()) / works * 1e6
        )
        results[name]["items_per_s"] = works / sum(seconds for _, _, seconds in per.values())
        results[name]["sqlite_bytes_per_work"] = sqlite_bytes(work / f"http-{name}.db") / works
        redis_dir = work / f"http-{name}-redis"
        redis_dir.mkdir()
        with redis_server(redis_dir, "everysec") as url:
            client = redis.Redis.from_url(url)
            memory = client.info("memory")["used_memory"]
            log = work / f"http-{name}-redis.log"
            with Service(url, 1, log, MODEL_DIR, checkouts[name]) as service:
                for _, _, body in upload_bodies(files, works):
                    post(service, body)
            used = client.info("memory")["used_memory"] - memory
            results[name]["redis_bytes_per_work"] = used / works
            client.close()
        print(f"POST /items ({name}): {results[name]['items_per_s']:.0f} works/s", flush=True)
    return results


def post(service: Service, body: bytes) -> None:
    response = service.client.post(
        "/items", content=body, headers={"content-type": "application/json"}
    )
    if response.status_code != 200:
        raise RuntimeError(f"POST /items: {response.status_code} {response.text[:500]}")


# Each shipped model and the catalogue it was trained on, where `bash models/build-*.sh` (or
# `python -m training synth`) left it.
CATALOGUES = {
    "models/default": ROOT / "data" / "pixels" / "features.npz",
    "models/synthetic-2048": ROOT / "data" / "synthetic" / "features.npz",
}


def stored_precision() -> dict[str, Any]:
    """How far embeddings recomputed from stored features fall from those of the uploaded
    float32 features, on each shipped model's own catalogue: in the stores' 16-bit steps, and
    in float16 at the same size, for comparison."""
    found = {}
    for model_dir, path in CATALOGUES.items():
        if not path.exists():
            continue
        model = load_model(ROOT / model_dir, LoadOptions(threads=None))
        features = np.load(path)["features"].astype(np.float32)
        uploaded = model.embed_items(features)
        stored = np.stack([features_vector(blob) for blob in features_blobs(list(features))])
        half = features.astype(np.float16).astype(np.float32)
        found[model_dir] = {
            "works": len(features),
            "median_embedding_norm": float(np.median(np.linalg.norm(uploaded, axis=1))),
            "max_abs_difference_16_bit_steps": float(
                np.abs(model.embed_items(stored) - uploaded).max()
            ),
            "max_abs_difference_float16": float(np.abs(model.embed_items(half) - uploaded).max()),
        }
    return found


def print_table(results: dict[str, Any]) -> None:
    load = (results["machine"]["load_average"], results["machine"]["load_average_at_end"])
    print(f"\n{results['machine']['cpus']} cores, load average {load[0]:.1f} to {load[1]:.1f}")
    print(f"bulk load, {results['works']} works of {results['feature_dim']}-d features:")
    print("(CPU per work without the start-up's CPU, a load of nothing)")
    print(
        "checkout  store   encoding  works/s  CPU µs/work  Redis CPU µs/work  bytes/work  "
        "start-up s"
    )
    for name, bulk in results["bulk"].items():
        for store in ("sqlite", "redis"):
            for encoding, run in bulk[store].items():
                server = run.get("redis_cpu_us_per_work")
                server_text = " " * 17 if server is None else f"{server:17.0f}"
                print(
                    f"{name:9s} {store:7s} {encoding:8s} {run['works_per_s']:8.0f} "
                    f"{run['loading_cpu_us_per_work']:12.0f} {server_text} "
                    f"{run['bytes_per_work']:11.0f} {run['start_up_s']:11.1f}"
                )
    print(f"\nPOST /items, {results['http_works']} works in batches of {BATCH_ITEMS}:")
    print("checkout  encoding  works/s  server CPU µs/work  SQLite B/work  Redis B/work")
    for name, run in results["http"].items():
        for encoding in ENCODINGS:
            print(
                f"{name:9s} {encoding:8s} {run[encoding]['items_per_s']:8.0f} "
                f"{run[encoding]['server_cpu_us_per_work']:19.0f} "
                f"{run['sqlite_bytes_per_work']:14.0f} {run['redis_bytes_per_work']:13.0f}"
            )
    print(
        "\nembeddings from stored features against those of the uploaded ones (max |difference|):"
    )
    for model_dir, precision in results["stored_precision"].items():
        print(
            f"{model_dir}, {precision['works']} works: "
            f"{precision['max_abs_difference_16_bit_steps']:.2e} in 16-bit steps, "
            f"{precision['max_abs_difference_float16']:.2e} as float16 "
            f"(embeddings {precision['median_embedding_norm']:.1f} long)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--works", type=int, default=50_000, help="works per bulk load")
    parser.add_argument("--http-works", type=int, default=20_000, help="works per POST run")
    parser.add_argument("--before", type=Path, help="a checkout from before, to compare with")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "ingest.json",
        help="JSON results (default benchmarks/results/ingest.json)",
    )
    args = parser.parse_args(argv)
    if args.http_works < 2 * BATCH_ITEMS:  # batches alternate the two encodings
        parser.error(f"--http-works must be at least {2 * BATCH_ITEMS}")
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        # The 1-minute load average as the run began: the neighbours' share of the cores.
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": os.getloadavg()[0],
        },
        "model": str(MODEL_DIR.relative_to(ROOT)),
        "feature_dim": 2048,
        "works": args.works,
        "http_works": args.http_works,
    }
    with tempfile.TemporaryDirectory(prefix="curatornet-ingest-") as temporary:
        work = Path(temporary)
        began = time.perf_counter()
        files = write_catalogue(work, args.works, args.seed)
        print(f"wrote {args.works} works as NDJSON in {time.perf_counter() - began:.0f} s")
        results["ndjson_bytes_per_work"] = {
            encoding: path.stat().st_size / args.works for encoding, path in files.items()
        }
        checkouts = {"this": ROOT}
        if args.before is not None:
            checkouts["before"] = args.before.resolve()
        results["bulk"] = {
            name: bulk_runs(work, files, args.works, path, name) for name, path in checkouts.items()
        }
        results["http"] = http_runs(work, files, args.http_works, checkouts)
        results["stored_precision"] = stored_precision()
    results["machine"]["load_average_at_end"] = os.getloadavg()[0]
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
