"""End to end on pictures: new paintings in an artist's style, uploaded as image files, reach
a customer of that artist without any retraining (the shipped model, trained on painted works)."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from curatornet.painter import looks, paint, styles_like
from curatornet.synthetic import load_truth
from service.app import create_app
from service.config import Settings
from tests.service.helpers import DEFAULT_MODEL, ROOT
from training.data.formats import load_dataset


@pytest.fixture(scope="module")
def painted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small market (about 660 works) painted and encoded, unseen by the model's training."""
    out = tmp_path_factory.mktemp("painted")
    command = [sys.executable, "-m", "training", "synth", "--images", "--scale", "0.05"]
    subprocess.run([*command, "--seed", "21", "--out", str(out)], cwd=ROOT, check=True)
    return out


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(model_dir=DEFAULT_MODEL, store_url=f"sqlite:///{tmp_path / 's.db'}")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_new_pictures_in_an_artists_style_reach_that_artists_customers(
    client: TestClient, painted: Path
) -> None:
    data = load_dataset(painted)
    truth = load_truth(painted, data)
    catalogue = [
        {
            "id": str(data.item_ids[n]),
            "artist_id": str(data.artist_ids[n]),
            "features_b64": base64.b64encode(data.features[n].astype("<f4").tobytes()).decode(),
            "edition_size": 10,
        }
        for n in range(len(data.item_ids))
    ]
    assert client.post("/items", json={"items": catalogue}).status_code == 200
    artists, counts = np.unique(data.artist_ids, return_counts=True)
    hits = 0
    chosen = [a for a, c in zip(artists, counts, strict=True) if c >= 6][:5]
    for number, artist in enumerate(chosen):
        works = np.flatnonzero(data.artist_ids == artist)
        bought = [str(data.item_ids[n]) for n in works[:3]]
        client.post("/purchases", json={"user_id": f"fan-{artist}", "item_ids": bought})
        new_ids = []
        for j, look in enumerate(looks(styles_like(truth.item_style[works], 5, number))):
            buffer = io.BytesIO()
            paint(look, f"new-{artist}-{j}").save(buffer, "JPEG", quality=90)
            new_id = f"new-{artist}-{j}"
            files = {"image": (f"{new_id}.jpg", buffer.getvalue(), "image/jpeg")}
            form = {"id": new_id, "artist_id": str(artist)}
            response = client.post("/items", data=form, files=files)
            assert response.status_code == 200, response.text
            new_ids.append(new_id)
        top = client.post("/recommend", json={"user_id": f"fan-{artist}", "k": 20}).json()
        hits += len(set(new_ids) & {item["item_id"] for item in top["items"]})
    catalogue_size = client.get("/readyz").json()["index_size"]
    chance = 5 * len(chosen) * 20 / catalogue_size
    assert hits >= max(6, 8 * chance), (hits, chance)  # measured: 11 hits, chance 0.72
