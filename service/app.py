"""The FastAPI application: `create_app()` builds it; the lifespan owns every resource.

Start-up loads the model (a manifest mismatch stops it with the loader's message), opens the
store, loads the index from its snapshot (or rebuilds it from the store), and starts the thread
that applies changes made by other processes serving the same store; a clean shutdown saves
the index as the next start's snapshot.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from threadpoolctl import threadpool_limits

from service.api import admin, health, items, purchases, recommend, storefront, users
from service.config import Settings
from service.follower import Follower
from service.index import ItemIndex
from service.indexing import CatalogueIndex
from service.observability import BodyLimitMiddleware, MetricsMiddleware, ServiceMetrics
from service.recommender import Recommender
from service.rollout import ModelRollouts
from service.snapshot import IndexSnapshots
from service.stores import OUTAGE_CLASSES, is_outage, open_store
from service.stores.base import ItemsRefused

log = logging.getLogger("service")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: text that echoes a request (an error's
    location can name a body's key) stays encodable even with a lone surrogate in it."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


def _echo(value: Any) -> Any:
    """An invalid input as a 422 shows it: itself when short, plain JSON; else a note."""
    try:
        text = json.dumps(jsonable_encoder(value), allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return "(not JSON)"
    return value if len(text) <= 200 else "(elided)"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # uvicorn's worker processes configure only uvicorn's loggers; without this the
        # service's own lines (the index rebuild, sync errors) vanish when workers > 1.
        logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
        # Scale with worker processes, not threads: idle OpenMP, BLAS and ONNX Runtime threads
        # spin, and several workers' spinning threads would take the cores from each other.
        # FAISS's OpenMP count is per calling thread, so the index sets it wherever it calls
        # FAISS; numpy's BLAS (the exact search's matrix product) has one global pool.
        threadpool_limits(settings.inference_threads, user_api="blas")
        if settings.api_key is None and not settings.loopback_only:
            log.warning(
                "serving %s without an API key (CURATORNET_ALLOW_ANONYMOUS): anyone who can "
                "reach it may upload, delete, buy and read purchase histories",
                settings.host,
            )
        store = open_store(settings.store_url, settings.sqlite_synchronous)
        try:
            catalogue = CatalogueIndex(
                store,
                lambda dim: ItemIndex(
                    dim,
                    settings.index_kind,
                    settings.hnsw_m,
                    settings.hnsw_ef_search,
                    settings.inference_threads,
                    settings.hnsw_search_threads,
                ),
                IndexSnapshots.for_store(settings, store),
            )
            rollouts = ModelRollouts(store, catalogue, settings.model_loading())
            started = rollouts.start(settings.model_dir)
        except BaseException:
            store.close()
            raise
        if started.snapshot is None:
            log.info(
                "model %s from %s; index (%s) built from the store with %d items "
                "(%d re-embedded by this model) in %.3f s",
                started.version,
                started.model_dir,
                settings.index_kind,
                started.indexed,
                started.embedded,
                started.seconds,
            )
        else:
            log.info(
                "model %s from %s; index (%s) loaded from %s with %d items, "
                "%d changes replayed, in %.3f s",
                started.version,
                started.model_dir,
                settings.index_kind,
                started.snapshot,
                started.indexed,
                started.replayed,
                started.seconds,
            )
        app.state.settings, app.state.metrics, app.state.store = settings, metrics, store
        app.state.catalogue, app.state.rollouts = catalogue, rollouts
        app.state.recommender = Recommender(store, catalogue, settings.history_length)
        follower = Follower(catalogue, rollouts, settings.sync_interval_s)
        app.state.follower = follower
        follower.start()
        try:
            yield
        finally:
            follower.stop()
            try:
                catalogue.save_snapshot()
            finally:
                store.close()

    app = FastAPI(
        title="CuratorNet service",
        summary="Visually-aware artwork recommendations, new works and customers included",
        version="0.1.0",
        lifespan=lifespan,
    )
    # The router tries routes in this order; the most frequent request's come first.
    routers = (recommend, items, purchases, users, health, admin, storefront)
    for router in (module.router for module in routers):
        app.include_router(router)
    app.mount(storefront.PAGE_PATH, storefront.page_files(), name="storefront")

    @app.exception_handler(ItemsRefused)
    async def items_refused(request: Request, error: ItemsRefused) -> JSONResponse:
        return AsciiJSONResponse(
            {"detail": str(error), "item_ids": error.item_ids}, status_code=error.status
        )

    async def unavailable(request: Request, error: Exception) -> JSONResponse:
        if not is_outage(error):
            raise error  # a defect, not an outage: a 500, logged with its traceback
        log.warning("the store cannot answer %s %s: %s", request.method, request.url.path, error)
        detail = f"the store cannot answer now ({type(error).__name__}); retry shortly"
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "1"})

    for error_class in OUTAGE_CLASSES:
        app.add_exception_handler(error_class, unavailable)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        """FastAPI's 422, echoing only short, plain JSON inputs (a 50 MB body must not return
        a 50 MB error; NaN, 1e400 and lone surrogates, which Python's parser accepts, must
        not make the error itself fail)."""
        errors = [{**e, "input": _echo(e.get("input"))} for e in error.errors()]
        return AsciiJSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    app.add_middleware(recommend.RecommendFastPath)  # the innermost, as the router is
    app.add_middleware(
        BodyLimitMiddleware,
        upload_bytes=settings.max_body_bytes,
        other_bytes=settings.max_request_bytes,
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
