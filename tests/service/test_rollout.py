"""Rolling out another model: re-embedding the stored catalogue, the swap, the fleet, refusals."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from curatornet.model_loader import load_model
from service.app import create_app
from service.config import Settings
from service.indexing import FeatureDimensionMismatch
from service.rollout import CHOSEN, CHOSEN_VERSION
from service.stores import open_store
from tests.service.helpers import (
    DEFAULT_MODEL,
    FEATURES_MODEL,
    SYNC_DEADLINE_S,
    LiveService,
    eventually,
    exported,
    random_item,
    version_1_copy,
)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported(tmp_path_factory.mktemp("models") / "other", 2048, 32)


@pytest.fixture(scope="module")
def narrow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported(tmp_path_factory.mktemp("models") / "narrow", 16, 32)


KEY = "admin-key"


def app_for(store_url: str, model_dir: Path, **settings) -> TestClient:
    """The app with keys configured (administration needs one) and a client that sends it."""
    settings = {
        "api_key": KEY,
        "admin_key": KEY,
        "models_root": Path(tempfile.gettempdir()),
        **settings,
    }
    app = create_app(Settings(model_dir=model_dir, store_url=store_url, **settings))
    return TestClient(app, headers={"X-API-Key": KEY})


def load_catalogue(client: TestClient) -> None:
    items = [random_item(f"w{i}", artist=f"a{i % 3}", seed=i) for i in range(30)]
    assert client.post("/items", json={"items": items}).status_code == 200
    client.post("/purchases", json={"user_id": "u", "item_ids": ["w0", "w1"]})
    client.delete("/items/w2")


def test_admin_rollout_reembeds_the_catalogue_and_swaps(store_url: str, other_model: Path):
    with app_for(store_url, FEATURES_MODEL) as client:
        load_catalogue(client)
        before = client.post("/recommend", json={"user_id": "u", "k": 5}).json()
        response = client.post("/admin/model", json={"model_dir": str(other_model)})
        assert response.status_code == 200, response.text
        rollout = response.json()
        assert rollout["version"] != before["model_version"]
        assert rollout["indexed"] == 27  # 30 posted, 2 sold, 1 deleted
        assert rollout["embedded"] == 27
        assert client.get("/model").json()["embedding_dim"] == 32
        after = client.post("/recommend", json={"user_id": "u", "k": 27}).json()
        assert after["model_version"] == rollout["version"]
        assert after["strategy"] == "personalized"
        assert len(after["items"]) == 27  # sold, deleted and bought works stay out
        # an upload after the roll-out is embedded by the new model
        assert client.post("/items", json=random_item("late", seed=99)).status_code == 200
        assert client.get("/readyz").json()["index_size"] == 28
        metrics = client.get("/metrics").text
        assert f'version="{rollout["version"]}"' in metrics
    # a restart with the unchanged setting (a crashed replica coming back) keeps the roll-out,
    # and finds every embedding already computed by the new model
    with app_for(store_url, FEATURES_MODEL) as client:
        assert client.get("/model").json()["version"] == rollout["version"]
        assert client.get("/readyz").json()["index_size"] == 28


def test_restart_with_a_new_setting_rolls_out(store_url: str, other_model: Path) -> None:
    with app_for(store_url, FEATURES_MODEL) as client:
        load_catalogue(client)
        old = client.get("/model").json()["version"]
    with app_for(store_url, other_model) as client:
        assert client.get("/model").json()["version"] != old
        assert client.get("/readyz").json()["index_size"] == 27
        explained = client.post("/recommend", json={"user_id": "u", "k": 3, "explain": True})
        assert explained.status_code == 200
        assert explained.json()["items"][0]["because"][0]["item_id"] in {"w0", "w1"}


def test_version_1_and_multi_interest_models_roll_out_both_ways(
    store_url: str, tmp_path: Path
) -> None:
    """A model exported before interests existed (format version 1, one user vector) is
    served, explains, and hands over to the shipped multi-interest model and back."""
    version_1 = version_1_copy(exported(tmp_path / "paper", 2048, 32), tmp_path / "v1")
    shipped = Path(shutil.copytree(FEATURES_MODEL, tmp_path / "shipped"))  # in the models root
    with app_for(store_url, version_1) as client:
        load_catalogue(client)
        for model_dir, interests in ((shipped, 4), (version_1, 1)):
            explained = client.post("/recommend", json={"user_id": "u", "k": 5, "explain": True})
            assert explained.status_code == 200, explained.text
            items = explained.json()["items"]
            assert len(items) == 5
            assert {because["item_id"] for because in items[0]["because"]} == {"w0", "w1"}
            response = client.post("/admin/model", json={"model_dir": str(model_dir)})
            assert response.status_code == 200, response.text
            assert client.get("/model").json()["version"] == response.json()["version"]
            assert load_model(model_dir).interests == interests
            similar = client.get("/items/w3/similar", params={"k": 3})
            assert similar.status_code == 200
            assert len(similar.json()["items"]) == 3


def test_a_model_for_other_features_is_refused(store_url: str, narrow_model: Path) -> None:
    with app_for(store_url, FEATURES_MODEL) as client:
        load_catalogue(client)
        version = client.get("/model").json()["version"]
        refused = client.post("/admin/model", json={"model_dir": str(narrow_model)})
        assert refused.status_code == 409
        assert "takes 16-d features, but the stored artworks have 2048-d" in refused.text
        nowhere = Path(tempfile.gettempdir()) / "nowhere"
        missing = client.post("/admin/model", json={"model_dir": str(nowhere)})
        assert missing.status_code == 422
        assert "manifest.json" in missing.text
        assert client.get("/model").json()["version"] == version  # still serving
        assert client.post("/recommend", json={"user_id": "u"}).status_code == 200
    with (
        pytest.raises(FeatureDimensionMismatch, match="16-d features"),
        app_for(store_url, narrow_model),
    ):
        pass


def test_retraining_into_the_same_directory_reaches_every_process(
    tmp_path: Path, store_url: str
) -> None:
    """The fleet's choice is a directory at a version, so a second roll-out of a directory
    retrained in place is followed, and an unreadable directory stops no one following."""
    target = exported(tmp_path / "next", 2048, 32)
    with app_for(store_url, FEATURES_MODEL) as first, app_for(store_url, FEATURES_MODEL) as second:
        load_catalogue(first)
        versions = []
        for _ in range(2):
            shutil.rmtree(target)
            exported(target, 2048, 32)  # new random weights: a new version
            response = first.post("/admin/model", json={"model_dir": str(target)})
            assert response.status_code == 200, response.text
            versions.append(response.json()["version"])
            deadline = time.monotonic() + 10
            while second.get("/model").json()["version"] != versions[-1]:
                assert time.monotonic() < deadline, "the second process did not follow"
                time.sleep(0.05)
        assert versions[0] != versions[1]
        garbled = tmp_path / "garbled"
        garbled.mkdir()
        (garbled / "manifest.json").write_bytes(b"\xff\xfe not text")
        refused = first.post("/admin/model", json={"model_dir": str(garbled)})
        assert refused.status_code == 422
        first.post("/items", json=random_item("after", seed=7))
        deadline = time.monotonic() + SYNC_DEADLINE_S
        while second.get("/items/after/similar").status_code != 200 or (
            second.get("/readyz").json()["index_size"] != 28
        ):
            assert time.monotonic() < deadline, "the second process stopped following"
            time.sleep(0.05)


def test_rollout_needs_a_configured_key(store_url: str, other_model: Path) -> None:
    body = {"model_dir": str(other_model)}
    with app_for(store_url, FEATURES_MODEL, api_key="writes") as client:
        anonymous = TestClient(client.app)  # same running app, no key sent
        assert anonymous.post("/admin/model", json=body).status_code == 401
        wrong = anonymous.post("/admin/model", json=body, headers={"X-API-Key": "no"})
        assert wrong.status_code == 403
        assert client.post("/admin/model", json=body).status_code == 200
        writer = anonymous.post("/admin/model", json=body, headers={"X-API-Key": "writes"})
        assert writer.status_code == 403  # the write key is not the admin key
    with app_for(store_url, FEATURES_MODEL, admin_key=None) as open_service:
        closed = open_service.post("/admin/model", json=body)
        assert closed.status_code == 403
        assert "set CURATORNET_ADMIN_KEY" in closed.text


def test_the_fleet_follows_and_keeps_answering(store_url: str, other_model: Path) -> None:
    """Two processes on one store: roll out through one, the other follows; no request fails."""
    root = tempfile.gettempdir()
    keys = {"CURATORNET_API_KEY": KEY, "CURATORNET_ADMIN_KEY": KEY}
    first = LiveService(store_url, CURATORNET_MODELS_ROOT=root, **keys)
    second = LiveService(store_url, CURATORNET_MODELS_ROOT=root, **keys)
    first.client.headers["X-API-Key"] = KEY
    try:
        items = [random_item(f"w{i}", seed=i) for i in range(300)]
        first.client.post("/items", json={"items": items})
        first.client.post("/purchases", json={"user_id": "u", "item_ids": ["w0"]})
        synced_by = time.monotonic() + SYNC_DEADLINE_S
        while second.client.get("/readyz").json()["index_size"] != 299:
            assert time.monotonic() < synced_by
            time.sleep(0.05)
        failures: list[str] = []
        stop = threading.Event()

        def hammer(service: LiveService) -> None:
            with httpx.Client(base_url=service.url, headers={"X-API-Key": KEY}, timeout=30) as http:
                while not stop.is_set():
                    response = http.post("/recommend", json={"user_id": "u", "k": 10})
                    if response.status_code != 200 or len(response.json()["items"]) != 10:
                        failures.append(response.text)

        threads = [threading.Thread(target=hammer, args=(s,)) for s in (first, second)]
        for thread in threads:
            thread.start()
        response = first.client.post("/admin/model", json={"model_dir": str(other_model)})
        version = response.json()["version"]
        deadline = time.monotonic() + 30
        while second.client.get("/model").json()["version"] != version:
            assert time.monotonic() < deadline, "the second process did not follow"
            time.sleep(0.1)
        stop.set()
        for thread in threads:
            thread.join()
        assert failures == []
        assert second.client.get("/readyz").json()["index_size"] == 299
    finally:
        first.stop()
        second.stop()


def test_only_directories_inside_the_models_root_are_rolled_out(
    store_url: str, other_model: Path, tmp_path: Path
) -> None:
    with app_for(store_url, FEATURES_MODEL, models_root=tmp_path / "root") as client:
        version = client.get("/model").json()["version"]
        for outside in (str(other_model), "/etc", str(tmp_path / "root" / ".." / "x")):
            refused = client.post("/admin/model", json={"model_dir": outside})
            assert refused.status_code == 422, refused.text
            assert "outside the models root" in refused.text
        assert client.get("/model").json()["version"] == version
    with app_for(store_url, FEATURES_MODEL, models_root=other_model.parent) as client:
        taken = client.post("/admin/model", json={"model_dir": str(other_model)})
        assert taken.status_code == 200, taken.text


def test_readyz_says_when_the_fleets_model_cannot_be_served(
    store_url: str, other_model: Path, tmp_path: Path
) -> None:
    """Another process rolled out a model this one cannot serve (a directory this host lacks,
    one outside its models roots): it keeps answering with its own model, and says in /readyz
    that it is not the fleet's, until a model it can serve is rolled out."""
    with app_for(store_url, FEATURES_MODEL, models_root=tmp_path) as client:
        assert client.get("/readyz").status_code == 200
        served = client.get("/model").json()["version"]
        store = open_store(store_url)
        try:
            real = load_model(other_model).version
            for chosen, version, why in (
                (tmp_path / "not-on-this-host", "0123456789ab", "missing"),
                (other_model, real, "outside the models root"),
            ):
                store.set_setting(CHOSEN, str(chosen))
                store.set_setting(CHOSEN_VERSION, version)
                assert eventually(lambda c=chosen: str(c) in _fleet_refusal(client))
                refused = client.get("/readyz")
                assert refused.status_code == 503
                assert refused.json()["status"] == "behind"
                assert why in refused.json()["fleet_model"]
                assert client.get("/model").json()["version"] == served
        finally:
            store.close()
        inside = Path(shutil.copytree(other_model, tmp_path / "inside"))
        assert client.post("/admin/model", json={"model_dir": str(inside)}).status_code == 200
        assert eventually(lambda: client.get("/readyz").status_code == 200)


