"""The shared clients as route dependencies (Annotated aliases), from app.state where the lifespan (app.main) put
them. Async, as every dependency here: FastAPI runs a sync one on the threadpool, a thread hop per request for what
is only an attribute read."""

from typing import Annotated

import redis
from fastapi import Depends, Query, Request

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

# The paging parameters of every listing (app.core.paging).
PageLimit = Annotated[int, Query(ge=1, le=10_000, description="Page size (capped at the server's page_size_max).")]
PageCursor = Annotated[str | None, Query(description="next_cursor of the previous page.")]
