"""Building blocks for the HTTP tests: app clients, artworks from a real market, live servers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from curatornet.dataset import Dataset
from tests.service.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
# The model trained on feature vectors (the 2048-d UGallery shape): most tests post vectors.
FEATURES_MODEL = ROOT / "models" / "synthetic-2048"
# The shipped model, trained on the painted market's image features; it takes pictures.
DEFAULT_MODEL = ROOT / "models" / "default"


def item_payload(data: Dataset, row: int, **overrides) -> dict:
    """An artwork of a generated market as POST /items takes it."""
    payload = {
        "id": str(data.item_ids[row]),
        "artist_id": str(data.artist_ids[row]),
        "features": data.features[row].tolist(),
        "metadata": {"title": f"work {row}", "price": 100.0, "tags": ["test"]},
    }
    if data.edition_size[row] > 1:
        payload["edition_size"] = int(data.edition_size[row])
    return {**payload, **overrides}


def random_item(item_id: str, artist: str = "artist", seed: int = 0, dim: int = 2048) -> dict:
    rng = np.random.default_rng(seed)
    features = np.abs(rng.normal(size=dim)).astype(np.float32)
    return {"id": item_id, "artist_id": artist, "features": features.tolist()}


def exported(
    directory: Path, feature_dim: int, embedding_dim: int, extractor: dict | None = None
) -> Path:
    """A real export (untrained towers) of any shape, naming an image encoder when given."""
    from training.export import export_model
    from training.model import CuratorNet, ModelConfig

    config = ModelConfig(item_layers=(64, embedding_dim), user_layers=(64, embedding_dim))
    model = CuratorNet(np.zeros(feature_dim), np.ones(feature_dim), config)
    export_model(model, directory, {"purpose": "tests"}, extractor)
    return directory


class LiveService:
    """`python -m service` in its own process, as a deployment runs it."""

    def __init__(self, store_url: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {
            **os.environ,
            "CURATORNET_STORE_URL": store_url,
            "CURATORNET_MODEL_DIR": str(FEATURES_MODEL),
            "CURATORNET_PORT": str(self.port),
            "CURATORNET_LOG_LEVEL": "warning",
            **env,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=ROOT, env=environment
        )
        self.client = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the service on port {self.port} did not become ready")
            time.sleep(0.1)

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
