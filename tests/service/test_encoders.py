"""The service's model loader on a real exported directory, and each way it refuses one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.encoders import ModelError, load_model


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
    assert (model.feature_dim, model.embedding_dim) == (2048, 200)
    items = model.embed_items(np.ones((3, 2048), np.float32))
    assert items.shape == (3, 200)
    users = model.embed_users(items[None], np.ones((1, 3), np.float32))
    assert users.shape == (1, 200)


def test_service_does_not_import_tensorflow() -> None:
    import subprocess
    import sys

    code = "import sys, service.encoders; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


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
                and m["user_tower"]["outputs"].update(vec=["B", 200])
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
