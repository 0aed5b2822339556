"""The image encoder: real ImageNet weights, and the exported ONNX file reproducing torch."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_image

from curatornet.image_encoder import load_image_encoder
from service.ingest import decode
from training.image_encoder import export_encoder, imagenet_classes, reference_features

# ImageNet-1k indices: 698 palace, 663 monastery, 442 bell cote, 832 stupa, 483 castle;
# 985 daisy.
BUILDINGS = {698, 663, 442, 832, 483}
DAISY = 985


@pytest.fixture(scope="module")
def samples() -> list[Image.Image]:
    """scikit-learn's two sample photographs: a Chinese temple, and a flower."""
    return [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("encoders")
    export_encoder(directory)
    return directory


def test_the_shipped_weights_recognise_well_known_pictures(samples: list[Image.Image]) -> None:
    temple, flower = imagenet_classes(samples)
    assert temple[0] in BUILDINGS
    assert flower[0] == DAISY


def test_onnx_features_equal_torch_on_real_images(
    samples: list[Image.Image], encoder_dir: Path
) -> None:
    """From JPEG bytes through the service's own decoding to ONNX, against torch."""
    encoder = load_image_encoder(encoder_dir / "efficientnet-lite0.json")
    uploads = []
    for image in samples:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        uploads.append(decode(buffer.getvalue(), 10_000_000, 40_000_000))
    reference = reference_features(samples)
    for batch in ([uploads[0]], uploads):
        features = encoder.encode(batch)
        assert features.shape == (len(batch), 1280)
        assert np.abs(features - reference[: len(batch)]).max() < 1e-3
    assert np.abs(reference[0] - reference[1]).max() > 0.1  # different pictures differ


def test_manifest_records_what_the_service_needs(encoder_dir: Path) -> None:
    import json

    manifest = json.loads((encoder_dir / "efficientnet-lite0.json").read_text())
    assert manifest["output_dim"] == 1280
    assert manifest["input_size"] == 224
    assert manifest["mean"] == manifest["std"] == [0.5, 0.5, 0.5]
    (encoder_dir / "efficientnet-lite0.onnx").write_bytes(b"tampered")
    from curatornet.model_format import ModelError

    with pytest.raises(ModelError, match="sha256"):
        load_image_encoder(encoder_dir / "efficientnet-lite0.json")
