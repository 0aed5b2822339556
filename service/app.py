"""The FastAPI application: `create_app()` builds it; the lifespan owns every resource.

Start-up loads the model (a manifest mismatch stops it with the loader's message), opens the
store, rebuilds the index from it, and starts the thread that applies changes made by other
processes serving the same store.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import faiss
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from service.api import health, items, purchases, recommend, users
from service.config import Settings
from service.encoders import load_model
from service.index import ItemIndex
from service.observability import BodyLimitMiddleware, MetricsMiddleware, ServiceMetrics
from service.recommender import Recommender
from service.stores import open_store
from service.stores.base import NotForSaleError, UnknownItemsError

log = logging.getLogger("service")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _follow(recommender: Recommender, interval: float, stop: threading.Event) -> None:
    while not stop.wait(interval):
        try:
            recommender.follow_changes()
        except Exception:  # a store hiccup must not kill the follower; the next tick retries
            log.exception("could not apply changes from the store; retrying")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # uvicorn's worker processes configure only uvicorn's loggers; without this the
        # service's own lines (the index rebuild, sync errors) vanish when workers > 1.
        logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
        # Scale with worker processes, not threads: idle OpenMP and ONNX Runtime threads spin,
        # and several workers' spinning threads would take the cores from each other.
        faiss.omp_set_num_threads(settings.inference_threads)
        model = load_model(settings.model_dir, settings.inference_threads)
        store = open_store(settings.store_url)
        index = ItemIndex(
            model.embedding_dim, settings.index_kind, settings.hnsw_m, settings.hnsw_ef_search
        )
        recommender = Recommender(model, store, index, settings.history_length)
        seconds = recommender.rebuild_index()
        log.info(
            "model %s from %s; index (%s) rebuilt from the store with %d items in %.3f s",
            model.version,
            settings.model_dir,
            settings.index_kind,
            len(index),
            seconds,
        )
        metrics.index_rebuild.set(seconds)
        metrics.model.info({"version": model.version, "directory": str(settings.model_dir)})
        app.state.settings, app.state.recommender, app.state.metrics = (
            settings,
            recommender,
            metrics,
        )
        stop = threading.Event()
        follower = threading.Thread(
            target=_follow, args=(recommender, settings.sync_interval_s, stop), daemon=True
        )
        follower.start()
        try:
            yield
        finally:
            stop.set()
            follower.join(timeout=5)
            store.close()

    app = FastAPI(
        title="CuratorNet service",
        summary="Visually-aware artwork recommendations, new works and customers included",
        version="0.1.0",
        lifespan=lifespan,
    )
    for router in (items.router, purchases.router, users.router, recommend.router, health.router):
        app.include_router(router)

    @app.exception_handler(UnknownItemsError)
    async def unknown_items(request: Request, error: UnknownItemsError) -> JSONResponse:
        return JSONResponse({"detail": str(error), "item_ids": error.item_ids}, status_code=404)

    @app.exception_handler(NotForSaleError)
    async def not_for_sale(request: Request, error: NotForSaleError) -> JSONResponse:
        return JSONResponse({"detail": str(error), "item_ids": error.item_ids}, status_code=409)

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
