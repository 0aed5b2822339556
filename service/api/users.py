"""/users: a few customers to look at; /users/{id}/history: what one bought, oldest first."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from service.api.deps import KeyAccess, StoreDep
from service.api.schemas import errors

router = APIRouter(tags=["users"])


class PurchaseEntry(BaseModel):
    item_id: str
    timestamp: datetime


class HistoryOut(BaseModel):
    user_id: str
    purchases: list[PurchaseEntry]


class CustomersOut(BaseModel):
    user_ids: list[str] = Field(description="customers with purchases, by id")


@router.get(
    "/users",
    response_model=CustomersOut,
    dependencies=[KeyAccess],
    responses=errors(401, 403, 503),
)
def customers(store: StoreDep, limit: Annotated[int, Query(ge=1, le=100)] = 8) -> CustomersOut:
    """A few customers with purchases, for a person to pick one (the storefront page). Who
    buys is personal data, so it needs the API key as histories do."""
    return CustomersOut(user_ids=store.customers(limit))


@router.get(
    "/users/{user_id}/history",
    response_model=HistoryOut,
    dependencies=[KeyAccess],
    responses=errors(401, 403, 404, 503),
)
def user_history(
    user_id: str,
    store: StoreDep,
    limit: Annotated[
        int | None, Query(ge=1, le=1_000_000, description="only the latest purchases")
    ] = None,
) -> HistoryOut:
    history = store.history(user_id, limit)
    if not history:
        raise HTTPException(404, f"no purchases recorded for user {user_id!r}")
    return HistoryOut(
        user_id=user_id,
        purchases=[
            PurchaseEntry(item_id=p.item_id, timestamp=datetime.fromtimestamp(p.timestamp, UTC))
            for p in history
        ],
    )
