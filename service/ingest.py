"""Uploads to stored, indexed artworks: the checks that need the model, decoding pictures
(once, with guards), embedding, then the store and the index.

A request's uploads are checked whole before anything is written, all against the one
`Serving` snapshot that then embeds them, so a roll-out in between can never have them
checked by one model and embedded by another. A refused request writes nothing.
"""

from __future__ import annotations

import base64
import io
import json
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pybase64
from PIL import Image, UnidentifiedImageError

from curatornet.image_encoder import preprocess
from curatornet.model_loader import LoadedModel
from service.config import Settings
from service.indexing import CatalogueIndex, Serving
from service.pictures import web_copy
from service.stores.base import NewItem, Picture

ACCEPTED_FORMATS = {"JPEG", "PNG", "WEBP"}
# What a form's declared content type says the picture is; a picture of another format is
# refused (JPEG bytes sent as image/png), other declared types are not checked.
DECLARED_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
# How much longer one side of an uploaded picture may be than the other. Preprocessing keeps
# the aspect ratio, so without a bound a 141-byte 20000 x 1 PNG becomes 5,120,000 x 256
# pixels (5 GB of memory) before the crop keeps 224 x 224 of them. At 20:1 the resized
# picture is at most 20 * resize**2 pixels (16 MB of float32 for resize=256); panoramas and
# scrolls stay inside. Checked here, on what clients send, not in the shared preprocessing:
# training encodes only pictures it painted itself.
MAX_ASPECT_RATIO = 20
# Indexed works below which the catalogue's median embedding length is not trusted to judge
# an upload's: a first few works of any length are accepted (if finite).
MIN_NORM_CATALOGUE = 10
NOT_FINITE = "NaN or infinite values are not features"


class ImageError(ValueError):
    """An upload that is not a usable image; `status` is the HTTP answer it deserves."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def decode(
    data: bytes, max_bytes: int, max_pixels: int, declared: str | None = None
) -> Image.Image:
    """Bytes to an RGB image, refusing what is too big, not an image, not JPEG/PNG/WebP, or
    not what its `declared` content type says.

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
            said = DECLARED_FORMATS.get((declared or "").split(";")[0].strip().lower())
            if said not in (None, image.format):
                raise ImageError(f"a {image.format} image sent as {declared}", 415)
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


@dataclass(frozen=True)
class Upload:
    """One artwork as a request gave it, each field valid on its own. Its features come as
    exactly one of: `features` (a vector), `features_b64` (the vector as little-endian
    float32 bytes in base64), `image_b64` (a picture in base64, in JSON) or `image` (a
    picture's bytes, from a form)."""

    id: str
    artist_id: str
    edition_size: int | None
    stock: int | None
    metadata: dict[str, Any]
    features: list[float] | np.ndarray | None = None
    features_b64: str | None = None
    image_b64: str | None = None
    image: bytes | None = None
    image_type: str | None = None  # the form's content type for `image`

    def without_features(self) -> Upload:
        """The upload but its features (vector, text or picture): what a batch keeps once
        `prepare` has them in its matrix, so that a batch waiting its turn holds them once.
        Made by the constructor, four times faster than `dataclasses.replace`."""
        return Upload(self.id, self.artist_id, self.edition_size, self.stock, self.metadata)


@dataclass(frozen=True)
class Problem:
    """What is wrong with upload number `upload`: `where` is the field (and a position in
    it), `status` the HTTP answer a picture's problem deserves on its own (413 too large,
    415 not JPEG/PNG/WebP)."""

    upload: int
    where: tuple[str | int, ...]
    message: str
    status: int = 422


class UploadRefused(ValueError):
    """Nothing was stored: `problems` lists every upload's every problem."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{p.upload} {p.where}: {p.message}" for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class Ingested:
    created: list[str]
    updated: list[str]
    index_size: int


def ingest(
    uploads: list[Upload], serving: Serving, catalogue: CatalogueIndex, settings: Settings
) -> Ingested:
    """Check, embed, store and index a request's uploads, or raise UploadRefused."""
    items = embed(prepare(uploads, serving.model, settings), serving, settings)
    result = catalogue.upsert_items(items)
    return Ingested(result.created, result.updated, len(catalogue.serving.index))


