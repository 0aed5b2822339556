"""The shared preprocessing, as training and the service both run it."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from curatornet.image_encoder import Preprocessing, preprocess

ENCODER = Path(__file__).resolve().parents[2] / "models" / "encoders" / "efficientnet-lite0.json"


def test_a_panorama_is_preprocessed_for_training() -> None:
    """The service refuses pictures thinner than 20:1 from clients (service.ingest); the
    shared preprocessing does not, so one such file cannot abort encoding a training set."""
    manifest = json.loads(ENCODER.read_text())
    steps = Preprocessing(
        manifest["resize"], manifest["input_size"], tuple(manifest["mean"]), tuple(manifest["std"])
    )
    pixels = preprocess(Image.new("RGB", (2_100, 100)), steps)
    assert pixels.shape == (3, steps.crop, steps.crop)
