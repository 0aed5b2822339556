"""Procedural paintings: every synthetic artwork drawn in pixels from its latent style.

A fixed projection of the style vector sets the painting's parameters (palette hue and spread,
saturation, lightness, the mix of marks, how many and how large, their orientation, how the
composition gathers), so an artist's works, whose styles scatter around the artist's, share a
palette, a composition habit and a vocabulary of marks while differing from work to work; the
work's id seeds where the marks land. Nothing here knows about artists or customers:
style alone decides the look, as it decides the tastes.
"""

from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from curatornet.image_encoder import ImageEncoder

MARKS = ("stroke", "blob", "rectangle", "circle", "line", "dots")
PROJECTION_SEED = 20_201_122
N_PARAMETERS = 16


@dataclass(frozen=True)
class Look:
    """What a style decides about a painting."""

    hue: float
    hue_spread: float
    saturation: float
    value: float
    background: float
    mark_weights: np.ndarray  # over MARKS
    n_marks: int
    mark_size: float  # fraction of the canvas
    angle: float  # radians
    gathering: float  # 0: marks anywhere, 1: gathered round a focus
    texture: float


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def looks(style: np.ndarray) -> list[Look]:
    """[N, style_dim] latent styles to their looks, through one fixed random projection."""
    style = np.atleast_2d(np.asarray(style, np.float64))
    projection = np.random.default_rng(PROJECTION_SEED).standard_normal(
        (style.shape[1], N_PARAMETERS)
    )
    z = style @ projection / np.sqrt(style.shape[1])
    weights = np.exp(1.5 * z[:, 6:12])
    weights /= weights.sum(axis=1, keepdims=True)
    return [
        Look(
            hue=float((np.arctan2(row[0], row[1]) / (2 * np.pi)) % 1.0),
            hue_spread=float(0.02 + 0.2 * _sigmoid(row[2])),
            saturation=float(0.25 + 0.7 * _sigmoid(row[3])),
            value=float(0.3 + 0.65 * _sigmoid(row[4])),
            background=float(_sigmoid(1.5 * row[5])),
            mark_weights=weights[n],
            n_marks=int(10 + 60 * _sigmoid(row[12])),
            mark_size=float(0.04 + 0.3 * _sigmoid(row[13])),
            angle=float(np.pi * _sigmoid(row[14])),
            gathering=float(_sigmoid(2 * row[15])),
            texture=float(0.02 + 0.1 * _sigmoid(row[5] - row[4])),
        )
        for n, row in enumerate(z)
    ]


def _colour(look: Look, rng: np.random.Generator) -> tuple[int, int, int]:
    hue = (look.hue + rng.normal(0, look.hue_spread)) % 1.0
    saturation = float(np.clip(look.saturation + rng.normal(0, 0.08), 0, 1))
    value = float(np.clip(look.value + rng.normal(0, 0.12), 0.05, 1))
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, value)
    return int(255 * red), int(255 * green), int(255 * blue)


def _position(look: Look, focus: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    gathered = focus + rng.normal(0, 0.15 * size, 2)
    anywhere = rng.uniform(0, size, 2)
    return look.gathering * gathered + (1 - look.gathering) * anywhere


def paint(look: Look, work: str, size: int = 256) -> Image.Image:
    """One painting; the work's id seeds where its marks land, so a work always paints alike."""
    rng = np.random.default_rng(int.from_bytes(hashlib.blake2b(work.encode()).digest()[:8]))
    light = int(255 * (0.15 + 0.8 * look.background))
    tint = colorsys.hsv_to_rgb(look.hue, 0.25 * look.saturation, light / 255)
    canvas = Image.new("RGB", (size, size), tuple(int(255 * c) for c in tint))
    draw = ImageDraw.Draw(canvas)
    focus = rng.uniform(0.3 * size, 0.7 * size, 2)
    direction = np.array([np.cos(look.angle), np.sin(look.angle)])
    for _ in range(look.n_marks):
        mark = MARKS[rng.choice(len(MARKS), p=look.mark_weights)]
        colour = _colour(look, rng)
        x, y = _position(look, focus, size, rng)
        extent = max(2.0, look.mark_size * size * rng.uniform(0.5, 1.5))
        if mark == "stroke":
            turn = direction * extent
            points = [(x - turn[0], y - turn[1]), (x, y + rng.normal(0, extent / 4))]
            points.append((x + turn[0], y + turn[1]))
            draw.line(points, fill=colour, width=max(2, int(extent / 5)), joint="curve")
        elif mark == "blob":
            radii = extent * rng.uniform(0.6, 1.0, 9)
            angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
            draw.polygon(
                [
                    (x + r * np.cos(a), y + r * np.sin(a))
                    for r, a in zip(radii, angles, strict=True)
                ],
                fill=colour,
            )
        elif mark == "rectangle":
            w, h = extent * rng.uniform(0.5, 1.5, 2)
            draw.rectangle([x - w / 2, y - h / 2, x + w / 2, y + h / 2], fill=colour)
        elif mark == "circle":
            draw.ellipse([x - extent / 2, y - extent / 2, x + extent / 2, y + extent / 2], colour)
        elif mark == "line":
            turn = direction * 2 * extent
            draw.line([(x - turn[0], y - turn[1]), (x + turn[0], y + turn[1])], colour, 2)
        else:
            for dx, dy in rng.normal(0, extent, (12, 2)):
                draw.ellipse([x + dx - 2, y + dy - 2, x + dx + 2, y + dy + 2], colour)
    canvas = canvas.filter(ImageFilter.GaussianBlur(0.6))
    pixels = np.asarray(canvas, np.float32)
    grain = rng.normal(0, 255 * look.texture, (size, size, 1)).astype(np.float32)
    return Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8))


def styles_like(works: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` new styles scattered round an artist's works (their [n, d] styles) as widely
    as that artist's own: the works the artist would paint next."""
    rng = np.random.default_rng(seed)
    spread = works.std(axis=0).mean() if len(works) > 1 else 0.1
    return (works.mean(axis=0) + spread * rng.standard_normal((count, works.shape[1]))).astype(
        np.float32
    )


def paint_market(
    styles: np.ndarray,
    item_ids: np.ndarray,
    encoder: ImageEncoder,
    images_dir: Path | None = None,
    batch: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The [N, D] encoder features of every work, painted (and saved to `images_dir/<id>.png`
    when given). The next batch is painted in a thread while the encoder runs, since ONNX
    Runtime releases the GIL; `on_batch` hears how many works are done, for progress."""
    if images_dir is not None:
        images_dir.mkdir(parents=True, exist_ok=True)
    features = np.empty((len(item_ids), encoder.output_dim), np.float32)
    all_looks = looks(styles)

    def painted(rows: range) -> list[Image.Image]:
        paintings = [paint(all_looks[n], str(item_ids[n])) for n in rows]
        if images_dir is not None:
            for n, painting in zip(rows, paintings, strict=True):
                painting.save(images_dir / f"{item_ids[n]}.png", optimize=False)
        return paintings

    batches = [range(s, min(s + batch, len(item_ids))) for s in range(0, len(item_ids), batch)]
    if not batches:
        return features
    with ThreadPoolExecutor(max_workers=1) as painter:
        pending = painter.submit(painted, batches[0])
        for number, rows in enumerate(batches):
            paintings = pending.result()
            if number + 1 < len(batches):
                pending = painter.submit(painted, batches[number + 1])
            features[rows.start : rows.stop] = encoder.encode(paintings)
            if on_batch is not None:
                on_batch(rows.stop)
    return features
