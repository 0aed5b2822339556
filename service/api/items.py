"""/items: upload artworks (one or a batch), read, delete, and find similar ones."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from datetime import UTC, datetime
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from starlette.datastructures import UploadFile as StarletteUploadFile

from service.api.deps import RecommenderDep, SettingsDep, WriteAccess
from service.api.schemas import Identifier, RecommendedItem
from service.config import Settings
from service.encoders import LoadedModel
from service.images import ImageError, decode, preprocess
from service.recommender import ItemDraft, Recommender

router = APIRouter(tags=["items"])


class ItemMetadata(BaseModel):
    """Free description for the storefront; known fields are checked, others pass through."""

    model_config = ConfigDict(extra="allow")

    title: str | None = Field(None, max_length=500)
    price: float | None = Field(None, ge=0, allow_inf_nan=False)
    image_url: str | None = Field(None, max_length=2048)
    tags: list[Annotated[str, Field(max_length=100)]] = Field(default_factory=list, max_length=50)


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Identifier
    artist_id: Identifier
    features: list[float] | None = Field(
        None, description="the model's feature vector (GET /model: feature_dim floats)"
    )
    features_b64: str | None = Field(
        None,
        description="instead of features: the vector as little-endian float32 bytes in base64, "
        "a third of the size and several times faster to ingest",
    )
    image_b64: str | None = Field(
        None,
        description="instead of features: a JPEG, PNG or WebP image in base64, for a model "
        "whose manifest names an image encoder",
    )
    edition_size: int | None = Field(
        None, ge=1, description="prints in the edition; leave out for a one-of-a-kind work"
    )
    stock: int | None = Field(
        None,
        ge=0,
        description="units for sale now (default: the edition size, 1 for one-of-a-kind; "
        "when replacing a work, what it has left)",
    )
    metadata: ItemMetadata = Field(default_factory=ItemMetadata)

    @model_validator(mode="after")
    def one_feature_encoding(self) -> ItemIn:
        given = [self.features, self.features_b64, self.image_b64]
        if sum(value is not None for value in given) != 1:
            raise ValueError("give exactly one of features, features_b64 or image_b64")
        return self

    @model_validator(mode="after")
    def stock_fits_the_edition(self) -> ItemIn:
        most = self.edition_size or 1
        if self.stock is not None and self.stock > most:
            kind = f"an edition of {self.edition_size}" if self.edition_size else "one-of-a-kind"
            raise ValueError(f"stock {self.stock} is more than {kind} allows ({most})")
        return self


class ItemBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ItemIn] = Field(min_length=1)


class UpsertOut(BaseModel):
    created: list[str]
    updated: list[str]
    index_size: int


class ItemOut(BaseModel):
    id: str
    artist_id: str
    edition_size: int | None
    stock: int
    sold: int
    for_sale: bool
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    features: list[float] | None = None


class DeletedOut(BaseModel):
    deleted: str


class SimilarOut(BaseModel):
    item_id: str
    items: list[RecommendedItem]


_single = TypeAdapter(ItemIn)
_batch = TypeAdapter(ItemBatch)

UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/ItemIn"},
                        {"$ref": "#/components/schemas/ItemBatch"},
                    ]
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["id", "artist_id", "image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "id": {"type": "string"},
                        "artist_id": {"type": "string"},
                        "edition_size": {"type": "integer"},
                        "stock": {"type": "integer"},
                        "metadata": {"type": "string", "description": "a JSON object"},
                    },
                }
            },
        },
    }
}


def _parse(body: Any, max_items: int) -> list[ItemIn]:
    """One artwork, or {"items": [...]}: validated whole, errors located in the request."""
    try:
        if isinstance(body, dict) and "items" in body:
            if isinstance(body["items"], list) and len(body["items"]) > max_items:
                raise RequestValidationError(
                    [
                        {
                            "type": "too_long",
                            "loc": ("body", "items"),
                            "msg": f"at most {max_items} per request, got {len(body['items'])}",
                            "input": None,
                        }
                    ]
                )
            return _batch.validate_python(body).items
        return [_single.validate_python(body)]
    except ValidationError as error:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in error.errors(include_url=False)]
        ) from None


def _features(item: ItemIn, feature_dim: int) -> tuple[np.ndarray, str, str | None]:
    """The float32 vector, the field it came from, and what is wrong with its size if anything."""
    if item.features_b64 is not None:
        try:
            raw = base64.b64decode(item.features_b64, validate=True)
        except binascii.Error as error:
            return np.zeros(0, np.float32), "features_b64", f"not base64 ({error})"
        if len(raw) != 4 * feature_dim:
            message = f"expected {4 * feature_dim} bytes ({feature_dim} float32), got {len(raw)}"
            return np.zeros(0, np.float32), "features_b64", message
        return np.frombuffer(raw, dtype="<f4").astype(np.float32), "features_b64", None
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused later
        features = np.asarray(item.features, dtype=np.float32)
    if features.shape != (feature_dim,):
        return features, "features", f"expected {feature_dim} values, got {len(features)}"
    return features, "features", None


def _drafts(
    items: list[ItemIn], model: LoadedModel, settings: Settings, batch: bool
) -> list[ItemDraft]:
    errors, drafts, seen = [], [], {}
    images: dict[int, np.ndarray] = {}  # preprocessed at once: full-size pixels never pile up
    for n, item in enumerate(items):
        where = ("body", "items", n) if batch else ("body",)
        if item.image_b64 is not None:
            features = np.zeros(model.feature_dim, np.float32)  # filled in once all are valid
            problem = _image(item.image_b64, model, settings, images, n)
            if problem:
                errors.append(((*where, "image_b64"), problem))
        else:
            features, field, problem = _features(item, model.feature_dim)
            if problem:
                errors.append(((*where, field), problem))
            elif not np.isfinite(features).all():
                bad = int(np.flatnonzero(~np.isfinite(features))[0])
                errors.append(((*where, field, bad), "NaN or infinite values are not features"))
        metadata = item.metadata.model_dump(exclude_none=True)
        size = len(json.dumps(metadata))
        if size > settings.max_metadata_bytes:
            limit = settings.max_metadata_bytes
            errors.append(((*where, "metadata"), f"{size} bytes of JSON, at most {limit}"))
        if item.id in seen:
            errors.append(((*where, "id"), f"{item.id!r} repeats entry {seen[item.id]}"))
        seen[item.id] = n
        drafts.append(
            ItemDraft(
                id=item.id,
                artist_id=item.artist_id,
                features=features,
                edition_size=item.edition_size,
                stock=item.stock,
                metadata=metadata,
            )
        )
    if errors:
        raise RequestValidationError(
            [{"type": "value_error", "loc": loc, "msg": msg, "input": None} for loc, msg in errors]
        )
    if images and model.image_encoder is not None:
        encoded = model.image_encoder.encode_pixels(np.stack(list(images.values())))
        for n, features in zip(list(images), encoded, strict=True):
            drafts[n] = dataclasses.replace(drafts[n], features=features)
    return drafts


def _image(
    encoded: str,
    model: LoadedModel,
    settings: Settings,
    images: dict[int, np.ndarray],
    n: int,
) -> str | None:
    """Decode and preprocess entry n's image into `images`, or say what is wrong with it."""
    if model.image_encoder is None:
        return (
            f"the model being served ({model.version}) takes feature vectors: its manifest "
            "names no image encoder"
        )
    try:
        data = base64.b64decode(encoded, validate=True)
    except binascii.Error as error:
        return f"not base64 ({error})"
    try:
        image = decode(data, settings.max_image_bytes, settings.max_image_pixels)
        images[n] = preprocess(image, model.image_encoder.steps)
    except ImageError as error:
        return str(error)
    return None


