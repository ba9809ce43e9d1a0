"""Keyset pagination of newest-first listings (jobs, datasets), with opaque cursors."""

from typing import Any, Protocol, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.core import cursors


class Listed(Protocol):
    id: Any


T = TypeVar("T", bound=Listed)


def newest_first(session: Session, query: Select[Any], entity: type[T], *, kind: str, limit: int,
                 cursor: str | None, created_column: str = "created_at",
                 id_type: type[str] | type[int] = str) -> tuple[list[T], str | None]:
    """One page of `query`'s rows, newest first (by created_column, then id), and the cursor of the next page
    (None at the end)."""
    created: InstrumentedAttribute[Any] = getattr(entity, created_column)
    key: InstrumentedAttribute[Any] = entity.id
    if cursor:
        created_at, object_id = cursors.decode_created(kind, cursor, id_type)
        query = query.where(or_(created < created_at, and_(created == created_at, key < object_id)))
    rows: list[T] = list(session.scalars(query.order_by(created.desc(), key.desc()).limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], cursors.encode_created(kind, getattr(last, created_column), last.id)
