"""Dependencies for route signatures, as Annotated aliases.

All of them are async: FastAPI runs a sync dependency on the threadpool, a thread hop per request for
what is only an attribute read."""

from typing import Annotated

import numpy as np
import redis
from fastapi import Depends, Request

from app.batching import Batcher
from app.config import Settings, get_settings
from app.db import Database
from app.predictor import Work
from app.serving import ServedModels


async def settings_dep() -> Settings:
    return get_settings()


async def get_owner(settings: Annotated[Settings, Depends(settings_dep)]) -> str:
    # One local owner until authentication arrives; every query is already scoped by it.
    return settings.owner


async def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def get_redis(request: Request) -> redis.Redis:
    client: redis.Redis = request.app.state.redis
    return client


async def get_served(request: Request) -> ServedModels:
    served: ServedModels = request.app.state.served
    return served


PredictBatcher = Batcher[Work, np.ndarray]


async def get_batcher(request: Request) -> PredictBatcher:
    batcher: PredictBatcher = request.app.state.batcher
    return batcher


DbDep = Annotated[Database, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(settings_dep)]
OwnerDep = Annotated[str, Depends(get_owner)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
ServedDep = Annotated[ServedModels, Depends(get_served)]
BatcherDep = Annotated[PredictBatcher, Depends(get_batcher)]
