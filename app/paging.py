"""Keyset pagination of newest-first listings (jobs, datasets), with opaque cursors."""

from typing import Any, Protocol, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from app import cursors


class Listed(Protocol):
    id: Any
    created_at: Any


T = TypeVar("T", bound=Listed)


def newest_first(session: Session, query: Select[Any], entity: type[T], *, kind: str, limit: int,
                 cursor: str | None) -> tuple[list[T], str | None]:
    """One page of `query`'s rows, newest first, and the cursor of the next page (None at the end)."""
    created: InstrumentedAttribute[Any] = entity.created_at
    key: InstrumentedAttribute[Any] = entity.id
    if cursor:
        created_at, object_id = cursors.decode_created(kind, cursor)
        query = query.where(or_(created < created_at, and_(created == created_at, key < object_id)))
    rows: list[T] = list(session.scalars(query.order_by(created.desc(), key.desc()).limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], cursors.encode_created(kind, last.created_at, last.id)
