"""The shared clients as route dependencies (Annotated aliases), from app.state where the lifespan (app.main) put
them. Async, as every dependency here: FastAPI runs a sync one on the threadpool, a thread hop per request for what
is only an attribute read."""

from typing import Annotated

import redis
from fastapi import Depends, Request

from app.core.config import Settings, get_settings
from app.core.db import Database


async def settings_dep() -> Settings:
    return get_settings()


async def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def get_redis(request: Request) -> redis.Redis:
    client: redis.Redis = request.app.state.redis
    return client


DbDep = Annotated[Database, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(settings_dep)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
