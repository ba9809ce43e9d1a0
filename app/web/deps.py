"""Dependencies for route signatures, as Annotated aliases.

All of them are async: FastAPI runs a sync dependency on the threadpool, a thread hop per request for
what is only an attribute read."""

from typing import Annotated, Any

import numpy as np
import redis
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.accounts.keys import principal_of
from app.accounts.principal import KEY_PREFIX, Principal, key_hash
from app.accounts.rate_limits import RateKind, RateLimits
from app.core.batched_reads import BatchedLookup
from app.core.config import Settings, get_settings
from app.core.db import Database
from app.core.errors import Forbidden, Unauthorized
from app.serving.batching import Batcher
from app.serving.loaded import ServedModels
from app.serving.predictor import Work

# Declares the scheme in the OpenAPI document (the docs' Authorize button); the key is checked below.
bearer = HTTPBearer(auto_error=False, description="An API key: taas keys create, POST /keys, or the one "
                                                  "./taas.sh run prints.")


async def settings_dep() -> Settings:
    return get_settings()


async def get_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """Who the request is, from its API key; 401 without a valid one. With auth off: the local owner."""
    settings = get_settings()
    if not settings.auth:
        principal: Principal | None = request.app.state.local_principal
    else:
        # Batched with the lookups of concurrent requests (PostgreSQL and SQLite: on the event loop).
        lookup: BatchedLookup[str, Any] = request.app.state.key_lookup
        principal = principal_of(await lookup.get(key_hash(presented_key(credentials))), settings)
    return authenticated(request, principal)


BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def presented_key(credentials: HTTPAuthorizationCredentials | None) -> str:
    """The API key of the request's Authorization header; Unauthorized when there is none that could be one."""
    key = credentials.credentials.strip() if credentials is not None else ""
    if not key.startswith(KEY_PREFIX) or len(key) > 128 or not key.isascii():
        raise Unauthorized("this route needs an API key: send the header 'Authorization: Bearer <key>' (keys "
                           "come from `taas keys create`, POST /keys, or the one ./taas.sh run prints)")
    return key


def authenticated(request: Request, principal: Principal | None) -> Principal:
    """The request's principal, kept for the audit log (app.accounts.audit); Unauthorized for a key not found."""
    if principal is None:
        raise Unauthorized("this API key is unknown or was revoked")
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_owner(principal: PrincipalDep) -> str:
    # Every query is scoped by it: another owner's objects are not found.
    return principal.owner


async def get_admin(principal: PrincipalDep) -> Principal:
    if not principal.admin:
        raise Forbidden("this route is for admin keys only (taas keys create --owner NAME --admin)")
    return principal


async def count_rate(request: Request, principal: Principal, kind: RateKind) -> None:
    """Count the request against the key's rate of `kind` (429 when over it)."""
    limits: RateLimits = request.app.state.rate_limits
    await limits.hit(principal, kind)


def rate_limited(kind: RateKind) -> Any:
    """A route dependency: count_rate for `kind`."""

    async def count(request: Request, principal: PrincipalDep) -> None:
        await count_rate(request, principal, kind)

    return Depends(count)


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


DbDep = Annotated[Database, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(settings_dep)]
OwnerDep = Annotated[str, Depends(get_owner)]
AdminDep = Annotated[Principal, Depends(get_admin)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
ServedDep = Annotated[ServedModels, Depends(get_served)]
