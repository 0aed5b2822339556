"""Images to feature vectors in the service: decoding with guards, the encoder's exact
preprocessing, and the exported CNN in ONNX Runtime (no torch at run time).

The preprocessing lives here, once: the training side's torch reference imports it, so the
pixels the CNN sees can never drift between the two.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, UnidentifiedImageError

ACCEPTED_FORMATS = {"JPEG", "PNG", "WEBP"}


class ImageError(ValueError):
    """An upload that is not a usable image; `status` is the HTTP answer it deserves."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Preprocessing:
    """Shorter side resized to `resize`, centre crop `crop` by `crop`, (x/255 - mean) / std."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def decode(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """Bytes to an RGB image, refusing what is too big, not an image, or not JPEG/PNG/WebP.

    The pixel limit is checked from the header before any pixel is decoded, so a
    decompression bomb costs nothing.
    """
    if len(data) > max_bytes:
        raise ImageError(f"the image is {len(data)} bytes, more than {max_bytes}", 413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ACCEPTED_FORMATS:
                raise ImageError(f"{image.format} images are not accepted (JPEG, PNG or WebP)", 415)
            pixels = image.width * image.height
            if pixels > max_pixels:
                raise ImageError(
                    f"the image is {image.width}x{image.height} = {pixels} pixels, "
                    f"more than {max_pixels}",
                    413,
                )
            image.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image Pillow can read (JPEG, PNG or WebP)", 415) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"refused as a decompression bomb: {error}", 413) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"the image is corrupt or truncated ({error})") from None
    return image.convert("RGB")


def preprocess(image: Image.Image, steps: Preprocessing) -> np.ndarray:
    """An RGB image to the CNN's [3, crop, crop] float32 input."""
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
        return self.session.run(["features"], {"images": batch})[0]


def load_image_encoder(manifest_path: Path | str, threads: int | None = None) -> ImageEncoder:
    """Open an exported encoder from its manifest, checking the file's sha256."""
    from service.encoders import ModelError, session_options

    manifest_path = Path(manifest_path)
    try:
        manifest = json.loads(manifest_path.read_text())
        path = manifest_path.parent / manifest["file"]
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
    try:
        session = ort.InferenceSession(
            str(path), session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime raises its own untyped errors
        raise ModelError(f"{path}: ONNX Runtime cannot load it ({error})") from None
    return ImageEncoder(name, digest, output_dim, steps, session)
