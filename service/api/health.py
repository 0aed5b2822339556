"""Operations: liveness, readiness, the model being served, Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import (
    FollowerDep,
    MetricsDep,
    RolloutsDep,
    ServingDep,
    SettingsDep,
    StoreDep,
)

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers; says nothing about the model or the store."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        503: {
            "description": "the store does not answer, this process lags behind it, or it "
            "cannot serve the model the fleet rolled out"
        }
    },
)
def readyz(
    serving: ServingDep,
    store: StoreDep,
    follower: FollowerDep,
    rollouts: RolloutsDep,
    settings: SettingsDep,
) -> Response:
    """Ready when the model is loaded, the store answers, this process serves the model the
    fleet chose and keeps up with the store's changes; 503 otherwise (a process serving a
    stale index, or another model than its peers, is not ready)."""
    lag = follower.lag()
    body: dict[str, Any] = {
        "model": serving.model.version,
        "index_size": len(serving.index),
        "sync_lag_s": round(lag, 3),
    }
    try:
        store.ping()
    except Exception as error:  # any failure to reach the store means not ready
        return JSONResponse({**body, "status": "unavailable", "store": str(error)}, status_code=503)
    if rollouts.fleet_refusal is not None:
        return JSONResponse(
            {**body, "status": "behind", "fleet_model": rollouts.fleet_refusal}, status_code=503
        )
    if follower.error is not None or lag > settings.max_sync_lag_s:
        behind = follower.error or f"no change applied for {lag:.0f} s"
        return JSONResponse({**body, "status": "behind", "follower": behind}, status_code=503)
    return JSONResponse({**body, "status": "ready", "store": "ok"})


@router.get("/model")
def model(serving: ServingDep) -> dict[str, Any]:
    manifest = serving.model.manifest
    keys = (
        "format_version",
        "feature_dim",
        "embedding_dim",
        "feature_extractor",
        "score",
        "created_at",
        "model",
    )
    return {
        "version": serving.model.version,
        "directory": str(serving.model.directory),
        **{key: manifest.get(key) for key in keys},
        "interests": serving.model.interests,
        "training": manifest.get("training"),
        "metrics": manifest.get("metrics"),
    }


@router.get("/metrics", include_in_schema=False)
def metrics(collected: MetricsDep, serving: ServingDep, rollouts: RolloutsDep) -> Response:
    collected.index_size.set(len(serving.index))
    model = serving.model
    collected.model.info({"version": model.version, "directory": str(model.directory)})
    if rollouts.last_build is not None:
        collected.index_rebuild.set(rollouts.last_build.seconds)
    return Response(generate_latest(collected.registry), media_type=CONTENT_TYPE_LATEST)
