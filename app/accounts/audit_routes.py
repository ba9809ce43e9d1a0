"""The audit log (admin): every state-changing request, newest first."""

from typing import Annotated

from fastapi import APIRouter, Query

from app.accounts import audit
from app.web.deps import AdminDep, DbDep, SettingsDep
from app.web.schemas import AuditEventPublic, AuditPublic, error_responses

router = APIRouter(tags=["audit"], responses=error_responses(401, 403))


@router.get("/audit", responses=error_responses(400))
async def list_audit(
    admin: AdminDep, db: DbDep, settings: SettingsDep,
    owner: Annotated[str | None, Query(max_length=64, description="Only this owner's requests.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> AuditPublic:
    """State-changing requests: who (key, owner, client), what (method, route), which object, the outcome."""
    rows, next_cursor = await db.read(lambda session: audit.list_events(
        session=session, owner=owner, limit=min(limit, settings.page_size_max), cursor=cursor))
    return AuditPublic(data=[AuditEventPublic.model_validate(r) for r in rows], next_cursor=next_cursor)
