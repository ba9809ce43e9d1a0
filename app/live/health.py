"""The checks of the service's dependencies (GET /health, /v2/health/ready): each answers "ok" or what is down,
never the driver's message (hosts, users, paths), which goes to the log."""

import logging

import redis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)


def select_one(session: Session) -> str:
    try:
        session.execute(text("SELECT 1"))
    except SQLAlchemyError as e:
        log.warning("health: the database check failed: %s", str(e.__cause__ or e).splitlines()[0])
        return "failed: the database is unreachable"
    return "ok"


def ping(client: redis.Redis) -> str:
    try:
        client.ping()
    except RedisError as e:
        log.warning("health: the Redis check failed: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)
        return "failed: Redis is unreachable"
    return "ok"
