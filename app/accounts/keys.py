"""API keys: their format, the service functions (create: the key is returned once; list; revoke), and the lookup
of each request's key.

A key is "taas_" + 32 random bytes (URL-safe base64); the database keeps only its SHA-256, looked up on every
request (no cache: a revoked key fails the very next request, on every API process). The key travels only in
the Authorization header, never in a cookie or the URL, so a page on another site cannot make a browser send it.
Keyword-only service functions, raising domain errors, as app.jobs.service."""

import hashlib
import secrets
from typing import Any

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql import FromClause

from app.accounts.limits import Limits
from app.core.batched_reads import BatchedLookup
from app.core.db import rowcount
from app.core.errors import NotFound
from app.core.paging import newest_first
from app.core.reads import Query, Reads, column_names, namespace
from app.core.tables import ApiKey, is_id, utcnow

KEY_PREFIX = "taas_"
# Characters of a key shown in listings (the prefix and 7 of the random part).
SHOWN_CHARS = len(KEY_PREFIX) + 7


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


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


def find_key(*, session: Session, key: str) -> ApiKey | None:
    return session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash(key)))


def key_is_valid(*, session: Session, key: str) -> bool:
    row = find_key(session=session, key=key)
    return row is not None and row.revoked_at is None


# What authenticating a request reads of its key (app.accounts.principal.principal_of): no more, as every request
# pays for each column read and converted.
PRINCIPAL_COLUMNS = (ApiKey.id, ApiKey.owner, ApiKey.admin, ApiKey.limits, ApiKey.revoked_at)
PRINCIPAL_NAMES = column_names(PRINCIPAL_COLUMNS)


def _keys_by_hash(r: FromClause) -> Select[Any]:
    return select(r.c.key_hash, *PRINCIPAL_COLUMNS).select_from(
        r.join(ApiKey.__table__, ApiKey.key_hash == r.c.key_hash))


KEYS_BY_HASH = Query(("key_hash",), _keys_by_hash)


class KeyLookup:
    """Each request's key row by its hash (app.accounts.deps), batched with the concurrent requests' lookups."""

    def __init__(self, reads: Reads):
        self.reads = reads
        self.lookup: BatchedLookup[str, Any] = BatchedLookup(self._fetch, max_in_flight=reads.capacity)

    async def get(self, hashed: str) -> Any:
        """The api_keys row of this hash (an object with the attributes of PRINCIPAL_COLUMNS), or None."""
        return await self.lookup.get(hashed)

    async def _fetch(self, hashes: list[str]) -> dict[str, Any]:
        return {row[0]: namespace(PRINCIPAL_NAMES, row[1:])
                for row in await self.reads.rows(KEYS_BY_HASH, [(h,) for h in hashes])}

    async def close(self) -> None:
        await self.lookup.close()