@router.post(
    "/items",
    status_code=200,
    response_model=UpsertOut,
    dependencies=[WriteAccess],
    openapi_extra=UPLOAD_SCHEMA,
    summary="Add or replace artworks (one, or a batch under 'items')",
)
async def upload_items(
    request: Request, recommender: RecommenderDep, settings: SettingsDep
) -> UpsertOut:
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        body = await _multipart_item(request, recommender.model, settings)
        return await run_in_threadpool(_upload_parsed, body, recommender, settings)
    raw = await request.body()
    # Parsing, validating and embedding a full batch takes a fraction of a second of CPU:
    # done in the thread pool, it does not stall the event loop's other requests.
    return await run_in_threadpool(_upload, raw, recommender, settings)


MULTIPART_FIELDS = {"id", "artist_id", "edition_size", "stock", "metadata", "image"}


async def _multipart_item(request: Request, model: LoadedModel, settings: Settings) -> dict:
    """One artwork from a form: `image` (the file), `id`, `artist_id`, and optionally
    `edition_size`, `stock` and `metadata` (a JSON object). Image problems get their own
    status: 413 too large, 415 not JPEG/PNG/WebP, 422 corrupt or truncated."""
    form = await request.form(max_files=1, max_fields=len(MULTIPART_FIELDS))
    unknown = sorted(set(form) - MULTIPART_FIELDS)
    if unknown:
        raise HTTPException(422, f"unknown form field(s) {unknown}; use {sorted(MULTIPART_FIELDS)}")
    upload = form.get("image")
    if not isinstance(upload, StarletteUploadFile):
        raise HTTPException(422, "the form needs the artwork as a file field named 'image'")
    if model.image_encoder is None:
        raise HTTPException(
            422,
            f"the model being served ({model.version}) takes feature vectors: its manifest "
            "names no image encoder",
        )
    data = await upload.read(settings.max_image_bytes + 1)
    try:  # decoding is CPU work: off the event loop
        await run_in_threadpool(decode, data, settings.max_image_bytes, settings.max_image_pixels)
    except ImageError as error:
        raise HTTPException(error.status, f"image: {error}") from None
    body: dict[str, Any] = {
        key: value for key, value in form.items() if key not in ("image", "metadata")
    }
    if "metadata" in form:
        try:
            body["metadata"] = json.loads(str(form["metadata"]))
        except json.JSONDecodeError as error:
            raise HTTPException(422, f"metadata: not a JSON object ({error})") from None
    body["image_b64"] = base64.b64encode(data).decode()
    return body


