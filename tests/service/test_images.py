"""Decoding uploads: the accepted formats, and every way an upload can be refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from curatornet.image_encoder import Preprocessing, preprocess
from service.ingest import ImageError, decode

LIMITS = {"max_bytes": 2_000_000, "max_pixels": 4_000_000}


def encoded(format_: str, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format_)
    return buffer.getvalue()


def flat_png(width: int, height: int) -> bytes:
    """Many pixels in few bytes: one colour compresses to almost nothing."""
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("format_", ["JPEG", "PNG", "WEBP"])
def test_accepted_formats_decode_to_rgb(format_: str) -> None:
    image = decode(encoded(format_), **LIMITS)
    assert image.mode == "RGB"
    assert image.size == (64, 48)


def test_other_modes_become_rgb() -> None:
    assert decode(encoded("PNG", mode="L"), **LIMITS).mode == "RGB"
    assert decode(encoded("PNG", mode="RGBA"), **LIMITS).mode == "RGB"


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (b"definitely not an image", 415, "not an image"),
        (encoded("GIF"), 415, "GIF images are not accepted"),
        (encoded("BMP"), 415, "BMP images are not accepted"),
        (encoded("PNG")[:200], 422, "corrupt or truncated"),
        (encoded("JPEG")[:300], 422, "corrupt or truncated"),
        (flat_png(2100, 2000), 413, "more than 4000000"),
        (b"\xff" * 2_000_001, 413, "more than 2000000"),
    ],
    ids=["text", "gif", "bmp", "truncated png", "truncated jpeg", "too many pixels", "too big"],
)
def test_bad_uploads_are_refused(data: bytes, status: int, message: str) -> None:
    with pytest.raises(ImageError, match=message) as error:
        decode(data, **LIMITS)
    assert error.value.status == status


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    """A 20,000 x 20,000 PNG of one colour is a few hundred KB but 400 megapixels."""
    bomb = flat_png(20_000, 20_000)
    assert len(bomb) < LIMITS["max_bytes"]
    with pytest.raises(ImageError, match="400000000 pixels") as error:
        decode(bomb, **LIMITS)
    assert error.value.status == 413


def test_preprocess_resizes_crops_and_normalises() -> None:
    steps = Preprocessing(resize=32, crop=24, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    white = Image.new("RGB", (80, 40), (255, 255, 255))
    tensor = preprocess(white, steps)
    assert tensor.shape == (3, 24, 24)
    assert tensor.dtype == np.float32
    np.testing.assert_allclose(tensor, 1.0, atol=1e-6)
    half = preprocess(Image.new("RGB", (24, 24), (0, 0, 0)), steps)
    np.testing.assert_allclose(half, -1.0, atol=1e-6)