@dataclass(frozen=True)
class Prepared:
    """Uploads that passed every check that needs no embedding, with their features."""

    uploads: list[Upload]
    features: np.ndarray  # float32 [N, F]: the vectors sent, or the pictures' encodings
    fields: list[str]  # where each upload's features came from
    web: dict[int, Picture]  # the web-sized copies of uploaded pictures, which the store keeps


def prepare(uploads: list[Upload], model: LoadedModel, settings: Settings) -> Prepared:
    """Check every upload against `model` and the limits, and encode its pictures; raise
    UploadRefused naming each problem of each upload, in upload order.

    Vectors are checked as one matrix, not one by one: a bulk load checks thousands of
    2048-d works a second.
    """
    problems: list[Problem] = []
    features = np.zeros((len(uploads), model.feature_dim), np.float32)
    found: list[Problem | None] = []  # each upload's problem with its features, if any
    vectors: list[int] = []  # uploads whose vector has the right size: checked as a matrix
    pictures: dict[int, np.ndarray] = {}  # preprocessed at once: full-size pixels never pile up
    web: dict[int, Picture] = {}
    fields: list[str] = []
    for n, upload in enumerate(uploads):
        if upload.image is not None or upload.image_b64 is not None:
            fields.append("image" if upload.image is not None else "image_b64")
            found.append(None)
            try:
                pictures[n], web[n] = _picture(upload, model, settings)
            except ImageError as error:
                found[n] = Problem(n, (fields[n],), str(error), error.status)
        else:
            vector, field, problem = _vector(upload, model.feature_dim)
            fields.append(field)
            found.append(None if problem is None else Problem(n, (field,), problem))
            if problem is None:
                features[n] = vector
                vectors.append(n)
    if vectors:
        largest = settings.max_feature_magnitude
        rows = features if len(vectors) == len(uploads) else features[vectors]
        for row, position, message in _out_of_bounds(rows, largest):
            n = vectors[row]
            found[n] = Problem(n, (fields[n], position), message)
    seen: dict[str, int] = {}
    for n, upload in enumerate(uploads):
        if (features_problem := found[n]) is not None:
            problems.append(features_problem)
        size = len(json.dumps(upload.metadata))
        if size > settings.max_metadata_bytes:
            limit = settings.max_metadata_bytes
            problems.append(Problem(n, ("metadata",), f"{size} bytes of JSON, at most {limit}"))
        if upload.id in seen:
            problems.append(Problem(n, ("id",), f"{upload.id!r} repeats entry {seen[upload.id]}"))
        seen[upload.id] = n
    if problems:
        raise UploadRefused(problems)
    if pictures and model.image_encoder is not None:
        features[list(pictures)] = model.image_encoder.encode_pixels(
            np.stack(list(pictures.values()))
        )
    return Prepared(uploads, features, fields, web)


def _out_of_bounds(vectors: np.ndarray, largest: float) -> list[tuple[int, int, str]]:
    """(row, position, why) for each row of `vectors` holding a value that is not finite or
    beyond ±`largest`, naming the first such value."""
    # Row maxima and minima first (NaN fails both comparisons): no temporary the size of the
    # batch unless a row is refused.
    suspect = ~((vectors.max(axis=1) <= largest) & (vectors.min(axis=1) >= -largest))
    refused = []
    for row in map(int, np.flatnonzero(suspect)):
        finite = np.isfinite(vectors[row])
        if not finite.all():
            refused.append((row, int(np.argmin(finite)), NOT_FINITE))
        else:
            far = int(np.argmax(np.abs(vectors[row]) > largest))
            message = f"{vectors[row, far]:g} is beyond ±{largest:g}: no encoder gives such values"
            refused.append((row, far, message))
    return refused