def _upload(raw: bytes, recommender: Recommender, settings: Settings) -> UpsertOut:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HTTPException(400, f"the body is not valid JSON: {error}") from None
    return _upload_parsed(body, recommender, settings)


def _upload_parsed(body: Any, recommender: Recommender, settings: Settings) -> UpsertOut:
    items = _parse(body, settings.max_batch_items)
    batch = isinstance(body, dict) and "items" in body
    drafts = _drafts(items, recommender.model, settings, batch)
    result = recommender.add_items(drafts)
    return UpsertOut(
        created=result.created, updated=result.updated, index_size=len(recommender.index)
    )


def _timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@router.get("/items/{item_id}", response_model=ItemOut, response_model_exclude_none=False)
def get_item(
    item_id: Annotated[str, Path()],
    recommender: RecommenderDep,
    include_features: Annotated[bool, Query(description="also return the raw features")] = False,
) -> ItemOut:
    item = recommender.store.get_items([item_id]).get(item_id)
    if item is None:
        raise HTTPException(404, f"no item {item_id!r}")
    return ItemOut(
        id=item.id,
        artist_id=item.artist_id,
        edition_size=item.edition_size,
        stock=item.stock,
        sold=item.sold,
        for_sale=item.for_sale,
        metadata=item.metadata,
        created_at=_timestamp(item.created_at),
        updated_at=_timestamp(item.updated_at),
        features=[float(v) for v in item.features] if include_features else None,
    )


@router.delete("/items/{item_id}", response_model=DeletedOut, dependencies=[WriteAccess])
def delete_item(item_id: Annotated[str, Path()], recommender: RecommenderDep) -> DeletedOut:
    if recommender.delete_item(item_id) is None:
        raise HTTPException(404, f"no item {item_id!r}")
    return DeletedOut(deleted=item_id)


@router.get("/items/{item_id}/similar", response_model=SimilarOut)
def similar_items(
    item_id: Annotated[str, Path()],
    recommender: RecommenderDep,
    settings: SettingsDep,
    k: Annotated[int, Query(ge=1)] = 20,
) -> SimilarOut:
    if k > settings.max_k:
        raise HTTPException(422, f"k must be at most {settings.max_k}")
    hits = recommender.similar(item_id, k)
    return SimilarOut(item_id=item_id, items=[RecommendedItem.of(h) for h in hits])
