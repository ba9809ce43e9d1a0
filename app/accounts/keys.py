"""API key service functions: create (the key is returned once), list, revoke, and the lookup of a request's key.

Keyword-only, raising domain errors, as app/jobs.py."""

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from app.accounts.limits import EffectiveLimits, Limits
from app.accounts.principal import SHOWN_CHARS, Principal, key_hash, new_key
from app.core.config import Settings
from app.core.db import rowcount
from app.core.errors import NotFound
from app.core.paging import newest_first
from app.core.tables import ApiKey, is_id, utcnow


def create_key(*, session: Session, owner: str, admin: bool, name: str | None = None,
               limits: Limits | None = None) -> tuple[ApiKey, str]:
    """A new key for `owner`: its row and the key itself (which is stored nowhere, only its hash)."""
    key = new_key()
    row = ApiKey(owner=owner, admin=admin, name=name, key_hash=key_hash(key), prefix=key[:SHOWN_CHARS],
                 limits=limits.model_dump(exclude_none=True) if limits is not None else None)
    session.add(row)
    session.commit()
    return row, key


def list_keys(*, session: Session, owner: str | None, revoked: bool, limit: int,
              cursor: str | None) -> tuple[list[ApiKey], str | None]:
    """Keys, newest first (of one owner, or all); revoked ones only when asked for."""
    query: Select[tuple[ApiKey]] = select(ApiKey)
    if owner is not None:
        query = query.where(ApiKey.owner == owner)
    if not revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return newest_first(session, query, ApiKey, kind="keys", limit=limit, cursor=cursor)


def revoke_key(*, session: Session, key_id: str) -> ApiKey:
    """Revoke a key (kept, with revoked_at, so the audit log still names it); the next request with it fails."""
    if not is_id(key_id):
        raise NotFound(f"no key {key_id!r}")
    rowcount(session, update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
             .values(revoked_at=utcnow()))
    session.commit()
    row = session.get(ApiKey, key_id, populate_existing=True)
    if row is None:
        raise NotFound(f"no key {key_id!r}")
    return row


def principal_of(row: ApiKey | None, settings: Settings) -> Principal | None:
    """Who a key row authenticates: None when there is no row or it was revoked."""
    if row is None or row.revoked_at is not None:
        return None
    return Principal(key_id=row.id, owner=row.owner, admin=row.admin,
                     limits=EffectiveLimits.of_stored(settings, row.limits))


def find_key(*, session: Session, key: str) -> ApiKey | None:
    return session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash(key)))


def keys_by_hash(session: Session, hashes: list[str]) -> dict[str, ApiKey]:
    """The rows of these key hashes (one query for a batch of requests' keys)."""
    return {row.key_hash: row for row in session.scalars(select(ApiKey).where(ApiKey.key_hash.in_(hashes)))}


def key_is_valid(*, session: Session, key: str) -> bool:
    row = find_key(session=session, key=key)
    return row is not None and row.revoked_at is None
