"""/purchases: a customer bought some artworks; stock and the index follow at once."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Header, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from service.api.deps import CatalogueDep, KeyAccess
from service.api.schemas import Identifier, errors, invalid
from service.stores.base import IdempotencyKeyReused

router = APIRouter(tags=["purchases"])


class PurchaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Identifier
    item_ids: list[Identifier] = Field(
        min_length=1, max_length=100, description="repeat an edition's id to buy several prints"
    )
    timestamp: AwareDatetime | None = Field(None, description="ISO 8601 with a zone; default now")

    @field_validator("timestamp")
    @classmethod
    def plausible(cls, value: datetime | None) -> datetime | None:
        """Between 1970 and tomorrow: anything else is a client's mistake, refused before
        anything is written (and every stored time can be shown again)."""
        if value is not None:
            latest = datetime.now(UTC) + timedelta(days=1)
            if not datetime(1970, 1, 1, tzinfo=UTC) <= value <= latest:
                raise ValueError(f"a purchase time must lie between 1970 and {latest:%Y-%m-%d}")
        return value


class PurchaseOut(BaseModel):
    user_id: str
    item_ids: list[str]
    timestamp: datetime
    sold_out: list[str] = Field(description="items this purchase took off sale")


@router.post(
    "/purchases",
    status_code=201,
    response_model=PurchaseOut,
    dependencies=[KeyAccess],
    responses=errors(400, 401, 403, 404, 409, 413, 503),
)
def record_purchase(
    purchase: PurchaseIn,
    catalogue: CatalogueDep,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            pattern=r"^[!-~]+$",
            description="any unique string (a UUID): a retry with the same key within a day "
            "is answered with the purchase it recorded, never a second one",
        ),
    ] = None,
) -> PurchaseOut:
    seconds = purchase.timestamp.timestamp() if purchase.timestamp else time.time()
    try:
        sale = catalogue.record_purchase(
            purchase.user_id, purchase.item_ids, seconds, idempotency_key
        )
    except IdempotencyKeyReused as error:
        raise invalid(("header", "Idempotency-Key"), str(error)) from None
    if sale.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return PurchaseOut(
        user_id=sale.user_id,
        item_ids=sale.item_ids,
        timestamp=datetime.fromtimestamp(sale.timestamp, UTC),
        sold_out=sale.sold_out,
    )
