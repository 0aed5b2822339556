"""Shared fixtures: copies of the hand-written UGallery files with a features file beside them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from training.data.formats import write_npz

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_IDS = ["a1", "a2", "a3", "a4", "a5"]
FEATURE_DIM = 4


def fixture_features() -> np.ndarray:
    """Row i belongs to FIXTURE_IDS[i]; item a<k> has value k in every column."""
    return np.repeat(np.arange(1, 6, dtype=np.float32)[:, None], FEATURE_DIM, axis=1)


def write_features(directory: Path, ids: list[str], matrix: np.ndarray) -> Path:
    path = directory / "features.npz"
    write_npz(path, {"ids": np.asarray(ids), "features": matrix})
    return path


@pytest.fixture(params=["per_item", "per_basket"])
def ugallery_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A data directory in either purchase layout, features stored in shuffled row order."""
    target = tmp_path / request.param
    shutil.copytree(FIXTURES / request.param, target)
    order = [3, 0, 4, 2, 1]
    write_features(target, [FIXTURE_IDS[i] for i in order], fixture_features()[order])
    return target


@pytest.fixture
def per_item_dir(tmp_path: Path) -> Path:
    target = tmp_path / "per_item"
    shutil.copytree(FIXTURES / "per_item", target)
    write_features(target, FIXTURE_IDS, fixture_features())
    return target
