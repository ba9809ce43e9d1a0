"""Liveness of the service's dependencies."""

from fastapi import APIRouter, Response, status
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.deps import RedisDep, SessionDep
from app.schemas import HealthPublic

router = APIRouter(tags=["health"])


@router.get("/health", responses={503: {"model": HealthPublic, "description": "A dependency is down"}})
def get_health(session: SessionDep, client: RedisDep, response: Response) -> HealthPublic:
    """Check the database (SELECT 1) and Redis (PING); 503 names the one that failed."""
    db = redis = "ok"
    try:
        session.execute(text("SELECT 1"))
    except SQLAlchemyError as e:
        db = f"failed: {type(e).__name__}: {e.__cause__ or e}".splitlines()[0]
    try:
        client.ping()
    except RedisError as e:
        redis = f"failed: {type(e).__name__}: {e}".splitlines()[0]
    ok = db == redis == "ok"
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthPublic(status="ok" if ok else "unavailable", db=db, redis=redis)
