"""The market painted in pixels: deterministic paintings, and style that survives the encoder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from curatornet.painter import looks, paint
from training.data.formats import load_dataset

ROOT = Path(__file__).resolve().parents[2]


def test_a_work_always_paints_alike_and_works_differ() -> None:
    style = np.random.default_rng(0).normal(size=(2, 16))
    first, second = looks(style)
    again = np.asarray(paint(first, "work-1"))
    np.testing.assert_array_equal(np.asarray(paint(first, "work-1")), again)
    assert again.shape == (256, 256, 3)
    assert np.abs(again.astype(int) - np.asarray(paint(first, "work-2"))).mean() > 5
    assert np.abs(again.astype(int) - np.asarray(paint(second, "work-1"))).mean() > 5


def test_near_styles_give_near_looks() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=16)
    anchor, close, other = looks(
        np.stack([base, base + 0.05 * rng.normal(size=16), rng.normal(size=16)])
    )

    def distance(a, b) -> float:
        hue = min(abs(a.hue - b.hue), 1 - abs(a.hue - b.hue))
        marks = np.abs(a.mark_weights - b.mark_weights).sum()
        return hue + abs(a.saturation - b.saturation) + marks

    assert distance(anchor, close) < distance(anchor, other)


def test_synth_images_paints_every_work_and_style_survives_the_encoder(tmp_path: Path) -> None:
    out = tmp_path / "pixels"
    command = [sys.executable, "-m", "training", "synth", "--images", "--scale", "0.05"]
    result = subprocess.run(
        [*command, "--seed", "3", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    data = load_dataset(out)
    assert data.features.shape == (len(data.item_ids), 1280)
    paintings = sorted((out / "images").glob("*.png"))
    assert len(paintings) == len(data.item_ids)
    assert Image.open(paintings[0]).size == (256, 256)
    # Works of one artist sit closer in the encoder's space than chance would put them.
    unit = data.features / np.linalg.norm(data.features, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -1)
    nearest = similarity.argmax(axis=1)
    same_artist = (data.artist_ids[nearest] == data.artist_ids).mean()
    _, counts = np.unique(data.artist_ids, return_counts=True)
    chance = ((counts - 1) / (len(data.item_ids) - 1) * counts).sum() / len(data.item_ids)
    assert same_artist > 5 * chance, (same_artist, chance)
