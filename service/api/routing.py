"""One path, two typed endpoints: `POST /items` takes a JSON body or a multipart form.

FastAPI binds one kind of body per endpoint, and Starlette picks a route by path and method
only. These route classes also look at the content type, so each kind of upload has its own
typed endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Scope

from service import upload_json

FORM = "multipart/form-data"


def _is_form(scope: Scope) -> bool:
    content_type = dict(scope.get("headers", [])).get(b"content-type", b"")
    return content_type.decode("latin-1").lower().startswith(FORM)


class FormRoute(APIRoute):
    """Only multipart forms."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        return (match, child) if _is_form(scope) else (Match.NONE, {})


class JsonBodyRoute(APIRoute):
    """Every request but a multipart form, its body one of several tagged shapes.

    Two answers differ from FastAPI's own: a body that is not JSON at all is a 400, and the
    tag that picked the shape (see `TAGS`) is left out of error locations, which point into
    the request as it was sent.
    """

    TAGS = frozenset({"item", "batch"})

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        return (Match.NONE, {}) if _is_form(scope) else (match, child)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_located(request: Request) -> Response:
            try:
                return await handle(UploadRequest(request.scope, request.receive))
            except RequestValidationError as error:
                errors = list(error.errors())
                for problem in errors:
                    if problem["type"] == "json_invalid":
                        reason = problem.get("ctx", {}).get("error", problem["msg"])
                        where = f"character {problem['loc'][-1]}"
                        raise HTTPException(
                            400, f"the body is not valid JSON: {reason} ({where})"
                        ) from None
                raise RequestValidationError(
                    [
                        {**e, "loc": self._untagged(tuple(e["loc"])), "input": _listed(e["input"])}
                        for e in errors
                    ],
                    body=error.body,
                ) from None

        return handle_located

    def _untagged(self, loc: tuple[Any, ...]) -> tuple[Any, ...]:
        return (loc[0], *loc[2:]) if len(loc) > 1 and loc[1] in self.TAGS else loc


class UploadRequest(Request):
    """A request whose JSON body is read by `upload_json.loads`: each upload's feature vector
    comes as one numpy array, not two thousand Python floats."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = upload_json.loads(await self.body())
        return self._json


def _listed(value: Any, depth: int = 3) -> Any:
    """An error's input as json.loads would have read it, for the 422 that echoes it: each
    feature vector `UploadRequest` read as an array, a list again. They lie at most `depth`
    levels down (the batch, its items, an item), and nothing deeper is walked: a hostile
    body nests hundreds of levels."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if depth and isinstance(value, dict):
        return {key: _listed(inner, depth - 1) for key, inner in value.items()}
    if depth and isinstance(value, list):
        return [_listed(inner, depth - 1) for inner in value]
    return value
