"""POST /items with images: multipart and base64, through a model whose manifest names the
shipped encoder; every refusal leaves the store untouched."""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sklearn.datasets import load_sample_image

from curatornet.image_encoder import load_image_encoder
from service.app import create_app
from service.config import Settings
from service.ingest import decode
from tests.service.helpers import FEATURES_MODEL, ROOT, exported

ENCODERS = ROOT / "models" / "encoders"


@pytest.fixture(scope="module")
def image_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An (untrained) CuratorNet on the encoder's 1280-d features, naming the shipped encoder."""
    directory = tmp_path_factory.mktemp("image-model")
    shutil.copytree(ENCODERS, directory / "encoder")
    named = {"name": "efficientnet-lite0", "manifest": "encoder/efficientnet-lite0.json"}
    return exported(directory, 1280, 32, named)


def picture(name: str = "china.jpg", format_: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(load_sample_image(name)).save(buffer, format_)
    return buffer.getvalue()


def noise_png(width: int, height: int) -> bytes:
    """Random pixels do not compress: over a megabyte for 800 x 600."""
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def client(image_model: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        model_dir=image_model,
        store_url=f"sqlite:///{tmp_path / 'store.db'}",
        max_image_bytes=1_000_000,
        max_image_pixels=2_000_000,
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def form_upload(client: TestClient, data: bytes, **fields: str):
    kind = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
    files = {"image": ("work", data, kind)}
    return client.post("/items", data={"id": "w1", "artist_id": "a1", **fields}, files=files)


def test_a_multipart_upload_is_encoded_stored_and_recommended(
    client: TestClient, image_model: Path
) -> None:
    response = form_upload(client, picture(), edition_size="5", metadata='{"title": "Temple"}')
    assert response.status_code == 200, response.text
    assert response.json()["created"] == ["w1"]
    stored = client.get("/items/w1", params={"include_features": True}).json()
    assert stored["edition_size"] == 5
    assert stored["metadata"]["title"] == "Temple"
    encoder = load_image_encoder(ENCODERS / "efficientnet-lite0.json")
    expected = encoder.encode([decode(picture(), 10**7, 10**8)])[0]
    # Kept in 16-bit steps: within half a step (1/65534 of the largest value) of the encoder's.
    half_step = np.abs(expected).max() / 65534
    np.testing.assert_allclose(stored["features"], expected, rtol=0, atol=half_step + 1e-5)
    flower = base64.b64encode(picture("flower.jpg", "PNG")).decode()
    both = client.post("/items", json={"id": "w2", "artist_id": "a2", "image_b64": flower})
    assert both.status_code == 200, both.text
    similar = client.get("/items/w1/similar", params={"k": 5}).json()["items"]
    assert [item["item_id"] for item in similar] == ["w2"]


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (picture(format_="GIF"), 415, "GIF images are not accepted"),
        (picture()[:2000], 422, "corrupt or truncated"),
        (b"not an image", 415, "not an image"),
        (noise_png(800, 600), 413, "bytes, more than 1000000"),
    ],
    ids=["gif", "truncated", "text", "too many bytes"],
)
def test_bad_multipart_images_are_refused(
    client: TestClient, data: bytes, status: int, message: str
) -> None:
    response = form_upload(client, data)
    assert response.status_code == status, response.text
    assert message in response.text
    assert client.get("/items/w1").status_code == 404


def test_too_many_pixels_and_form_mistakes(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (2000, 1500)).save(buffer, "PNG")
    big = form_upload(client, buffer.getvalue())
    assert big.status_code == 413
    assert "3000000 pixels" in big.text
    no_file = client.post("/items", data={"id": "w1", "artist_id": "a"}, files={"x": ("a", b"")})
    assert no_file.status_code == 422
    bad_metadata = form_upload(client, picture(), metadata="{not json")
    assert bad_metadata.status_code == 422
    assert "metadata" in bad_metadata.text
    assert client.get("/readyz").json()["index_size"] == 0


