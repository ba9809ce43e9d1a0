"""Opaque pagination cursors: URL-safe base64 of a small JSON list, tagged with what they page."""

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from app.errors import BadCursor


def encode(kind: str, *values: Any) -> str:
    raw = json.dumps([kind, *values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(kind: str, cursor: str, arity: int) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError) as e:
        raise BadCursor(
            f"cursor {cursor!r} is not one this API returned: pass a next_cursor back unchanged, "
            "or leave it out to start from the beginning"
        ) from e
    if not (isinstance(data, list) and len(data) == arity + 1 and data[0] == kind):
        raise BadCursor(
            f"cursor {cursor!r} does not page {kind}: pass a next_cursor from this endpoint back unchanged"
        )
    return data[1:]


def encode_job(created_at: datetime, job_id: str) -> str:
    return encode("jobs", created_at.isoformat(), job_id)


def decode_job(cursor: str) -> tuple[datetime, str]:
    created, job_id = _decode("jobs", cursor, 2)
    try:
        at = datetime.fromisoformat(created)
    except (TypeError, ValueError) as e:
        raise BadCursor(f"cursor {cursor!r} is damaged: leave it out to start from the newest job") from e
    if not isinstance(job_id, str) or at.tzinfo is None:
        raise BadCursor(f"cursor {cursor!r} is damaged: leave it out to start from the newest job")
    return at, job_id


def encode_step(step: int) -> str:
    return encode("losses", step)


def decode_step(cursor: str) -> int:
    (step,) = _decode("losses", cursor, 1)
    if not isinstance(step, int) or isinstance(step, bool) or step < -1:
        raise BadCursor(f"cursor {cursor!r} is damaged: leave it out to start from step 0")
    return step
