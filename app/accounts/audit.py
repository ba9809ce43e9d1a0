"""The audit log: every state-changing request (POST, PUT, PATCH, DELETE) leaves one row: who (key, owner,
client address), what (method, route), which object, and how it ended (status code, outcome).

Written by an ASGI middleware after the response went out, so every route is covered, including the ones
added later and requests refused before they reached a route (401, 413, 429). A route names the object it
created with `request.state.audit_object`; otherwise it is the path's id parameter."""

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.accounts.principal import Principal
from app.core.db import Database
from app.core.paging import newest_first
from app.core.tables import AuditEvent

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Path parameters that name the object a route acts on.
OBJECT_PARAMS = ("job_id", "dataset_id", "key_id", "name")
# POSTs that change nothing: inference. At thousands of requests a second, a row each would cost more than
# the predictions (and even wrapping their answers costs a few per cent of /predict's throughput).


def changes_state(method: str, path: str) -> bool:
    if method in SAFE_METHODS:
        return False
    return not (path == "/predict" or (path.startswith("/v2/models/") and path.endswith("/infer")))


def outcome_of(status: int) -> str:
    if status < 400:
        return "succeeded"
    if status in (401, 403):
        return "denied"
    if status == 429:
        return "limited"
    return "refused" if status < 500 else "failed"


def event_of(scope: Scope, status: int) -> AuditEvent:
    state: dict[str, Any] = scope.get("state", {})
    principal: Principal | None = state.get("principal")
    route = scope.get("route")
    params: dict[str, Any] = scope.get("path_params", {})
    object_id = state.get("audit_object") or next((str(params[p]) for p in OBJECT_PARAMS if p in params), None)
    client = scope.get("client")
    return AuditEvent(
        key_id=principal.key_id if principal else None, owner=principal.owner if principal else None,
        method=scope["method"][:8], route=str(getattr(route, "path", scope.get("path", "")))[:200],
        object_id=object_id[:64] if object_id else None, status_code=status, outcome=outcome_of(status),
        client=client[0][:64] if client else None)


class AuditLog:
    """Records each state-changing request once its response has been sent."""

    def __init__(self, app: ASGIApp, *, database: Callable[[], Database | None]) -> None:
        self.app = app
        self.database = database

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not changes_state(scope["method"], scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        status = 500  # what a request that raised past every handler answered

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            await self._record(event_of(scope, status))

    async def _record(self, event: AuditEvent) -> None:
        db = self.database()
        if db is None:  # the app is not started (or stopping)
            return
        try:
            await db.run(lambda session: _insert(session, event))
        except Exception:
            log.exception("audit event not recorded: %s %s by %s -> %s", event.method, event.route, event.owner,
                          event.status_code)


def _insert(session: Session, event: AuditEvent) -> None:
    session.add(event)
    session.commit()


def list_events(*, session: Session, owner: str | None, limit: int, cursor: str | None
                ) -> tuple[list[AuditEvent], str | None]:
    """Events, newest first, of one owner or all."""
    query: Select[tuple[AuditEvent]] = select(AuditEvent)
    if owner is not None:
        query = query.where(AuditEvent.owner == owner)
    return newest_first(session, query, AuditEvent, kind="audit", limit=limit, cursor=cursor,
                        created_column="at", id_type=int)
