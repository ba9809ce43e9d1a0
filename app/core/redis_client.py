"""The one place our Redis clients are made (the API's, the workers', `taas up`'s), with one set of timeouts."""

from typing import Any

import redis
import redis.asyncio

from app.core.config import Settings, get_settings


def timeouts(settings: Settings) -> dict[str, Any]:
    """Socket timeouts for a Redis connection of ours: a dead server fails a call instead of hanging it."""
    return {"socket_timeout": settings.redis_timeout_seconds, "socket_connect_timeout": settings.redis_timeout_seconds}


def redis_client(settings: Settings | None = None, *, url: str | None = None) -> redis.Redis:
    """A client of the configured Redis (or of `url`)."""
    settings = settings or get_settings()
    return redis.Redis.from_url(url or settings.redis_url, **timeouts(settings))


def async_redis_client(settings: Settings | None = None) -> redis.asyncio.Redis:
    """An asyncio client of the configured Redis."""
    settings = settings or get_settings()
    return redis.asyncio.Redis.from_url(settings.redis_url, **timeouts(settings))
