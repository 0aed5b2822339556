"""Image throughput: the encoder on this machine's cores, and POST /items with one picture.

Prints its figures and writes them as JSON (default benchmarks/results/images.json). The
pictures are the synthetic market's own paintings, saved as JPEG as a storefront would send
them. The end-to-end part starts the real service (`python -m service`) with the shipped model
(models/default, whose manifest names the encoder) on a fresh SQLite store.

    ./dev run python benchmarks/images.py [--uploads 60] [--seconds 5]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ENCODER = ROOT / "models" / "encoders" / "efficientnet-lite0.json"
MODEL_DIR = ROOT / "models" / "default"  # the shipped model, trained on painted works
sys.path.insert(0, str(ROOT))

from curatornet.image_encoder import load_image_encoder  # noqa: E402
from curatornet.painter import looks, paint  # noqa: E402
from service.ingest import decode  # noqa: E402


def jpeg_paintings(count: int, size: int = 256) -> list[bytes]:
    """`count` seeded paintings of `size` pixels a side, as JPEG bytes (quality 90)."""
    styles = np.random.default_rng(0).normal(size=(count, 16))
    pictures = []
    for n, look in enumerate(looks(styles)):
        buffer = io.BytesIO()
        paint(look, f"bench-{n}", size=size).save(buffer, "JPEG", quality=90)
        pictures.append(buffer.getvalue())
    return pictures


def encoder_throughput(pictures: list[bytes], batch: int, seconds: float, threads: int) -> float:
    """Images per second from JPEG bytes to features: decode, preprocess, CNN."""
    encoder = load_image_encoder(ENCODER, threads)
    encoder.encode([decode(pictures[0], 10**8, 10**8)])  # warm-up
    done, started, n = 0, time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        chunk = [pictures[(n + j) % len(pictures)] for j in range(batch)]
        encoder.encode([decode(data, 10**8, 10**8) for data in chunk])
        done += batch
        n += batch
    return done / (time.perf_counter() - started)


def upload_latency(pictures: list[bytes], uploads: int, work: Path) -> dict:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "CURATORNET_MODEL_DIR": str(MODEL_DIR),
        "CURATORNET_STORE_URL": f"sqlite:///{work / 'images.db'}",
        "CURATORNET_PORT": str(port),
        "CURATORNET_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env)
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
                raise RuntimeError("the service did not start")
            time.sleep(0.1)
        latencies = []
        for n in range(uploads + 5):
            files = {"image": (f"w{n}.jpg", pictures[n % len(pictures)], "image/jpeg")}
            began = time.perf_counter()
            response = client.post("/items", data={"id": f"w{n}", "artist_id": "a"}, files=files)
            elapsed = time.perf_counter() - began
            if response.status_code != 200:
                raise RuntimeError(response.text)
            if n >= 5:  # the first few warm the caches
                latencies.append(elapsed * 1000)
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)
    ordered = sorted(latencies)
    return {
        "uploads": len(latencies),
        "p50_ms": statistics.median(latencies),
        "p95_ms": ordered[int(0.95 * (len(ordered) - 1))],
        "max_ms": ordered[-1],
        "mean_jpeg_kb": float(np.mean([len(p) for p in pictures]) / 1024),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uploads", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/images.json")
    args = parser.parse_args(argv)
    pictures = jpeg_paintings(64)
    results: dict = {"cores": os.cpu_count(), "encoder": ENCODER.stem, "throughput": {}}
    for threads in (1, 2):
        for batch in (1, 16):
            rate = encoder_throughput(pictures, batch, args.seconds, threads)
            results["throughput"][f"threads={threads},batch={batch}"] = rate
            print(f"encoder, {threads} thread(s), batch {batch:>2}: {rate:6.1f} images/s")
    with tempfile.TemporaryDirectory() as work:
        results["post_items_one_image"] = upload_latency(pictures, args.uploads, Path(work))
    upload = results["post_items_one_image"]
    print(
        f"POST /items with one JPEG ({upload['mean_jpeg_kb']:.0f} KB, 1 inference thread): "
        f"p50 {upload['p50_ms']:.1f} ms, p95 {upload['p95_ms']:.1f} ms over {upload['uploads']}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
