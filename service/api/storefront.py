"""The storefront page: static files in `service/static`, served at /ui, with / leading there.

The page calls only the public HTTP API. Its Content-Security-Policy lets it load scripts,
styles and data from this origin alone (pictures may also come from a work's own
`metadata.image_url`, wherever that points), so nothing it runs can reach elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

PAGE_DIRECTORY = Path(__file__).resolve().parent.parent / "static"
PAGE_PATH = "/ui"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: http: https:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse(f"{PAGE_PATH}/")


class PageFiles(StaticFiles):
    """StaticFiles whose every answer carries the page's Content-Security-Policy."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return response


def page_files() -> PageFiles:
    return PageFiles(directory=PAGE_DIRECTORY, html=True)