def embed(prepared: Prepared, serving: Serving, settings: Settings) -> list[NewItem]:
    """The prepared uploads embedded by the model of `serving`, as the store takes them; raise
    UploadRefused for works whose embedding is not finite or outsized (`_outsized`)."""
    model, fields, uploads = serving.model, prepared.fields, prepared.uploads
    embeddings = model.embed_items(prepared.features)
    # A model can still overflow on features inside the bound: such a work could never be
    # scored, and its buyers' histories would turn NaN.
    broken = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
    if broken.size:
        message = "the model's embedding of these features is not finite"
        raise UploadRefused([Problem(int(n), (fields[n],), message) for n in broken])
    outsized = _outsized(uploads, embeddings, serving, settings.max_norm_ratio)
    if outsized:
        raise UploadRefused([Problem(n, (fields[n],), message) for n, message in outsized])
    return [
        NewItem(
            u.id,
            u.artist_id,
            features,
            embedding,
            u.edition_size,
            u.stock,
            u.metadata,
            model.version,
            prepared.web.get(n),
        )
        for n, (u, features, embedding) in enumerate(
            zip(uploads, prepared.features, embeddings, strict=True)
        )
    ]


def _outsized(
    uploads: list[Upload], embeddings: np.ndarray, serving: Serving, ratio: float
) -> list[tuple[int, str]]:
    """The uploads whose embedding is more than `ratio` times the median length of the
    served catalogue's, each with why: a work embedded far longer than the rest outscores
    them for many customers (the paper's architecture has no bound on its output, so features
    inside the magnitude bound can still do it). Measured against the index of `serving`, the
    model that embedded them; a catalogue of fewer than MIN_NORM_CATALOGUE works has no
    median worth trusting, and only the finite check applies."""
    if len(serving.index) < MIN_NORM_CATALOGUE or (median := serving.index.median_norm()) is None:
        return []
    norms = np.linalg.norm(embeddings, axis=1)
    return [
        (
            int(n),
            f"{uploads[n].id!r} embeds {norms[n]:.4g} long, more than {ratio:g} times the "
            f"catalogue's median of {median:.4g} (CURATORNET_MAX_NORM_RATIO): it would outrank "
            "the other works for many customers",
        )
        for n in np.flatnonzero(norms > ratio * median)
    ]


def _vector(upload: Upload, feature_dim: int) -> tuple[np.ndarray, str, str | None]:
    """The float32 vector, the field it came from, and what is wrong with its size if anything."""
    if upload.features_b64 is not None:
        try:
            raw = b64decode(upload.features_b64)
        except ValueError as error:  # binascii.Error, or text that is not ASCII
            return np.zeros(0, np.float32), "features_b64", f"not base64 ({error})"
        if len(raw) != 4 * feature_dim:
            message = f"expected {4 * feature_dim} bytes ({feature_dim} float32), got {len(raw)}"
            return np.zeros(0, np.float32), "features_b64", message
        # A view of the bytes: the caller copies it into its matrix.
        return np.frombuffer(raw, dtype="<f4"), "features_b64", None
    if isinstance(upload.features, np.ndarray) and upload.features.dtype == np.float32:
        features = upload.features  # as service.upload_json reads a body's numbers
    else:
        with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused later
            features = np.asarray(upload.features, dtype=np.float32)
    if features.shape != (feature_dim,):
        return features, "features", f"expected {feature_dim} values, got {len(features)}"
    return features, "features", None


def b64decode(text: str) -> bytes:
    """`base64.b64decode(text, validate=True)`, by pybase64's SIMD decoder: 2 µs rather than 50
    for a 2048-d vector, the largest single cost of a bulk load of base64 features. pybase64
    accepts only what the standard library accepts, and refuses a little more (padding after
    a complete group, which the library takes): what it refuses, the library decides, so the
    bytes and every error message are the library's."""
    try:
        return pybase64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error included
        return base64.b64decode(text, validate=True)


def _picture(upload: Upload, model: LoadedModel, settings: Settings) -> tuple[np.ndarray, Picture]:
    """The upload's picture decoded once, preprocessed for the model's encoder and copied at
    web size for the store."""
    if model.image_encoder is None:
        raise ImageError(
            f"the model being served ({model.version}) takes feature vectors: its manifest "
            "names no image encoder"
        )
    data = upload.image
    if data is None:
        try:
            data = b64decode(upload.image_b64 or "")
        except ValueError as error:  # binascii.Error, or text that is not ASCII
            raise ImageError(f"not base64 ({error})") from None
    image = decode(data, settings.max_image_bytes, settings.max_image_pixels, upload.image_type)
    width, height = image.size
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageError(
            f"a {width}x{height} picture: one side may be at most {MAX_ASPECT_RATIO} times "
            "the other"
        )
    return preprocess(image, model.image_encoder.steps), web_copy(image)
