"""Dependencies: the resources the lifespan created, and the API-key checks.

All `async def`, though none awaits: FastAPI runs a plain `def` dependency on its thread pool,
and a hop there and back for each one cost more CPU than the model's user tower.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from pydantic import SecretStr

from service.config import Settings
from service.follower import Follower
from service.indexing import CatalogueIndex, Serving
from service.observability import ServiceMetrics
from service.recommender import Recommender
from service.rollout import ModelRollouts
from service.stores.base import Store


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> Store:
    return request.app.state.store


async def get_catalogue(request: Request) -> CatalogueIndex:
    return request.app.state.catalogue


async def get_serving(request: Request) -> Serving:
    """The model and index being served, read once: a request that uses both uses one pair
    even when a roll-out swaps them meanwhile."""
    return request.app.state.catalogue.serving


async def get_recommender(request: Request) -> Recommender:
    return request.app.state.recommender


async def get_rollouts(request: Request) -> ModelRollouts:
    return request.app.state.rollouts


async def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


async def get_follower(request: Request) -> Follower:
    return request.app.state.follower


def _check(key: SecretStr, sent: str | None) -> None:
    if sent is None:
        raise HTTPException(
            401, "this request needs an X-API-Key header", {"WWW-Authenticate": "ApiKey"}
        )
    if not secrets.compare_digest(sent.encode(), key.get_secret_value().encode()):
        raise HTTPException(403, "the X-API-Key header does not match the configured key")


def check_api_key(settings: Settings, sent: str | None) -> None:
    """Writes, purchase histories and what reveals them (personal data) need the configured
    key; with none configured the service is open (local use: Settings refuses it beyond
    loopback)."""
    if settings.api_key is not None:
        _check(settings.api_key, sent)


async def require_api_key(
    settings: Annotated[Settings, Depends(get_settings)],
    x_api_key: Annotated[str | None, Header()] = None,
) -> None:
    check_api_key(settings, x_api_key)


async def require_admin_key(
    settings: Annotated[Settings, Depends(get_settings)],
    x_api_key: Annotated[str | None, Header()] = None,
) -> None:
    """Administration has its own key, so a leaked write key cannot roll out models, and is
    never open: without a configured key it is switched off."""
    if settings.admin_key is None:
        raise HTTPException(
            403, "administration is disabled: set CURATORNET_ADMIN_KEY to enable it"
        )
    _check(settings.admin_key, x_api_key)


SettingsDep = Annotated[Settings, Depends(get_settings)]
# Reads only (an item, a history, a ping): every write goes through CatalogueDep, which keeps
# the index in step.
StoreDep = Annotated[Store, Depends(get_store)]
CatalogueDep = Annotated[CatalogueIndex, Depends(get_catalogue)]
ServingDep = Annotated[Serving, Depends(get_serving)]
RecommenderDep = Annotated[Recommender, Depends(get_recommender)]
RolloutsDep = Annotated[ModelRollouts, Depends(get_rollouts)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
FollowerDep = Annotated[Follower, Depends(get_follower)]
KeyAccess = Depends(require_api_key)  # writes and purchase histories (/recommend: by user_id)
AdminAccess = Depends(require_admin_key)
