"""/items: upload artworks (one, a batch, or a picture in a form), read, delete, and find
similar ones. Uploads are checked, embedded and stored by `service.ingest`."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Body, Form, Header, HTTPException, Path, Query, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Json,
    StrictFloat,
    Tag,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)

from service.api.deps import (
    CatalogueDep,
    KeyAccess,
    RecommenderDep,
    ServingDep,
    SettingsDep,
    StoreDep,
)
from service.api.routing import FORM, FormRoute, JsonBodyRoute
from service.api.schemas import (
    MAX_ID_LENGTH,
    Identifier,
    RecommendedItem,
    errors,
    invalid,
    json_response,
    recommended,
)
from service.ingest import Ingested, Upload, UploadRefused, ingest
from service.pictures import (
    CACHE_CONTROL,
    MAX_SIDE,
    MEDIA_TYPE,
    etag,
    not_modified,
    repainted,
)

router = APIRouter(tags=["items"])


# Levels of objects and arrays one item's metadata may nest.
MAX_METADATA_DEPTH = 8
# Lengths of the known metadata fields (ItemMetadata, and plain_upload which reads as it does).
MAX_TITLE, MAX_IMAGE_URL, MAX_TAG, MAX_TAGS = 500, 2048, 100, 50


class ItemMetadata(BaseModel):
    """Free description for the storefront; known fields are checked, others pass through."""

    model_config = ConfigDict(extra="allow")

    title: str | None = Field(None, max_length=MAX_TITLE)
    price: float | None = Field(None, ge=0, allow_inf_nan=False)
    image_url: str | None = Field(None, max_length=MAX_IMAGE_URL)
    tags: list[Annotated[str, Field(max_length=MAX_TAG)]] = Field(
        default_factory=list, max_length=MAX_TAGS
    )

    @model_validator(mode="after")
    def storable(self) -> ItemMetadata:
        """Refuse what would be stored but could not be shown again: nesting deeper than
        MAX_METADATA_DEPTH (every reader parses it recursively, and a few hundred levels
        exhaust Python's stack), text with lone surrogates (not UTF-8) and NaN or infinity
        (not JSON: Python's parser takes them, no response can carry them)."""
        level, values = 1, list((self.model_extra or {}).values())
        while values:
            if level > MAX_METADATA_DEPTH:
                raise ValueError(f"nested deeper than {MAX_METADATA_DEPTH} levels")
            values = [
                inner
                for value in values
                if isinstance(value, dict | list)
                for inner in (value.values() if isinstance(value, dict) else value)
            ]
            level += 1
        try:
            text = json.dumps(self.model_dump(), ensure_ascii=False, allow_nan=False)
        except ValueError:
            raise ValueError("NaN and infinity are not JSON numbers") from None
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a lone surrogate (U+D800 to U+DFFF) is not Unicode text") from None
        return self


# The largest edition (and so stock) a work may have: far beyond any real edition, and small
# enough for every store to hold exactly (SQLite's int64; Lua's doubles, which wrote 1e17 as
# "1e+17", a stock no reader could parse).
MAX_EDITION = 1_000_000


class ItemFields(BaseModel):
    """What every upload says about the artwork besides its features."""

    model_config = ConfigDict(extra="forbid")

    id: Identifier
    artist_id: Identifier
    edition_size: int | None = Field(
        None,
        ge=1,
        le=MAX_EDITION,
        description="prints in the edition; leave out for a one-of-a-kind work",
    )
    stock: int | None = Field(
        None,
        ge=0,
        le=MAX_EDITION,
        description="units for sale now (default: the edition size, 1 for one-of-a-kind; "
        "when replacing a work, what it has left); never more than the edition has left "
        "unsold (409)",
    )

    @model_validator(mode="after")
    def stock_fits_the_edition(self) -> ItemFields:
        most = self.edition_size or 1
        if self.stock is not None and self.stock > most:
            kind = f"an edition of {self.edition_size}" if self.edition_size else "one-of-a-kind"
            raise ValueError(f"stock {self.stock} is more than {kind} allows ({most})")
        return self


def _read_as_numbers(value: Any, validate: ValidatorFunctionWrapHandler) -> Any:
    """A float32 array is a flat array of JSON numbers that the body's parser read as one
    (service.upload_json): what list[StrictFloat] accepts, already converted, so it is taken
    as it is rather than checked one number at a time."""
    return value if isinstance(value, np.ndarray) else validate(value)


# In the OpenAPI document, an array of numbers.
FeatureList = Annotated[list[StrictFloat], WrapValidator(_read_as_numbers)]


class ItemIn(ItemFields):
    features: FeatureList | None = Field(
        None, description="the model's feature vector (GET /model: feature_dim numbers)"
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
    metadata: ItemMetadata = Field(default_factory=lambda: ItemMetadata())

    @model_validator(mode="after")
    def one_feature_encoding(self) -> ItemIn:
        given = [self.features, self.features_b64, self.image_b64]
        if sum(value is not None for value in given) != 1:
            raise ValueError("give exactly one of features, features_b64 or image_b64")
        return self

    def upload(self) -> Upload:
        return Upload(
            id=self.id,
            artist_id=self.artist_id,
            edition_size=self.edition_size,
            stock=self.stock,
            metadata=self.metadata.model_dump(exclude_none=True),
            features=self.features,
            features_b64=self.features_b64,
            image_b64=self.image_b64,
        )


# What an Identifier takes, narrowed to printable ASCII but '/': the ids `plain_upload` reads.
_PLAIN_ID = re.compile(f"[!-.0-~]{{1,{MAX_ID_LENGTH}}}")
_PLAIN_FIELDS = frozenset({"id", "artist_id", "edition_size", "stock", "features", "features_b64"})
_KNOWN_METADATA = frozenset(ItemMetadata.model_fields)
# Prices read as they are: whole numbers up to here are floats exactly, as the model makes them.
_PLAIN_PRICE = 2**53


def plain_upload(value: Any) -> Upload | None:
    """`ItemIn.model_validate(value).upload()` for an upload whose every field is plainly valid
    (ids of printable ASCII, whole numbers in range, features read as an array or base64 text,
    metadata of JSON values nested at most MAX_METADATA_DEPTH deep); None for any other, which
    the model then reads, refusing what it refuses in its own words.

    Why: the model takes 25 to 40 µs an upload (its validators run in Python), as much as
    embedding and storing the work; this takes 2 to 4. It accepts nothing the model refuses
    and gives the same Upload (tests/service/test_plain_upload.py holds it to that).
    """
    if type(value) is not dict or not _PLAIN_FIELDS.issuperset(value.keys() - {"metadata"}):
        return None
    id_, artist_id = value.get("id"), value.get("artist_id")
    if type(id_) is not str or type(artist_id) is not str:
        return None
    if _PLAIN_ID.fullmatch(id_) is None or _PLAIN_ID.fullmatch(artist_id) is None:
        return None
    edition, stock = value.get("edition_size"), value.get("stock")
    if edition is not None and (type(edition) is not int or not 1 <= edition <= MAX_EDITION):
        return None
    if stock is not None and (type(stock) is not int or not 0 <= stock <= (edition or 1)):
        return None
    features, features_b64 = value.get("features"), value.get("features_b64")
    if features is None:
        if type(features_b64) is not str:
            return None
    elif features_b64 is not None or type(features) is not np.ndarray:
        return None
    metadata = _plain_metadata(value["metadata"]) if "metadata" in value else {"tags": []}
    if metadata is None:
        return None
    return Upload(id_, artist_id, edition, stock, metadata, features, features_b64)


def _plain_metadata(value: Any) -> dict[str, Any] | None:
    """ItemMetadata's `model_dump(exclude_none=True)` of `value` when it is plainly valid: its
    fields in their order, then the other keys but those given null; None otherwise."""
    if type(value) is not dict:
        return None
    title, price, image_url = value.get("title"), value.get("price"), value.get("image_url")
    if title is not None and (type(title) is not str or len(title) > MAX_TITLE or not _text(title)):
        return None
    if image_url is not None and (
        type(image_url) is not str or len(image_url) > MAX_IMAGE_URL or not _text(image_url)
    ):
        return None
    if price is not None:
        if type(price) is int and 0 <= price <= _PLAIN_PRICE:
            price = float(price)
        elif type(price) is not float or not 0 <= price < math.inf:
            return None
    tags = value.get("tags", [])
    if type(tags) is not list or len(tags) > MAX_TAGS:
        return None
    if not all(type(tag) is str and len(tag) <= MAX_TAG and _text(tag) for tag in tags):
        return None
    others = {key: inner for key, inner in value.items() if key not in _KNOWN_METADATA}
    if others and not _storable(others):
        return None
    dumped: dict[str, Any] = {}
    if title is not None:
        dumped["title"] = title
    if price is not None:
        dumped["price"] = price
    if image_url is not None:
        dumped["image_url"] = image_url
    dumped["tags"] = list(tags)
    dumped.update((key, inner) for key, inner in others.items() if inner is not None)
    return dumped


def _storable(others: dict[str, Any]) -> bool:
    """What ItemMetadata.storable accepts of the keys it does not know, read level by level as
    it reads them: text that is Unicode, finite numbers, no value deeper than its limit."""
    level, values, keys = 1, list(others.values()), list(others)
    while values or keys:
        if not all(map(_text, keys)):
            return False
        if values and level > MAX_METADATA_DEPTH:
            return False
        inner: list[Any] = []
        keys = []
        for value in values:
            kind = type(value)
            if kind is str:
                if not _text(value):
                    return False
            elif kind is float:
                if not -math.inf < value < math.inf:
                    return False
            elif kind is dict:
                keys += value.keys()
                inner += value.values()
            elif kind is list:
                inner += value
            elif value is not None and kind is not int and kind is not bool:
                return False
        values = inner
        level += 1
    return True


def _text(value: str) -> bool:
    """Whether `value` is Unicode text (no lone surrogate), as UTF-8 can carry it."""
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _read_plainly(value: Any, validate: ValidatorFunctionWrapHandler) -> Any:
    """An upload of a POST /items body read by `plain_upload` where it can be, else by the
    model: the endpoint takes either (an Upload, or an ItemIn to make one of)."""
    upload = plain_upload(value)
    return validate(value) if upload is None else upload


# ItemIn as a request's body holds it.
ItemInBody = Annotated[ItemIn, WrapValidator(_read_plainly)]


class ItemBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ItemInBody] = Field(min_length=1)


def _shape(body: Any) -> str:
    return "batch" if isinstance(body, dict) and "items" in body else "item"


# A JSON upload: one artwork, or a batch under "items" (JsonBodyRoute keeps the tags out of
# error locations).
OneItemOrBatch = Annotated[
    Annotated[ItemInBody, Tag("item")] | Annotated[ItemBatch, Tag("batch")],
    Discriminator(_shape),
]


class ItemForm(ItemFields):
    """One artwork as a multipart form, its picture in the file field `image`."""

    image: UploadFile = Field(description="JPEG, PNG or WebP, for a model that takes pictures")
    metadata: Json[ItemMetadata] | None = Field(None, description="a JSON object")

    def upload(self, image: bytes) -> Upload:
        return Upload(
            id=self.id,
            artist_id=self.artist_id,
            edition_size=self.edition_size,
            stock=self.stock,
            metadata=self.metadata.model_dump(exclude_none=True) if self.metadata else {},
            image=image,
            image_type=self.image.content_type,
        )


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


def _refusal(refused: UploadRefused, batch: bool) -> Exception:
    """The answer to refused uploads, the same for JSON and forms: a picture's own status
    when every problem has it (413 too large, 415 not JPEG/PNG/WebP), else FastAPI's 422
    with each problem located in the request as sent."""
    statuses = {p.status for p in refused.problems}
    if len(statuses) == 1 and statuses != {422}:
        return HTTPException(statuses.pop(), "; ".join(p.message for p in refused.problems))
    return RequestValidationError(
        [
            {
                "type": "value_error",
                "loc": ("body", "items", p.upload, *p.where) if batch else ("body", *p.where),
                "msg": p.message,
                "input": None,
            }
            for p in refused.problems
        ]
    )


async def upload_items(
    upload: Annotated[OneItemOrBatch, Body()],
    serving: ServingDep,
    catalogue: CatalogueDep,
    settings: SettingsDep,
) -> UpsertOut:
    """One artwork, or a batch under 'items', as JSON."""
    items = upload.items if isinstance(upload, ItemBatch) else [upload]
    if len(items) > settings.max_batch_items:
        limit = settings.max_batch_items
        raise invalid(("body", "items"), f"at most {limit} per request, got {len(items)}")
    uploads = [item if isinstance(item, Upload) else item.upload() for item in items]
    try:
        # Checking and embedding a full batch takes a fraction of a second of CPU: done in
        # the thread pool, it does not stall the event loop's other requests.
        ingested = await run_in_threadpool(ingest, uploads, serving, catalogue, settings)
    except UploadRefused as refused:
        raise _refusal(refused, isinstance(upload, ItemBatch)) from None
    return _upserted(ingested)


def _upserted(ingested: Ingested) -> UpsertOut:
    """The answer to an upload. Not `UpsertOut(**asdict(ingested))`: asdict deep-copies the
    id lists, 1.5 ms a batch of 1,000 works."""
    return UpsertOut(
        created=ingested.created, updated=ingested.updated, index_size=ingested.index_size
    )


async def upload_picture(
    form: Annotated[ItemForm, Form(media_type=FORM)],
    serving: ServingDep,
    catalogue: CatalogueDep,
    settings: SettingsDep,
) -> UpsertOut:
    """One artwork as a picture, in a form."""
    data = await form.image.read(settings.max_image_bytes + 1)
    try:
        ingested = await run_in_threadpool(
            ingest, [form.upload(data)], serving, catalogue, settings
        )
    except UploadRefused as refused:
        raise _refusal(refused, batch=False) from None
    return _upserted(ingested)


def _form_schema() -> dict[str, Any]:
    """ItemForm's JSON schema, its nested models referring to the document's components."""
    schema = ItemForm.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)  # ItemMetadata: already a component, from ItemIn
    return schema


def _add_upload_route(
    endpoint: Callable[..., Any], route_class: type[APIRoute], **documentation: Any
) -> None:
    router.add_api_route(
        "/items",
        endpoint,
        methods=["POST"],
        response_model=UpsertOut,
        dependencies=[KeyAccess],
        responses=errors(400, 401, 403, 409, 413, 415, 503),
        route_class_override=route_class,
        **documentation,
    )


_add_upload_route(
    upload_items,
    JsonBodyRoute,
    summary="Add or replace artworks: one, a batch under 'items', or a picture in a form",
    # One operation documents both bodies: FastAPI's schema has one per path and method.
    openapi_extra={"requestBody": {"content": {FORM: {"schema": _form_schema()}}}},
)
_add_upload_route(upload_picture, FormRoute, include_in_schema=False)


def _timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@router.get(
    "/items/{item_id}",
    response_model=ItemOut,
    response_model_exclude_none=False,
    responses=errors(404, 503),
)
def get_item(
    item_id: Annotated[str, Path()],
    store: StoreDep,
    include_features: Annotated[bool, Query(description="also return the raw features")] = False,
) -> ItemOut:
    item = store.get_items([item_id]).get(item_id)
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


@router.get(
    "/items/{item_id}/image",
    response_class=Response,
    responses={
        200: {
            "description": f"the work's picture, at most {MAX_SIDE} pixels on its longer side",
            "content": {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        },
        304: {"description": "If-None-Match names the current ETag: the client's copy is current"},
        **errors(404, 503),
    },
)
def get_item_image(
    item_id: Annotated[str, Path()],
    store: StoreDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The picture the work was uploaded as, web-sized. Public, like the work itself, even
    when an API key guards histories: a storefront shows it to anyone."""
    picture = store.picture(item_id)
    if picture is None:
        item = store.get_items([item_id]).get(item_id)
        picture = None if item is None else repainted(item)  # the demo's works
        if picture is None:
            known = item is not None
            raise HTTPException(
                404, f"item {item_id!r} has no picture" if known else f"no item {item_id!r}"
            )
    tag = etag(picture)
    headers = {"ETag": tag, "Cache-Control": CACHE_CONTROL}
    if not_modified(if_none_match, tag):
        return Response(status_code=304, headers=headers)
    return Response(picture.data, media_type=picture.media_type, headers=headers)


@router.delete(
    "/items/{item_id}",
    response_model=DeletedOut,
    dependencies=[KeyAccess],
    responses=errors(401, 403, 404, 503),
)
def delete_item(item_id: Annotated[str, Path()], catalogue: CatalogueDep) -> DeletedOut:
    if catalogue.delete_item(item_id) is None:
        raise HTTPException(404, f"no item {item_id!r}")
    return DeletedOut(deleted=item_id)


@router.get("/items/{item_id}/similar", response_model=SimilarOut, responses=errors(404, 503))
async def similar_items(  # on the event loop, as /recommend (see there)
    item_id: Annotated[str, Path()],
    recommender: RecommenderDep,
    settings: SettingsDep,
    k: Annotated[int, Query(ge=1)] = 20,
) -> Response:
    if k > settings.max_k:
        raise invalid(("query", "k"), f"k must be at most {settings.max_k}, got {k}")
    hits = recommender.similar(item_id, k)
    return json_response({"item_id": item_id, "items": [recommended(h) for h in hits]})
