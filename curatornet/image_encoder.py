"""Pictures to feature vectors: the encoder's exact preprocessing, and the exported CNN in
ONNX Runtime (no torch at run time).

The preprocessing lives here, once: the service's uploads, the painted market and the
training side's torch reference all go through it, so the pixels the CNN sees can never
drift between them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from curatornet.model_format import ENCODER_FEATURES, ENCODER_IMAGES, ModelError, contained
from curatornet.onnx_sessions import open_session


@dataclass(frozen=True)
class Preprocessing:
    """Shorter side resized to `resize`, centre crop `crop` by `crop`, (x/255 - mean) / std."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def preprocess(image: Image.Image, steps: Preprocessing) -> np.ndarray:
    """An RGB image to the CNN's [3, crop, crop] float32 input. The resize keeps the aspect
    ratio, so a very thin picture grows huge first: a service bounds it (service.ingest)."""
    width, height = image.size
    scale = steps.resize / min(width, height)
    size = (max(steps.crop, round(width * scale)), max(steps.crop, round(height * scale)))
    resized = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - steps.crop) // 2, (size[1] - steps.crop) // 2
    cropped = resized.crop((left, top, left + steps.crop, top + steps.crop))
    pixels = np.asarray(cropped, dtype=np.float32) / 255.0
    normalised = (pixels - np.array(steps.mean, np.float32)) / np.array(steps.std, np.float32)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))


@dataclass(frozen=True, eq=False)
class ImageEncoder:
    name: str
    sha256: str  # of the ONNX file: what cached features computed by it are keyed on
    output_dim: int
    steps: Preprocessing
    session: ort.InferenceSession

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        """RGB images to [N, output_dim] float32 features."""
        return self.encode_pixels(np.stack([preprocess(image, self.steps) for image in images]))

    def encode_pixels(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed [N, 3, crop, crop] inputs to [N, output_dim] features."""
        return self.session.run([ENCODER_FEATURES], {ENCODER_IMAGES: batch})[0]


def load_image_encoder(manifest_path: Path | str, threads: int | None = None) -> ImageEncoder:
    """Open an exported encoder from its manifest, checking the file's sha256."""
    manifest_path = Path(manifest_path)
    try:
        manifest = json.loads(manifest_path.read_text())
        path = contained(manifest_path.parent, manifest["file"])
        steps = Preprocessing(
            resize=int(manifest["resize"]),
            crop=int(manifest["input_size"]),
            mean=tuple(manifest["mean"]),
            std=tuple(manifest["std"]),
        )
        name, output_dim, expected = (
            manifest["name"],
            int(manifest["output_dim"]),
            manifest["sha256"],
        )
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{manifest_path}: not a usable encoder manifest ({error})") from None
    if digest != expected:
        raise ModelError(f"{path}: sha256 does not match {manifest_path}")
    return ImageEncoder(name, digest, output_dim, steps, open_session(path, threads))
