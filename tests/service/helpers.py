"""Building blocks for the HTTP tests: app clients, artworks from a real market, live servers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from curatornet.dataset import Dataset
from tests.service.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
# How long tests wait for another process to apply a change. The service syncs within a
# second (benchmarks/serve.py measures it); tests run on loaded 2-core machines, so they poll
# for up to ten times that before calling it a failure.
SYNC_DEADLINE_S = 10.0
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


def version_1_copy(directory: Path, out: Path) -> Path:
    """A paper-architecture export rewritten as format version 1 wrote it: the user tower
    returns [B, E] (no interest axis), the manifest has no `interests` and scores by "dot"."""
    import onnx
    from onnx import helper

    out = Path(shutil.copytree(directory, out))
    graph = onnx.load(out / "user_tower.onnx")
    (last,) = [node for node in graph.graph.node if "user" in node.output]
    assert last.op_type == "Unsqueeze"
    graph.graph.node.remove(last)
    graph.graph.node.append(helper.make_node("Identity", [last.input[0]], ["user"]))
    e = graph.graph.output[0].type.tensor_type.shape.dim[2].dim_value
    graph.graph.output.pop()
    graph.graph.output.append(
        helper.make_tensor_value_info("user", onnx.TensorProto.FLOAT, ["B", e])
    )
    onnx.save(graph, out / "user_tower.onnx")

    def as_version_1(manifest: dict) -> None:
        manifest.update(format_version=1, score="dot")
        del manifest["interests"]
        manifest["user_tower"]["outputs"] = {"user": ["B", e]}
        manifest["user_tower"]["sha256"] = hashlib.sha256(
            (out / "user_tower.onnx").read_bytes()
        ).hexdigest()

    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    as_version_1(manifest)
    path.write_text(json.dumps(manifest))
    return out


def eventually(condition: Callable[[], bool], seconds: float = SYNC_DEADLINE_S) -> bool:
    """Polls `condition` until it holds or `seconds` pass; its last answer."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


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