def test_a_picture_gets_the_same_status_as_json_and_as_a_form(client: TestClient) -> None:
    """Too many pixels is a 413 and a GIF a 415 however the picture came."""
    for data, status in ((png(2000, 1500), 413), (picture(format_="GIF"), 415)):
        as_form = form_upload(client, data)
        body = {"id": "w1", "artist_id": "a", "image_b64": base64.b64encode(data).decode()}
        as_json = client.post("/items", json=body)
        assert (as_form.status_code, as_json.status_code) == (status, status), as_json.text
        assert as_json.json()["detail"] == as_form.json()["detail"]
    assert client.get("/items/w1").status_code == 404


@pytest.mark.parametrize(("format_", "declared"), [("JPEG", "image/png"), ("PNG", "image/webp")])
def test_a_picture_must_be_what_its_content_type_says(
    client: TestClient, format_: str, declared: str
) -> None:
    data = picture(format_=format_)
    files = {"image": ("work", data, declared)}
    response = client.post("/items", data={"id": "w1", "artist_id": "a"}, files=files)
    assert response.status_code == 415, response.text
    assert f"image sent as {declared}" in response.text
    assert client.get("/items/w1").status_code == 404
    files = {"image": ("work", data, "application/octet-stream")}  # no claim: no check
    assert (
        client.post("/items", data={"id": "w1", "artist_id": "a"}, files=files).status_code == 200
    )


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("size", [(20_000, 1), (1, 20_000), (2_000, 1), (2_100, 100)])
def test_thin_pictures_are_refused_before_they_are_resized(
    client: TestClient, size: tuple[int, int]
) -> None:
    """A 20000 x 1 PNG is 141 bytes, but resizing its short side to 256 would make it
    5,120,000 x 256 pixels (5 GB); it is refused, as multipart and as base64, in no time."""
    data = png(*size)
    assert len(data) < 2_000
    as_form = form_upload(client, data)
    assert as_form.status_code == 422, as_form.text
    assert "at most 20 times the other" in as_form.text
    as_json = {"id": "w1", "artist_id": "a", "image_b64": base64.b64encode(data).decode()}
    response = client.post("/items", json=as_json)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "image_b64"]
    assert client.get("/items/w1").status_code == 404


def test_a_picture_twenty_times_as_wide_as_high_is_still_taken(client: TestClient) -> None:
    assert form_upload(client, png(2_000, 100)).status_code == 200


def test_base64_that_is_not_ascii_is_a_422(client: TestClient) -> None:
    response = client.post("/items", json={"id": "w1", "artist_id": "a", "image_b64": "é" * 8})
    assert response.status_code == 422, response.text
    assert "not base64" in response.text
    assert client.get("/items/w1").status_code == 404


def test_a_bad_image_in_a_batch_refuses_the_whole_batch(client: TestClient) -> None:
    good = base64.b64encode(picture()).decode()
    bad = base64.b64encode(picture()[:2000]).decode()
    batch = {
        "items": [
            {"id": "ok", "artist_id": "a", "image_b64": good},
            {"id": "broken", "artist_id": "a", "image_b64": bad},
        ]
    }
    response = client.post("/items", json=batch)
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "items", 1, "image_b64"]
    assert "corrupt or truncated" in detail["msg"]
    assert client.get("/items/ok").status_code == 404


def test_a_model_without_an_image_encoder_refuses_images(tmp_path: Path) -> None:
    settings = Settings(model_dir=FEATURES_MODEL, store_url=f"sqlite:///{tmp_path / 's.db'}")
    with TestClient(create_app(settings)) as client:
        response = form_upload(client, picture())
        assert response.status_code == 422
        assert "names no image encoder" in response.text
        as_json = {"id": "w", "artist_id": "a", "image_b64": base64.b64encode(b"x").decode()}
        assert "names no image encoder" in client.post("/items", json=as_json).text
    manifest = json.loads((FEATURES_MODEL / "manifest.json").read_text())
    assert manifest["feature_extractor"] is None
