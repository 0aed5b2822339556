"""/recommend: top-k artworks for sale for a customer, or for a visitor's list of items."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import RecommenderDep, SettingsDep, check_api_key
from service.api.schemas import (
    Identifier,
    RecommendedItem,
    errors,
    invalid,
    json_response,
    recommended,
)
from service.config import Settings
from service.recommender import FALLBACK, PERSONALIZED, Filters, Recommender
from service.stores.base import UnknownItemsError

router = APIRouter(tags=["recommend"])
JSON = b"application/json"


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
    return json_response(answer(request, recommender, settings))


def answer(request: RecommendIn, recommender: Recommender, settings: Settings) -> dict[str, Any]:
    """The 200 answer to a valid request (RecommendOut), the caller having checked the key;
    a RequestValidationError (422) for what only the settings or the store can refuse."""
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
    return {
        "strategy": result.strategy,
        "user_id": request.user_id,
        "model_version": result.model_version,
        "history_used": result.history_used,
        "items": [recommended(r) for r in result.items],
    }


class RecommendFastPath:
    """ASGI middleware (the innermost) that answers a plainly valid `POST /recommend` itself,
    with the route's own model, key check and answer, but without FastAPI's routing,
    dependency solving and request machinery. Every other request, and any such request it
    cannot answer with a 200 (not JSON, invalid, a wrong key, k too large, the store down,
    anything raised), goes on to the app with its body as read, and the app answers it as
    always: a recommendation writes nothing, so trying it again is safe. A body whose reading
    was refused (the body limit's 413) is refused again where the app reads it.

    Why: that machinery cost 0.4 to 0.5 ms of the 1.7 to 1.8 ms of server CPU per
    recommendation (13,297 works, one request at a time over HTTP): more than the exact search
    over the whole catalogue. The answer is the route's own response, and tests/service/test_api.py
    holds every answer, byte for byte and header for header, to the route's.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.route = next(r for r in router.routes if isinstance(r, APIRoute))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] != "/recommend"
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        # The first of a repeated header, as FastAPI reads headers.
        headers = dict(reversed(scope["headers"]))
        if headers.get(b"content-type") != JSON:
            await self.app(scope, receive, send)
            return
        received: list[Message] = []
        refused = None  # what reading the body raised: the body limit's 413, say
        try:
            while not received or received[-1].get("more_body", False):
                received.append(await receive())
                if received[-1]["type"] != "http.request":  # the client went away
                    break
        except Exception as error:
            refused = error
        response = None
        if refused is None and received[-1]["type"] == "http.request":
            response = _answer(scope, headers, b"".join(m.get("body", b"") for m in received))
        if response is None:
            await self.app(scope, _replaying(received, receive, refused), send)
            return
        scope["route"] = self.route  # as the router sets it: the metrics' label
        await response(scope, receive, send)


def _answer(scope: Scope, headers: dict[bytes, bytes], body: bytes) -> Response | None:
    """The route's 200 response, or None for whatever the app must answer."""
    try:
        request = RecommendIn.model_validate_json(body)
        state = scope["app"].state
        settings: Settings = state.settings
        if request.user_id is not None:
            key = headers.get(b"x-api-key")
            check_api_key(settings, None if key is None else key.decode("latin-1"))
        return json_response(answer(request, state.recommender, settings))
    except Exception:  # the app answers it: a 4xx, a 503, or whatever it makes of it
        return None


def _replaying(received: list[Message], receive: Receive, refused: Exception | None) -> Receive:
    """`receive`, giving the messages read already first, then raising what reading the next
    one raised, if it did: the app meets the body as the fast path met it."""
    pending = list(received)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        if refused is not None:
            raise refused
        return await receive()

    return replay
