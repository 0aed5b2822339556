"""Inputs a hostile client sent (issue 15), kept as tests: each through real HTTP on both
stores, each answered with a 4xx, each leaving nothing stored. A 5xx is always a defect."""

from __future__ import annotations

import base64
import io
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image
from sklearn.datasets import load_sample_image

from service.ingest import MIN_NORM_CATALOGUE
from service.stores.redis import PREFIX
from tests.service.helpers import ROOT, eventually, exported, random_item
from tests.service.test_api import counts, post_items, running

JSON = {"content-type": "application/json"}


@pytest.fixture
def client(store_url: str) -> Iterator[TestClient]:
    with running(store_url) as test_client:
        yield test_client


def nothing_stored(client: TestClient, *item_ids: str) -> None:
    for item_id in item_ids:
        assert client.get(f"/items/{item_id}").status_code == 404
    assert counts(client) == 0


# --- numbers no store can hold (Critical 2, Medium 5) ------------------------------------------


@pytest.mark.parametrize("field", ["edition_size", "stock"])
@pytest.mark.parametrize("value", [10**17, 2**63, 2**64, 1_000_001])
def test_huge_editions_and_stocks_are_refused_as_json(
    client: TestClient, field: str, value: int
) -> None:
    """On Redis 1e17 was stored as "1e+17", which every reader and follower then failed on;
    on SQLite 2**63 overflowed. Both are refused before anything is written."""
    body = {**random_item("huge"), "edition_size": value, field: value}
    response = client.post("/items", json=body)
    assert response.status_code == 422, response.text
    assert "less than or equal to 1000000" in response.text
    nothing_stored(client, "huge")


@pytest.mark.parametrize("field", ["edition_size", "stock"])
def test_huge_editions_and_stocks_are_refused_in_forms(client: TestClient, field: str) -> None:
    fields = {"id": "huge", "artist_id": "a", "edition_size": "2", field: str(10**17)}
    files = {"image": ("w.png", b"\x89PNG", "image/png")}
    response = client.post("/items", data=fields, files=files)
    assert response.status_code == 422, response.text
    nothing_stored(client, "huge")


def test_a_poisoned_redis_count_is_still_read(redis_server: str) -> None:
    """A store written before the bound can hold a stock Lua wrote as "1e+17": the work is
    read, deleted, and the change follower of another process goes on following."""
    url = f"{redis_server}/63"
    redis.Redis.from_url(url).flushdb()
    with running(url) as writer, running(url) as reader:
        post_items(writer, [{**random_item("poisoned"), "edition_size": 5}])
        raw = redis.Redis.from_url(url)
        raw.hset(f"{PREFIX}item:poisoned", mapping={"stock": "1e+17", "edition_size": "1e+17"})
        item = writer.get("/items/poisoned")
        assert item.status_code == 200, item.text
        assert item.json()["stock"] == 10**17
        post_items(writer, [random_item("later", seed=1)])
        assert eventually(lambda: reader.get("/readyz").json()["index_size"] == 2)
        assert writer.delete("/items/poisoned").status_code == 200
        assert eventually(lambda: reader.get("/readyz").json()["index_size"] == 1)


@pytest.mark.parametrize("bought", [["poisoned"], ["fine", "poisoned"], ["poisoned", "fine"]])
def test_a_poisoned_redis_count_can_be_bought(redis_server: str, bought: list[str]) -> None:
    """Redis scripts do not roll back: a stock the check phase read as a number ("1e+17") but
    HINCRBY refused would take stock from the works before it, record no history and answer
    500. The script rewrites such counts as digits before its first write."""
    url = f"{redis_server}/63"
    redis.Redis.from_url(url).flushdb()
    with running(url) as client:
        post_items(client, [random_item("fine"), {**random_item("poisoned", seed=1)}])
        raw = redis.Redis.from_url(url)
        raw.hset(f"{PREFIX}item:poisoned", mapping={"stock": "1e+17", "sold": "0e+00"})
        sale = client.post("/purchases", json={"user_id": "u", "item_ids": bought})
        assert sale.status_code == 201, sale.text
        history = client.get("/users/u/history").json()["purchases"]
        assert [p["item_id"] for p in history] == bought
        assert client.get("/items/poisoned").json()["stock"] == 10**17 - 1
        assert client.get("/items/fine").json()["stock"] == (0 if "fine" in bought else 1)
        assert raw.hget(f"{PREFIX}item:poisoned", "stock") == b"99999999999999999"


