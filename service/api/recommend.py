"""/recommend: top-k artworks for sale for a customer, or for a visitor's list of items."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.api.deps import RecommenderDep, SettingsDep, check_api_key
from service.api.schemas import (
    Identifier,
    RecommendedItem,
    errors,
    invalid,
    json_response,
    recommended,
)
from service.recommender import FALLBACK, PERSONALIZED, Filters
from service.stores.base import UnknownItemsError

router = APIRouter(tags=["recommend"])


class RecommendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Identifier | None = Field(None, description="a customer with recorded purchases")
    history: list[Identifier] | None = Field(
        None, max_length=10_000, description="item ids, oldest first, for a visitor without account"
    )
    k: int = Field(20, ge=1, description="how many (at most the service's max_k, 500 by default)")
    exclude_purchased: bool = True
    include_artists: list[Identifier] | None = Field(None, description="only these artists")
    exclude_artists: list[Identifier] = Field(default_factory=list)
    explain: bool = Field(False, description="name the history items behind each result")

    @model_validator(mode="after")
    def one_source(self) -> RecommendIn:
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give exactly one of user_id or history")
        return self


class RecommendOut(BaseModel):
    strategy: str = Field(description=f"{PERSONALIZED!r}, or {FALLBACK!r} with no history")
    user_id: str | None
    model_version: str
    history_used: int
    items: list[RecommendedItem]


@router.post(
    "/recommend", response_model=RecommendOut, responses=errors(400, 401, 403, 404, 413, 503)
)
# `async def` though it blocks: a recommendation takes about a millisecond of CPU, and the hop
# to FastAPI's thread pool and back cost a sizeable share of that. A worker answers one at a time
# either way (its model and index run on one thread, CURATORNET_INFERENCE_THREADS); throughput
# comes from worker processes.
async def recommend(
    request: RecommendIn,
    recommender: RecommenderDep,
    settings: SettingsDep,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Response:
    """A customer's recommendations (by `user_id`) need the API key when one is configured, as
    their purchase history does: `explain` names their purchases, and comparing answers with
    and without `exclude_purchased` lists them. A visitor's (by `history`) are open."""
    if request.user_id is not None:
        check_api_key(settings, x_api_key)
    if request.k > settings.max_k:
        raise invalid(("body", "k"), f"k must be at most {settings.max_k}, got {request.k}")
    filters = Filters(
        exclude_purchased=request.exclude_purchased,
        include_artists=None if request.include_artists is None else set(request.include_artists),
        exclude_artists=set(request.exclude_artists),
    )
    explain = settings.explain_items if request.explain else 0
    if request.user_id is not None:
        # A stored history naming a vanished item is not the caller's mistake: no 422 here.
        result = recommender.for_customer(request.user_id, request.k, filters, explain)
    else:
        try:
            result = recommender.recommend(list(request.history or []), request.k, filters, explain)
        except UnknownItemsError as error:
            raise invalid(("body", "history"), f"unknown item id(s): {error.item_ids}") from None
    return json_response(
        {
            "strategy": result.strategy,
            "user_id": request.user_id,
            "model_version": result.model_version,
            "history_used": result.history_used,
            "items": [recommended(r) for r in result.items],
        }
    )
