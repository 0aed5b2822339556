"""GET /items/{id}/image (issue 16): the web-sized picture kept beside each work uploaded as
one, through real HTTP to `python -m service` on both stores, with the shipped picture model."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image
from sklearn.datasets import load_sample_image

from service.pictures import MAX_SIDE, MEDIA_TYPE, PAINTED_STYLE, STYLE_DIM, not_modified
from tests.service.helpers import DEFAULT_MODEL, LiveService, random_item


@pytest.fixture
def service(store_url: str) -> Iterator[httpx.Client]:
    live = LiveService(store_url, CURATORNET_MODEL_DIR=str(DEFAULT_MODEL))
    try:
        yield live.client
    finally:
        live.stop()


def jpeg(name: str = "china.jpg") -> bytes:
    """A 640 x 427 photograph: larger than the stored copy on both sides."""
    buffer = io.BytesIO()
    Image.fromarray(load_sample_image(name)).save(buffer, "JPEG")
    return buffer.getvalue()


def form_upload(client: httpx.Client, item_id: str, data: bytes) -> httpx.Response:
    files = {"image": ("work.jpg", data, "image/jpeg")}
    return client.post("/items", data={"id": item_id, "artist_id": "a1"}, files=files)


def b64_item(item_id: str, data: bytes, **fields: object) -> dict:
    return {
        "id": item_id,
        "artist_id": "a1",
        "image_b64": base64.b64encode(data).decode(),
        **fields,
    }


def served(client: httpx.Client, item_id: str) -> Image.Image:
    response = client.get(f"/items/{item_id}/image")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == MEDIA_TYPE
    assert response.headers["cache-control"] == "public, max-age=300"
    picture = Image.open(io.BytesIO(response.content))
    assert picture.get_format_mimetype() == MEDIA_TYPE
    assert max(picture.size) <= MAX_SIDE
    return picture


def test_pictures_are_kept_served_revalidated_replaced_and_deleted(
    service: httpx.Client,
) -> None:
    assert form_upload(service, "form", jpeg()).status_code == 200
    assert service.post("/items", json=b64_item("b64", jpeg("flower.jpg"))).status_code == 200
    assert served(service, "form").size == (512, 342)  # 640 x 427, the aspect ratio kept
    served(service, "b64")

    first = service.get("/items/form/image")
    tag = first.headers["etag"]
    assert len(first.content) < 60_000  # a few tens of KB, not the upload
    again = service.get("/items/form/image", headers={"If-None-Match": tag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == tag
    assert service.get("/items/form/image", headers={"If-None-Match": '"other"'}).status_code == 200

    # Uploaded again with another picture: new bytes, new ETag, the old one no longer current.
    assert form_upload(service, "form", jpeg("flower.jpg")).status_code == 200
    replaced = service.get("/items/form/image", headers={"If-None-Match": tag})
    assert replaced.status_code == 200
    assert replaced.headers["etag"] != tag

    # Uploaded again as features: the work no longer has a picture.
    features = random_item("b64", "a1", dim=1280)
    features["metadata"] = {"image_url": "https://example.org/b64.jpg"}
    assert service.post("/items", json=features).status_code == 200
    gone = service.get("/items/b64/image")
    assert gone.status_code == 404
    assert gone.json() == {"detail": "item 'b64' has no picture"}
    assert service.get("/items/b64").json()["metadata"]["image_url"].endswith("b64.jpg")

    # A work carrying the demo's painted_style is repainted, at the painter's 256 pixels.
    demo = random_item("demo", "a1", dim=1280)
    demo["metadata"] = {PAINTED_STYLE: [0.5] * STYLE_DIM}
    bad = random_item("bad", "a1", dim=1280)
    bad["metadata"] = {PAINTED_STYLE: [1e6] * STYLE_DIM}  # nothing the generator makes
    assert service.post("/items", json={"items": [demo, bad]}).status_code == 200
    assert served(service, "demo").size == (256, 256)
    assert service.get("/items/bad/image").status_code == 404

    assert service.delete("/items/form").status_code == 200
    assert service.get("/items/form/image").json() == {"detail": "no item 'form'"}
    assert service.get("/items/never/image").status_code == 404


def test_a_refused_batch_stores_no_picture(service: httpx.Client) -> None:
    """Refused by the checks (a corrupt second picture) and by the store itself (a stock the
    sold edition cannot give, found inside its transaction or script): nothing is kept."""
    corrupt = {"items": [b64_item("p1", jpeg()), b64_item("p2", jpeg()[:500])]}
    assert service.post("/items", json=corrupt).status_code in (415, 422)
    assert service.get("/items/p1/image").status_code == 404

    assert service.post("/items", json=random_item("sold", "a1", dim=1280)).status_code == 200
    sale = service.post("/purchases", json={"user_id": "u", "item_ids": ["sold"]})
    assert sale.status_code == 201
    exhausted = {"items": [b64_item("p1", jpeg()), b64_item("sold", jpeg(), stock=1)]}
    assert service.post("/items", json=exhausted).status_code == 409
    assert service.get("/items/p1/image").status_code == 404
    assert service.get("/items/sold/image").status_code == 404


def test_if_none_match_is_compared_weakly_and_takes_lists_and_a_star() -> None:
    tag = '"abc"'
    assert not_modified(tag, tag)
    assert not_modified('W/"abc"', tag)  # a proxy may weaken it
    assert not_modified('"x", "abc"', tag)
    assert not_modified("*", tag)
    assert not not_modified('"abcd"', tag)
    assert not not_modified(None, tag)


def test_pictures_stay_public_when_a_key_guards_writes_and_histories(store_url: str) -> None:
    live = LiveService(store_url, CURATORNET_MODEL_DIR=str(DEFAULT_MODEL), CURATORNET_API_KEY="k")
    try:
        assert form_upload(live.client, "w", jpeg()).status_code == 401
        live.client.headers["X-API-Key"] = "k"
        assert form_upload(live.client, "w", jpeg()).status_code == 200
        del live.client.headers["X-API-Key"]
        served(live.client, "w")
    finally:
        live.stop()
