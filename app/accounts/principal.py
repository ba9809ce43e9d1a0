"""Who a request is: its API key's owner, admin right and limits (a Principal), or the local owner when auth is off."""

from dataclasses import dataclass
from typing import Any

from fastapi.security import HTTPAuthorizationCredentials
from starlette.requests import Request

from app.accounts.keys import KEY_PREFIX
from app.accounts.limits import EffectiveLimits
from app.core.config import Settings
from app.core.errors import Unauthorized


@dataclass(frozen=True)
class Principal:
    """Who makes a request: the key (None when auth is off), its owner, whether it is an admin, its limits."""

    key_id: str | None
    owner: str
    admin: bool
    limits: EffectiveLimits


def principal_of(row: Any, settings: Settings) -> Principal | None:
    """Who a key row (an ApiKey, or a row with its attributes) authenticates: None when there is no row or it was
    revoked."""
    if row is None or row.revoked_at is not None:
        return None
    return Principal(key_id=row.id, owner=row.owner, admin=row.admin,
                     limits=EffectiveLimits.of_stored(settings, row.limits))


def local_principal(settings: Settings) -> Principal:
    """Every request's principal when auth is off: the local owner, an admin."""
    return Principal(key_id=None, owner=settings.owner, admin=True, limits=EffectiveLimits.of(settings))


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
