"""One path, two typed endpoints: `POST /items` takes a JSON body or a multipart form.

FastAPI binds one kind of body per endpoint, and Starlette picks a route by path and method
only. These route classes also look at the content type, so each kind of upload has its own
typed endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Scope

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
                return await handle(request)
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
                    [{**e, "loc": self._untagged(tuple(e["loc"]))} for e in errors],
                    body=error.body,
                ) from None

        return handle_located

    def _untagged(self, loc: tuple[Any, ...]) -> tuple[Any, ...]:
        return (loc[0], *loc[2:]) if len(loc) > 1 and loc[1] in self.TAGS else loc
