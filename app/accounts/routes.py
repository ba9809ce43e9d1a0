"""Accounts (admin routes): API keys (create one: the key is shown once; list; revoke) and the audit log of every
state-changing request."""

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi import status as http_status

from app.accounts import audit, keys
from app.accounts.deps import AdminDep
from app.accounts.limits import EffectiveLimits, Limits
from app.accounts.schemas import AuditEventPublic, AuditPublic, KeyCreate, KeyCreated, KeyPublic, KeysPublic
from app.web.deps import DbDep, PageCursor, PageLimit, SettingsDep
from app.web.responses import error_responses

router = APIRouter(responses=error_responses(401, 403))
keys_router = APIRouter(prefix="/keys", tags=["keys"], responses=error_responses(401, 403))


@keys_router.post("", status_code=http_status.HTTP_201_CREATED)
async def create_key(body: KeyCreate, request: Request, admin: AdminDep, db: DbDep,
                     settings: SettingsDep) -> KeyCreated:
    """Create a key for an owner (admin keys only); the answer is the only time the key itself is shown."""
    row, key = await db.run(lambda session: keys.create_key(session=session, owner=body.owner, admin=body.admin,
                                                            name=body.name, limits=body.limits))
    request.state.audit_object = row.id
    public = KeyPublic.of(row, EffectiveLimits.of(settings, body.limits))
    return KeyCreated(**public.model_dump(), key=key)


@keys_router.get("", responses=error_responses(400))
async def list_keys(
    admin: AdminDep, db: DbDep, settings: SettingsDep,
    owner: Annotated[str | None, Query(max_length=64, description="Only this owner's keys.")] = None,
    revoked: Annotated[bool, Query(description="Include revoked keys.")] = False,
    limit: PageLimit = 50,
    cursor: PageCursor = None,
) -> KeysPublic:
    """List keys (never the keys themselves), newest first."""
    rows, next_cursor = await db.read(lambda session: keys.list_keys(
        session=session, owner=owner, revoked=revoked, limit=min(limit, settings.page_size_max), cursor=cursor))
    return KeysPublic(data=[KeyPublic.of(r, EffectiveLimits.of(settings, Limits.model_validate(r.limits or {})))
                            for r in rows], next_cursor=next_cursor)


@keys_router.delete("/{key_id}", status_code=http_status.HTTP_204_NO_CONTENT, responses=error_responses(404))
async def revoke_key(key_id: str, admin: AdminDep, db: DbDep) -> Response:
    """Revoke a key: the next request made with it gets 401, on every API process."""
    await db.run(lambda session: keys.revoke_key(session=session, key_id=key_id))
    return Response(status_code=http_status.HTTP_204_NO_CONTENT)


@router.get("/audit", tags=["audit"], responses=error_responses(400))
async def list_audit(
    admin: AdminDep, db: DbDep, settings: SettingsDep,
    owner: Annotated[str | None, Query(max_length=64, description="Only this owner's requests.")] = None,
    limit: PageLimit = 100,
    cursor: PageCursor = None,
) -> AuditPublic:
    """State-changing requests: who (key, owner, client), what (method, route), which object, the outcome."""
    rows, next_cursor = await db.read(lambda session: audit.list_events(
        session=session, owner=owner, limit=min(limit, settings.page_size_max), cursor=cursor))
    return AuditPublic(data=[AuditEventPublic.model_validate(r) for r in rows], next_cursor=next_cursor)


router.include_router(keys_router)
