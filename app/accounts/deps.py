"""Who a request is, as route dependencies (Annotated aliases): its principal from its API key, its owner, an admin,
and its rate. Async, as every dependency here: FastAPI runs a sync one on the threadpool, a thread hop per request."""

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.accounts.keys import KeyLookup, key_hash
from app.accounts.principal import Principal, authenticated, presented_key, principal_of
from app.accounts.rate_limits import RateKind, RateLimits
from app.core.config import get_settings
from app.core.errors import Forbidden

# Declares the scheme in the OpenAPI document (the docs' Authorize button); the key is checked below.
bearer = HTTPBearer(auto_error=False, description="An API key: taas keys create, POST /keys, or the one "
                                                  "./taas.sh run prints.")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def get_principal(request: Request, credentials: BearerDep) -> Principal:
    """Who the request is, from its API key; 401 without a valid one. With auth off: the local owner."""
    settings = get_settings()
    if not settings.auth:
        principal: Principal | None = request.app.state.local_principal
    else:
        # Batched with the lookups of concurrent requests, on the event loop (app.core.reads).
        keys: KeyLookup = request.app.state.key_lookup
        principal = principal_of(await keys.get(key_hash(presented_key(credentials))), settings)
    return authenticated(request, principal)


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


OwnerDep = Annotated[str, Depends(get_owner)]
AdminDep = Annotated[Principal, Depends(get_admin)]