def _fleet_refusal(client: TestClient) -> str:
    return client.get("/readyz").json().get("fleet_model", "")


def test_a_manifest_naming_files_outside_its_directory_is_refused(
    store_url: str, other_model: Path, tmp_path: Path
) -> None:
    """Through /admin/model: neither a tower nor an image encoder is read from outside the
    model directory, the encoders directory and the models roots; a model directory that is
    itself a root reaches nothing beside it."""
    root = tmp_path / "root"
    tower = Path(shutil.copytree(other_model, root / "tower"))
    manifest = json.loads((tower / "manifest.json").read_text())
    manifest["item_tower"]["file"] = "../../outside/item_tower.onnx"
    (tower / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "outside").mkdir()
    shutil.copy(other_model / "item_tower.onnx", tmp_path / "outside")
    # the shipped picture model as a root of its own, its encoder beside it (models/encoders)
    shutil.copytree(DEFAULT_MODEL.parent / "encoders", tmp_path / "encoders")
    picture = Path(shutil.copytree(DEFAULT_MODEL, tmp_path / "picture"))
    roots = f"{root}{os.pathsep}{picture}"
    with app_for(
        store_url, FEATURES_MODEL, models_root=roots, encoders_dir=tmp_path / "none"
    ) as client:
        for model_dir in (tower, picture):
            refused = client.post("/admin/model", json={"model_dir": str(model_dir)})
            assert refused.status_code == 422, refused.text
            assert "lies outside" in refused.text
