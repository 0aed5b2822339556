"""/admin/model: roll out another exported model to every process serving this store."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from curatornet.model_format import ModelError
from service.api.deps import AdminAccess, RolloutsDep
from service.api.schemas import errors, invalid
from service.indexing import FeatureDimensionMismatch

router = APIRouter(tags=["admin"])


class RolloutIn(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_dir: str = Field(
        min_length=1, description="an exported model directory every replica can read"
    )


class RolloutOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    version: str
    model_dir: str
    indexed: int = Field(description="artworks for sale in the new index")
    embedded: int = Field(description="artworks re-embedded from their stored features")
    seconds: float


@router.post(
    "/admin/model",
    response_model=RolloutOut,
    dependencies=[AdminAccess],
    responses=errors(400, 401, 403, 409, 413, 503),
)
async def roll_out_model(request: RolloutIn, rollouts: RolloutsDep) -> RolloutOut:
    """Re-embed the catalogue with the new model, build its index and swap it in; requests are
    answered by the old model until the swap. Other replicas follow within a sync interval.
    Only a directory inside a models root (CURATORNET_MODELS_ROOT) is taken (422 otherwise)."""
    try:
        rollout = await run_in_threadpool(rollouts.roll_out, Path(request.model_dir))
    except ModelError as error:
        raise invalid(("body", "model_dir"), f"cannot load that model: {error}") from None
    except FeatureDimensionMismatch as error:
        raise HTTPException(409, str(error)) from None
    return RolloutOut(
        version=rollout.version,
        model_dir=rollout.model_dir,
        indexed=rollout.indexed,
        embedded=rollout.embedded,
        seconds=rollout.seconds,
    )
