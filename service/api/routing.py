"""One path, two typed endpoints: `POST /items` takes a JSON body or a multipart form.

FastAPI binds one kind of body per endpoint, and Starlette picks a route by path and method
only. These route classes also look at the content type, so each kind of upload has its own
typed endpoint, and `CuratorNetAPI` documents both bodies under the one operation (FastAPI's
own schema would keep only the last route's).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match
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
                        raise HTTPException(
                            400, f"the body is not valid JSON: {reason} at {problem['loc'][-1]}"
                        ) from None
                raise RequestValidationError(
                    [{**e, "loc": self._untagged(tuple(e["loc"]))} for e in errors],
                    body=error.body,
                ) from None

        return handle_located

    def _untagged(self, loc: tuple[Any, ...]) -> tuple[Any, ...]:
        return (loc[0], *loc[2:]) if len(loc) > 1 and loc[1] in self.TAGS else loc


class CuratorNetAPI(FastAPI):
    """FastAPI, with the request bodies of form routes documented beside the JSON bodies of
    routes on the same path and method."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            forms: list[BaseRoute] = [r for r in self.routes if isinstance(r, FormRoute)]
            others = [r for r in self.routes if not isinstance(r, FormRoute)]
            schema, form_schema = self._schema(others), self._schema(forms)
            for path, operations in form_schema.get("paths", {}).items():
                for method, operation in operations.items():
                    target = schema["paths"].setdefault(path, {}).setdefault(method, operation)
                    target.setdefault("requestBody", {"content": {}})["content"].update(
                        operation["requestBody"]["content"]
                    )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(form_schema.get("components", {}).get("schemas", {}))
            self.openapi_schema = schema
        return self.openapi_schema

    def _schema(self, routes: list[BaseRoute]) -> dict[str, Any]:
        return get_openapi(
            title=self.title,
            version=self.version,
            summary=self.summary,
            description=self.description,
            routes=routes,
        )
