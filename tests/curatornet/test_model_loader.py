"""The service's model loader on a real exported directory, and each way it refuses one."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from curatornet.model_format import ModelError
from curatornet.model_loader import LoadOptions, load_model
from tests.service.helpers import version_1_copy


@pytest.fixture
def model_copy(tiny_run, tmp_path: Path) -> Path:
    directory, _ = tiny_run
    return Path(shutil.copytree(directory, tmp_path / "model"))


def _edit_manifest(directory: Path, change) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_loads_and_embeds(model_copy: Path) -> None:
    model = load_model(model_copy)
    e = json.loads((model_copy / "manifest.json").read_text())["embedding_dim"]
    assert (model.feature_dim, model.embedding_dim, model.interests) == (2048, e, 4)
    items = model.embed_items(np.ones((3, 2048), np.float32))
    assert items.shape == (3, e)
    users = model.embed_users(items[None], np.ones((1, 3), np.float32))
    assert users.shape == (1, 4, e)
    scores = model.score(users[0], items)
    np.testing.assert_allclose(scores, (items @ users[0].T).max(axis=1))


def test_a_version_1_model_loads_as_one_interest(tiny_market_dir: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from tests.training.helpers import tiny_run_config
    from training.pipeline import train_and_export

    config = replace(tiny_run_config(epochs=1), architecture="paper")
    train_and_export(tiny_market_dir, tmp_path / "paper", config, progress=False)
    new, old = (
        load_model(tmp_path / "paper"),
        load_model(version_1_copy(tmp_path / "paper", tmp_path / "v1")),
    )
    assert (old.interests, new.interests) == (1, 1)
    items = new.embed_items(np.ones((3, 2048), np.float32))
    history, mask = items[None], np.ones((1, 3), np.float32)
    assert old.embed_users(history, mask).shape == (1, 1, new.embedding_dim)
    np.testing.assert_allclose(old.embed_users(history, mask), new.embed_users(history, mask))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("interests"), r"format_version 2 needs 'interests'"),
        (lambda m: m.update(interests=0), r"format_version 2 needs 'interests'"),
        (lambda m: m.update(score="dot"), r"format_version 2 scores by 'max_dot'"),
        (lambda m: m.update(interests=3), r"user has shape \['B', 4, \d+\].*need \[None, 3"),
    ],
)
def test_version_2_fields_are_checked(model_copy: Path, change, message: str) -> None:
    _edit_manifest(model_copy, change)
    with pytest.raises(ModelError, match=message):
        load_model(model_copy)


def test_changed_file_fails_the_sha256_check(model_copy: Path) -> None:
    with (model_copy / "user_tower.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelError, match=r"user_tower.onnx: sha256 .* does not match"):
        load_model(model_copy)


def test_missing_files_are_named(model_copy: Path) -> None:
    (model_copy / "item_tower.onnx").unlink()
    with pytest.raises(ModelError, match=r"item_tower.onnx: missing"):
        load_model(model_copy)
    (model_copy / "manifest.json").unlink()
    with pytest.raises(ModelError, match=r"manifest.json: missing"):
        load_model(model_copy)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(feature_dim=512), r"features has shape \['N', 2048\].*feature_dim=512"),
        (lambda m: m.update(embedding_dim=64), r"embedding_dim=64"),
        (lambda m: m.update(format_version=99), r"format_version 99 is not supported"),
        (
            lambda m: m["item_tower"]["inputs"].update(features=["N", 100]),
            r"input 'features' has shape",
        ),
        (
            lambda m: (
                m["user_tower"]["outputs"].pop("user")
                and m["user_tower"]["outputs"].update(vec=["B", 4, 65])
            ),
            r"no output tensor 'vec'",
        ),
        (lambda m: m.pop("user_tower"), r"missing 'user_tower'"),
    ],
)
def test_manifest_mismatches_are_refused(model_copy: Path, change, message: str) -> None:
    _edit_manifest(model_copy, change)
    with pytest.raises(ModelError, match=message):
        load_model(model_copy)


def test_unparsable_manifest(model_copy: Path) -> None:
    (model_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model(model_copy)


@pytest.fixture
def picture_model(tmp_path: Path) -> Path:
    """The shipped picture model and its encoder, copied side by side as in models/."""
    models = Path(__file__).resolve().parents[2] / "models"
    shutil.copytree(models / "encoders", tmp_path / "encoders")
    return Path(shutil.copytree(models / "default", tmp_path / "default"))


def test_the_picture_model_loads_its_encoder(picture_model: Path) -> None:
    model = load_model(picture_model)
    assert model.image_encoder is not None
    assert model.image_encoder.output_dim == model.feature_dim == 1280


@pytest.mark.parametrize("key", ["sha256", "output_dim", "file", "mean"])
def test_an_incomplete_encoder_manifest_is_named(picture_model: Path, key: str) -> None:
    path = picture_model.parent / "encoders" / "efficientnet-lite0.json"
    manifest = json.loads(path.read_text())
    del manifest[key]
    path.write_text(json.dumps(manifest))
    with pytest.raises(
        ModelError, match=r"efficientnet-lite0\.json: not a usable encoder manifest"
    ):
        load_model(picture_model)


def test_another_encoder_than_the_model_was_trained_with_is_refused(picture_model: Path) -> None:
    """Same size, other weights: features would not be the ones the towers learned from."""
    import onnx

    encoders = picture_model.parent / "encoders"
    graph = onnx.load(encoders / "efficientnet-lite0.onnx")
    graph.doc_string = "another encoder"
    onnx.save(graph, encoders / "efficientnet-lite0.onnx")
    manifest = json.loads((encoders / "efficientnet-lite0.json").read_text())
    digest = hashlib.sha256((encoders / "efficientnet-lite0.onnx").read_bytes()).hexdigest()
    manifest["sha256"] = digest
    (encoders / "efficientnet-lite0.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"is not the one .*manifest.json was trained with"):
        load_model(picture_model)


def test_an_encoder_not_where_the_model_says_is_found_by_name(
    picture_model: Path, tmp_path: Path
) -> None:
    """A model trained in one layout (a container, another checkout) and served in another."""
    moved = Path(shutil.move(picture_model, tmp_path / "elsewhere" / "deep" / "model"))
    with pytest.raises(ModelError, match="not a usable encoder manifest"):
        load_model(moved)
    model = load_model(moved, LoadOptions(encoders_dir=tmp_path / "encoders"))
    assert model.image_encoder is not None


def test_an_encoder_onnx_runtime_cannot_open_is_named(picture_model: Path) -> None:
    encoders = picture_model.parent / "encoders"
    (encoders / "efficientnet-lite0.onnx").write_bytes(b"not a model")
    manifest = json.loads((encoders / "efficientnet-lite0.json").read_text())
    manifest["sha256"] = hashlib.sha256(b"not a model").hexdigest()
    (encoders / "efficientnet-lite0.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"efficientnet-lite0\.onnx: ONNX Runtime cannot load it"):
        load_model(picture_model)


@pytest.mark.parametrize("tower", ["item_tower", "user_tower"])
def test_a_tower_file_outside_the_model_directory_is_refused(model_copy: Path, tower: str) -> None:
    """Not read, not hashed: the error must not tell anything about the file it names."""
    manifest = json.loads((model_copy / "manifest.json").read_text())
    manifest[tower]["file"] = "../../../../../../etc/passwd"
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="outside") as error:
        load_model(model_copy)
    assert "sha256" not in str(error.value)


def test_files_an_encoder_manifest_names_stay_inside_their_directories(
    picture_model: Path,
) -> None:
    path = picture_model / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["feature_extractor"]["manifest"] = "../../../../../../etc/hostname"
    path.write_text(json.dumps(manifest))
    served = LoadOptions(roots=(picture_model.parent,))  # how a server opens models
    with pytest.raises(ModelError, match="outside"):
        load_model(picture_model, served)
    manifest["feature_extractor"]["manifest"] = "../encoders/efficientnet-lite0.json"
    path.write_text(json.dumps(manifest))
    encoder = picture_model.parent / "encoders" / "efficientnet-lite0.json"
    named = json.loads(encoder.read_text())
    encoder.write_text(json.dumps({**named, "file": "../../../../../../etc/hostname"}))
    for options in (served, None):
        with pytest.raises(ModelError, match="outside"):
            load_model(picture_model, options)


def test_offline_tools_follow_the_encoder_where_training_wrote_it(
    picture_model: Path, tmp_path: Path
) -> None:
    """`train --out data/x/model --image-encoder models/encoders/E.json` writes a path that
    climbs out of the model's parent; the evaluation must still open that model, and a
    server finds the encoder by name in its encoders directory instead."""
    deep = Path(shutil.move(picture_model, tmp_path / "data" / "quality" / "model"))
    path = deep / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["feature_extractor"]["manifest"] = "../../../encoders/efficientnet-lite0.json"
    path.write_text(json.dumps(manifest))
    assert load_model(deep).image_encoder is not None
    with pytest.raises(ModelError, match="outside"):
        load_model(deep, LoadOptions(roots=(deep.parent,)))
    served = LoadOptions(roots=(deep.parent,), encoders_dir=tmp_path / "encoders")
    assert load_model(deep, served).image_encoder is not None
