"""Operations: liveness, readiness, the model being served, Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import RecommenderDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process answers; says nothing about the model or the store."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(recommender: RecommenderDep) -> Response:
    """Ready when the model is loaded and the store answers; 503 otherwise."""
    body: dict[str, Any] = {
        "model": recommender.model_version,
        "index_size": len(recommender.index),
    }
    try:
        recommender.store.ping()
    except Exception as error:  # any failure to reach the store means not ready
        return JSONResponse({**body, "status": "unavailable", "store": str(error)}, status_code=503)
    return JSONResponse({**body, "status": "ready", "store": "ok"})


@router.get("/model")
def model(recommender: RecommenderDep) -> dict[str, Any]:
    manifest = recommender.model.manifest
    keys = ("feature_dim", "embedding_dim", "feature_extractor", "score", "created_at", "model")
    return {
        "version": recommender.model_version,
        "directory": str(recommender.model.directory),
        **{key: manifest.get(key) for key in keys},
        "training": manifest.get("training"),
        "metrics": manifest.get("metrics"),
    }


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, recommender: RecommenderDep) -> Response:
    collected = request.app.state.metrics
    collected.index_size.set(len(recommender.index))
    model = recommender.model
    collected.model.info({"version": model.version, "directory": str(model.directory)})
    collected.index_rebuild.set(recommender.last_rollout.seconds)
    return Response(generate_latest(collected.registry), media_type=CONTENT_TYPE_LATEST)
