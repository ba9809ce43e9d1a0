"""Liveness of the service's dependencies."""

import logging

from fastapi import APIRouter, Response, status
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.core.errors import Unavailable
from app.web.deps import DbDep, RedisDep
from app.web.schemas import HealthPublic

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


# Answers name what is down, never the driver's message (hosts, users, paths): that goes to the log.


def select_one(session: Session) -> str:
    try:
        session.execute(text("SELECT 1"))
    except SQLAlchemyError as e:
        log.warning("health: the database check failed: %s", str(e.__cause__ or e).splitlines()[0])
        return "failed: the database is unreachable"
    return "ok"


def _ping(client: RedisDep) -> str:
    try:
        client.ping()
    except RedisError as e:
        log.warning("health: the Redis check failed: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)
        return "failed: Redis is unreachable"
    return "ok"


@router.get("/health", responses={503: {"model": HealthPublic, "description": "A dependency is down"}})
async def get_health(db: DbDep, client: RedisDep, response: Response) -> HealthPublic:
    """Check the database (SELECT 1) and Redis (PING); 503 names the one that failed."""
    try:
        database = await db.read(select_one)
    except Unavailable as e:
        database = f"failed: {e.detail}"
    redis = await run_in_threadpool(_ping, client)
    ok = database == redis == "ok"
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        response.headers["retry-after"] = "1"
    return HealthPublic(status="ok" if ok else "unavailable", db=database, redis=redis)