# --- a sold one-of-a-kind work put back on sale (Medium 3) ---------------------------------


def test_a_sold_unique_work_cannot_be_put_back_on_sale(client: TestClient) -> None:
    post_items(client, [random_item("unique")])
    sale = {"user_id": "u1", "item_ids": ["unique"]}
    assert client.post("/purchases", json=sale).status_code == 201
    again = client.post("/items", json={**random_item("unique", seed=2), "stock": 1})
    assert again.status_code == 409, again.text
    assert again.json()["item_ids"] == ["unique"]
    assert client.get("/items/unique").json()["stock"] == 0
    second = client.post("/purchases", json={"user_id": "u2", "item_ids": ["unique"]})
    assert second.status_code == 409
    assert client.get("/users/u2/history").status_code == 404
    # without a stock the replacement is taken, and stays sold
    assert client.post("/items", json=random_item("unique", seed=3)).status_code == 200
    assert client.get("/items/unique").json()["stock"] == 0


def test_an_edition_takes_back_only_what_is_unsold(client: TestClient) -> None:
    post_items(client, [{**random_item("print"), "edition_size": 3}])
    sale = {"user_id": "u", "item_ids": ["print", "print"]}
    assert client.post("/purchases", json=sale).status_code == 201
    too_many = {**random_item("print"), "edition_size": 3, "stock": 2}
    fresh = {**random_item("other", seed=1), "stock": 1}
    refused = client.post("/items", json={"items": [fresh, too_many]})
    assert refused.status_code == 409, refused.text
    assert refused.json()["item_ids"] == ["print"]
    assert client.get("/items/other").status_code == 404  # the whole batch was refused
    assert client.get("/items/print").json()["stock"] == 1
    enough = client.post("/items", json={**too_many, "stock": 1})
    assert enough.status_code == 200, enough.text
    bigger = client.post("/items", json={**too_many, "edition_size": 5, "stock": 3})
    assert bigger.status_code == 200, bigger.text
    assert client.get("/items/print").json()["stock"] == 3


# --- features of huge magnitude (Medium 4) --------------------------------------------------


@pytest.mark.parametrize("value", [1e6, 3.4e38, -1001.0])
def test_features_far_beyond_any_encoder_are_refused(client: TestClient, value: float) -> None:
    features = [0.5] * 2047 + [value]
    response = client.post("/items", json={"id": "loud", "artist_id": "a", "features": features})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "features", 2047]
    assert "no encoder gives such values" in response.text
    nothing_stored(client, "loud")


def test_an_embedding_that_is_not_finite_is_refused(tmp_path: Path) -> None:
    """The paper's architecture has no bound on its output: features at float32's edge,
    admitted by a loosened setting, overflow it, and the work is refused, not stored."""
    model = exported(tmp_path / "paper", feature_dim=8, embedding_dim=4)
    store = f"sqlite:///{tmp_path / 'store.db'}"
    with running(store, model_dir=model, max_feature_magnitude=3.4e38) as client:
        body = {"id": "nan", "artist_id": "a", "features": [3.4e38, -3.4e38] * 4}
        response = client.post("/items", json=body)
        assert response.status_code == 422, response.text
        assert "embedding of these features is not finite" in response.text
        nothing_stored(client, "nan")


@pytest.fixture(scope="module")
def paper_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The paper's architecture, whose embedding grows with its input: unlike the shipped
    multi-interest model, which normalises features first, it lets features inside the
    magnitude bound embed far longer than the catalogue's works."""
    return exported(tmp_path_factory.mktemp("models") / "paper", 2048, 32)


