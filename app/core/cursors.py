"""Opaque pagination cursors: URL-safe base64 of a small JSON list, tagged with what they page."""

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from app.core.errors import BadCursor

# Our own cursors are well under this; anything longer was not handed out by us and is not decoded.
MAX_CURSOR_CHARS = 200
# Loss steps are stored as 32-bit integers; a larger bound would overflow the database's parameter.
MAX_STEP = 2**31


def encode(kind: str, *values: Any) -> str:
    raw = json.dumps([kind, *values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _not_ours(cursor: str) -> BadCursor:
    shown = cursor if len(cursor) <= 40 else f"{cursor[:40]}... ({len(cursor)} characters)"
    return BadCursor(
        f"cursor {shown!r} is not one this API returned: pass a next_cursor back unchanged, "
        "or leave it out to start from the beginning"
    )


def _decode(kind: str, cursor: str, arity: int) -> list[Any]:
    if len(cursor) > MAX_CURSOR_CHARS:
        raise _not_ours(cursor)
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError) as e:  # ValueError covers JSON and UTF-8 errors
        raise _not_ours(cursor) from e
    if not (isinstance(data, list) and len(data) == arity + 1 and data[0] == kind):
        raise BadCursor(
            f"cursor {cursor!r} does not page {kind}: pass a next_cursor from this endpoint back unchanged"
        )
    return data[1:]


def encode_created(kind: str, created_at: datetime, object_id: str | int) -> str:
    """A cursor into a newest-first listing of `kind` (jobs, datasets, keys, audit): the last row's
    (created_at, id)."""
    return encode(kind, created_at.isoformat(), object_id)


def decode_created(kind: str, cursor: str, id_type: type[str] | type[int] = str) -> tuple[datetime, str | int]:
    created, object_id = _decode(kind, cursor, 2)
    damaged = BadCursor(f"cursor {cursor!r} is damaged: leave it out to start from the newest one")
    if not isinstance(created, str) or isinstance(object_id, bool) or not isinstance(object_id, id_type) \
            or (isinstance(object_id, int) and not 0 <= object_id < 2**63):
        raise damaged
    try:
        at = datetime.fromisoformat(created)
        # Normalised here, where a year 1 or 9999 that leaves the calendar in UTC can still be refused.
        at = at.astimezone(UTC) if at.tzinfo is not None else at
    except (ValueError, OverflowError) as e:
        raise damaged from e
    if at.tzinfo is None:
        raise damaged
    return at, object_id


def encode_events(step: int, epoch: int, status: str, attempt: int) -> str:
    """An SSE event id of GET /jobs/{id}/events: what the client has been sent so far."""
    return encode("events", step, epoch, status, attempt)


def decode_events(cursor: str) -> tuple[int, int, str, int]:
    step, epoch, status, attempt = _decode("events", cursor, 4)
    ints = (step, epoch, attempt)
    if any(not isinstance(v, int) or isinstance(v, bool) or not -1 <= v < MAX_STEP for v in ints) \
            or not isinstance(status, str) or len(status) > 16:
        raise BadCursor(f"Last-Event-ID {cursor!r} is damaged: leave it out to start from the beginning")
    return step, epoch, status, attempt


def encode_step(step: int) -> str:
    return encode("losses", step)


def decode_step(cursor: str) -> int:
    (step,) = _decode("losses", cursor, 1)
    if not isinstance(step, int) or isinstance(step, bool) or not -1 <= step < MAX_STEP:
        raise BadCursor(f"cursor {cursor!r} is damaged: leave it out to start from step 0")
    return step
