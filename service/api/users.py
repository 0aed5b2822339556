"""/users/{id}/history: what a customer bought, oldest first."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel

from service.api.deps import KeyAccess, StoreDep
from service.api.schemas import errors

router = APIRouter(tags=["users"])


class PurchaseEntry(BaseModel):
    item_id: str
    timestamp: datetime


class HistoryOut(BaseModel):
    user_id: str
    purchases: list[PurchaseEntry]


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