@pytest.fixture(scope="module")
def picture_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The paper's architecture on the shipped image encoder's features."""
    directory = tmp_path_factory.mktemp("picture-model")
    shutil.copytree(ROOT / "models" / "encoders", directory / "encoder")
    named = {"name": "efficientnet-lite0", "manifest": "encoder/efficientnet-lite0.json"}
    return exported(directory, 1280, 32, named)


CATALOGUE = [random_item(f"w{i}", artist=f"a{i % 3}", seed=i) for i in range(MIN_NORM_CATALOGUE)]
# 448 times the catalogue's median length with `paper_model`, every value inside ±1000.
LOUD = {"id": "loud", "artist_id": "a", "features": [1000.0] * 2048}


@pytest.fixture
def paper_client(store_url: str, paper_model: Path) -> Iterator[TestClient]:
    with running(store_url, model_dir=paper_model) as test_client:
        post_items(test_client, CATALOGUE)
        yield test_client


def test_an_embedding_far_outside_the_catalogue_is_refused(paper_client: TestClient) -> None:
    """Before the guard this work was stored and ranked first for every customer."""
    response = paper_client.post("/items", json=LOUD)
    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "features"]
    assert "'loud' embeds" in problem["msg"]
    assert "times the catalogue's median" in problem["msg"]
    assert paper_client.get("/items/loud").status_code == 404
    assert counts(paper_client) == len(CATALOGUE)


def test_a_batch_with_one_outsized_work_stores_nothing(paper_client: TestClient) -> None:
    batch = [random_item("fine", seed=99), {**LOUD, "features": [10.0] * 2048}]
    response = paper_client.post("/items", json={"items": batch})
    assert response.status_code == 422, response.text
    assert [p["loc"] for p in response.json()["detail"]] == [["body", "items", 1, "features"]]
    for item_id in ("fine", "loud"):
        assert paper_client.get(f"/items/{item_id}").status_code == 404
    assert counts(paper_client) == len(CATALOGUE)
    post_items(paper_client, batch[:1])  # the normal work alone is welcome
    assert counts(paper_client) == len(CATALOGUE) + 1


def test_a_catalogue_too_small_to_judge_takes_any_finite_work(
    store_url: str, paper_model: Path
) -> None:
    with running(store_url, model_dir=paper_model) as client:
        post_items(client, CATALOGUE[:-1])
        post_items(client, [LOUD])
        assert client.get("/items/loud").status_code == 200


def test_after_a_roll_out_uploads_are_measured_against_the_new_model(
    store_url: str, paper_model: Path
) -> None:
    """The catalogue was indexed by the multi-interest model, whose embeddings all have one
    length whatever the input; rolled out to the paper's, the re-embedded catalogue's norms
    judge uploads, and the work the old model let in, outsized under the new one, does not
    move their median."""
    keys = {"api_key": "k", "admin_key": "k", "models_root": Path(tempfile.gettempdir())}
    with running(store_url, **keys) as client:
        client.headers["X-API-Key"] = "k"
        post_items(client, CATALOGUE)
        assert client.post("/items", json={**LOUD, "id": "before"}).status_code == 200
        rolled = client.post("/admin/model", json={"model_dir": str(paper_model)})
        assert rolled.status_code == 200, rolled.text
        response = client.post("/items", json=LOUD)
        assert response.status_code == 422, response.text
        assert client.get("/items/loud").status_code == 404
        post_items(client, [random_item("fine", seed=99)])


def test_normal_pictures_pass_the_norm_guard(store_url: str, picture_model: Path) -> None:
    """Pictures of every kind (photographs, flat colours, noise) embed near the catalogue's
    norms, so the guard never refuses a real picture."""
    with running(store_url, model_dir=picture_model) as client:
        catalogue = [
            {"id": f"p{n}", "artist_id": "a", "image_b64": base64.b64encode(data).decode()}
            for n, data in enumerate(pictures())
        ]
        post_items(client, catalogue[1:])
        assert counts(client) >= MIN_NORM_CATALOGUE
        files = {"image": ("work.png", pictures()[0], "image/png")}
        response = client.post("/items", data={"id": "new", "artist_id": "a"}, files=files)
        assert response.status_code == 200, response.text


def pictures() -> list[bytes]:
    """Twelve PNGs: the two sample photographs, their crops, flat colours and noise."""
    rng = np.random.default_rng(0)
    arrays = [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]
    arrays += [a[y : y + 200, x : x + 300] for a in arrays[:2] for y, x in ((0, 0), (200, 100))]
    arrays += [np.full((240, 320, 3), colour, np.uint8) for colour in (0, 90, 180, 255)]
    arrays += [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(2)]
    encoded = []
    for array in arrays:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    return encoded


# --- bodies that made the service answer 500 (Medium 5) -------------------------------------

_FEATURES = ", ".join(["0.5"] * 2048)
RAW_BODIES = {
    "NaN k": ("/recommend", '{"history": ["x"], "k": NaN}'),
    "Infinity k": ("/recommend", '{"history": ["x"], "k": Infinity}'),
    "1e400 k": ("/recommend", '{"history": ["x"], "k": 1e400}'),
    "NaN in an unknown field": ("/recommend", '{"history": ["x"], "colour": NaN}'),
    "surrogate history id": ("/recommend", '{"history": ["\\ud800"]}'),
    "surrogate key": ("/recommend", '{"\\ud800": 1, "history": ["x"]}'),
    "surrogate user": ("/purchases", '{"user_id": "\\udfff", "item_ids": ["x"]}'),
    "surrogate in metadata": (
        "/items",
        f'{{"id": "x", "artist_id": "a", "features": [{_FEATURES}], '
        '"metadata": {"title": "ok", "notes": "\\ud800"}}',
    ),
    "NaN in metadata": (
        "/items",
        f'{{"id": "x", "artist_id": "a", "features": [{_FEATURES}], "metadata": {{"n": NaN}}}}',
    ),
    "metadata nested 900 deep": (
        "/items",
        f'{{"id": "x", "artist_id": "a", "features": [{_FEATURES}], '
        f'"metadata": {{"a": {"[" * 900}{"]" * 900}}}}}',
    ),
    "metadata nested 9 deep": (
        "/items",
        f'{{"id": "x", "artist_id": "a", "features": [{_FEATURES}], '
        f'"metadata": {{"a": {"[" * 9}{"]" * 9}}}}}',
    ),
    "features as strings": (
        "/items",
        '{"id": "x", "artist_id": "a", "features": [' + ", ".join(['"0.5"'] * 2048) + "]}",
    ),
    "features as booleans": (
        "/items",
        '{"id": "x", "artist_id": "a", "features": [' + ", ".join(["true"] * 2048) + "]}",
    ),
    "non-ASCII base64 features": ("/items", '{"id": "x", "artist_id": "a", "features_b64": "é"}'),
    "non-ASCII base64 image": ("/items", '{"id": "x", "artist_id": "a", "image_b64": "ü=="}'),
}


@pytest.mark.parametrize("case", list(RAW_BODIES))
def test_bodies_that_used_to_answer_500_get_a_422(client: TestClient, case: str) -> None:
    path, body = RAW_BODIES[case]
    response = client.post(path, content=body, headers=JSON)
    assert response.status_code == 422, response.text
    json.loads(response.text)  # a plain JSON error, whatever the body held
    nothing_stored(client, "x")


def test_a_metadata_nesting_within_the_bound_is_kept(client: TestClient) -> None:
    nested: dict = {"leaf": 1}
    for _ in range(7):
        nested = {"a": nested}
    post_items(client, [{**random_item("deep"), "metadata": nested}])
    assert client.get("/items/deep").json()["metadata"] == {**nested, "tags": []}


@pytest.mark.parametrize("limit", ["9223372036854775808", "1000001", "0", "-1"])
def test_history_limits_beyond_int64_are_refused(client: TestClient, limit: str) -> None:
    post_items(client, [random_item("a")])
    assert client.post("/purchases", json={"user_id": "u", "item_ids": ["a"]}).status_code == 201
    response = client.get("/users/u/history", params={"limit": limit})
    assert response.status_code == 422, response.text
    assert client.get("/users/u/history", params={"limit": 1_000_000}).status_code == 200


# --- metrics labels (7) ------------------------------------------------------------------


def test_made_up_methods_share_one_metrics_label(client: TestClient) -> None:
    for n in range(30):
        assert client.request(f"Q{n}", "/items/x").status_code == 405
    metrics = client.get("/metrics").text
    assert "Q0" not in metrics
    assert 'method="other",route="/items/{item_id}",status="405"} 30.0' in metrics


# --- a purchase retried after an answer it never saw (6) -------------------------------------


def test_a_purchase_retried_with_its_idempotency_key_is_recorded_once(
    client: TestClient,
) -> None:
    post_items(client, [{**random_item("print"), "edition_size": 5}])
    key = {"Idempotency-Key": "3f1c7a9e-retry-1"}
    body = {"user_id": "u", "item_ids": ["print", "print"]}
    first = client.post("/purchases", json=body, headers=key)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    again = client.post("/purchases", json=body, headers=key)
    assert again.status_code == 201, again.text
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert client.get("/items/print").json()["stock"] == 3
    assert len(client.get("/users/u/history").json()["purchases"]) == 2
    other = client.post("/purchases", json={**body, "item_ids": ["print"]}, headers=key)
    assert other.status_code == 422, other.text
    assert "used within the last day for another purchase" in other.text
    assert client.get("/items/print").json()["stock"] == 3
    assert client.post("/purchases", json=body).status_code == 201  # no key: a new sale
    assert client.get("/items/print").json()["stock"] == 1


def test_a_sold_out_purchase_replays_what_it_sold_out(client: TestClient) -> None:
    post_items(client, [random_item("unique")])
    key = {"Idempotency-Key": "k"}
    body = {"user_id": "u", "item_ids": ["unique"], "timestamp": "2024-05-01T10:00:00.123456Z"}
    first = client.post("/purchases", json=body, headers=key).json()
    assert first["sold_out"] == ["unique"]
    assert client.post("/purchases", json=body, headers=key).json() == first


@pytest.mark.parametrize("key", [b"", b"has space", b"x" * 201, "é".encode()])
def test_malformed_idempotency_keys_are_refused(client: TestClient, key: bytes) -> None:
    post_items(client, [random_item("a")])
    body = {"user_id": "u", "item_ids": ["a"]}
    headers = {"Idempotency-Key": key}
    response = client.post("/purchases", json=body, headers=headers)
    assert response.status_code == 422, response.text
    assert client.get("/items/a").json()["stock"] == 1


# --- answers as the OpenAPI document declares them (10) ----------------------------------


def test_a_deleted_work_has_no_similar_works(client: TestClient) -> None:
    post_items(client, [random_item("gone"), random_item("kept", seed=1)])
    assert client.get("/items/gone/similar").status_code == 200
    assert client.delete("/items/gone").status_code == 200
    similar = client.get("/items/gone/similar")
    assert similar.status_code == 404, similar.text
    assert similar.json()["item_ids"] == ["gone"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/items/a/similar?k=501", None),
        ("POST", "/recommend", {"history": ["a"], "k": 501}),
    ],
)
def test_settings_checks_answer_in_the_declared_422_shape(
    client: TestClient, method: str, path: str, body: dict | None
) -> None:
    post_items(client, [random_item("a")])
    response = client.request(method, path, json=body)
    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"][-1] == "k"
    assert "at most 500" in problem["msg"]


def test_every_error_status_is_documented(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    upload = paths["/items"]["post"]["responses"]
    assert set(upload) >= {"200", "400", "401", "403", "409", "413", "415", "422", "503"}
    assert set(paths["/purchases"]["post"]["responses"]) >= {"401", "404", "409", "503"}
    assert set(paths["/readyz"]["get"]["responses"]) == {"200", "503"}
