"""What keeping a picture per artwork costs (issue 16): bytes stored per work in SQLite and in
Redis, and picture uploads per second through `POST /items`, with and without the pictures;
and what storing the `--demo` market's paintings would cost, which it repaints instead.

The same uploads go, in the same run, to the real service (`python -m service`, serving the
shipped models/default) from this checkout and from `--before`, a checkout without pictures,
on a fresh SQLite file and a fresh redis-server each. The pictures are the synthetic market's
paintings at 768 pixels, saved as JPEG as a storefront would send them; each is stored at
most 512 pixels on its longer side.

    mkdir /tmp/before && git archive $(git merge-base main HEAD) | tar -x -C /tmp/before
    ./dev run python benchmarks/pictures.py --before /tmp/before [--uploads 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import redis
from durability import free_port
from images import jpeg_paintings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curatornet.painter import looks, paint  # noqa: E402
from curatornet.synthetic import MarketConfig, generate  # noqa: E402
from service.pictures import web_copy  # noqa: E402


def uploads_per_second(checkout: Path, store_url: str, pictures: list[bytes], count: int) -> float:
    """`count` form uploads, one after another, to the service run from `checkout`."""
    port = free_port()
    env = {
        "CURATORNET_MODEL_DIR": str(ROOT / "models" / "default"),
        "CURATORNET_STORE_URL": store_url,
        "CURATORNET_PORT": str(port),
        "CURATORNET_LOG_LEVEL": "warning",
    }
    # `python -m service` from the checkout's root imports that checkout's service package.
    process = subprocess.Popen(
        [sys.executable, "-m", "service"], cwd=checkout, env={**os.environ, **env}
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service from {checkout} did not start")
            time.sleep(0.1)
        began = 0.0
        for n in range(count + 5):
            if n == 5:  # the first few warm the caches
                began = time.perf_counter()
            files = {"image": ("work.jpg", pictures[n % len(pictures)], "image/jpeg")}
            response = client.post("/items", data={"id": f"w{n}", "artist_id": "a"}, files=files)
            if response.status_code != 200:
                raise RuntimeError(response.text)
        return count / (time.perf_counter() - began)
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)


def measure(checkout: Path, pictures: list[bytes], count: int, work: Path) -> dict:
    """Uploads/s and the store's size per work, on SQLite and on Redis."""
    database = work / "store.db"
    sqlite_rate = uploads_per_second(checkout, f"sqlite:///{database}", pictures, count)
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        cwd=work,
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        empty = client.info("memory")["used_memory"]
        redis_rate = uploads_per_second(checkout, f"redis://127.0.0.1:{port}/0", pictures, count)
        used = client.info("memory")["used_memory"] - empty
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=10)
    works = count + 5
    return {
        "sqlite_uploads_per_s": sqlite_rate,
        "redis_uploads_per_s": redis_rate,
        "sqlite_bytes_per_work": sum(
            path.stat().st_size
            for path in work.glob("store.db*")  # with its WAL, if any
        )
        / works,
        "redis_bytes_per_work": used / works,
    }


def demo_paintings(sample: int) -> dict:
    """What `--demo` would store per work, and for the whole market, had it stored paintings
    instead of repainting them on demand: `sample` random works painted and encoded."""
    market = generate(MarketConfig(), seed=0, features=False)
    ids, styles = market.dataset.item_ids, market.truth.item_style
    rows = np.random.default_rng(0).choice(len(ids), sample, replace=False)
    began, sizes = time.perf_counter(), []
    for row in rows:
        sizes.append(len(web_copy(paint(looks(styles[row : row + 1])[0], str(ids[row]))).data))
    per_work = (time.perf_counter() - began) / sample
    return {
        "works": len(ids),
        "ms_per_painting": per_work * 1000,
        "kb_per_painting": float(np.mean(sizes)) / 1024,
        "market_seconds": per_work * len(ids),
        "market_mib": float(np.mean(sizes)) * len(ids) / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", type=Path, required=True, help="a checkout without pictures")
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--demo-sample", type=int, default=500)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/pictures.json")
    args = parser.parse_args(argv)
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed")
    pictures = jpeg_paintings(32, size=768)
    results: dict = {
        "uploads": args.uploads,
        "mean_upload_kb": float(np.mean([len(p) for p in pictures]) / 1024),
    }
    # Before and after take turns, and each keeps its best round: on a shared machine other
    # work only ever slows a round down.
    for _ in range(args.rounds):
        for name, checkout in (("before", args.before.resolve()), ("after", ROOT)):
            with tempfile.TemporaryDirectory() as work:
                measured = measure(checkout, pictures, args.uploads, Path(work))
            print(name, json.dumps(measured))
            best = results.setdefault(name, measured)
            for key in ("sqlite_uploads_per_s", "redis_uploads_per_s"):
                best[key] = max(best[key], measured[key])
    before, after = results["before"], results["after"]
    for store in ("sqlite", "redis"):
        extra = after[f"{store}_bytes_per_work"] - before[f"{store}_bytes_per_work"]
        print(
            f"{store}: {before[f'{store}_uploads_per_s']:.1f} -> "
            f"{after[f'{store}_uploads_per_s']:.1f} picture uploads/s; "
            f"{extra / 1024:.1f} KB more per work"
        )
    demo = results["demo"] = demo_paintings(args.demo_sample)
    print(
        f"demo: {demo['ms_per_painting']:.1f} ms and {demo['kb_per_painting']:.1f} KB a painting; "
        f"all {demo['works']}: {demo['market_seconds']:.0f} s, {demo['market_mib']:.0f} MiB"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
