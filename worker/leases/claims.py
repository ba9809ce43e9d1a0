"""Leases in a row: claim, renew, hold, finish, hand back, reap. Every state change is one conditional UPDATE whose
WHERE repeats the condition it was decided on, so of two workers (or reapers) acting on one row at once, exactly
one changes it."""

import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, func, literal, or_, select, update
from sqlalchemy.orm import Session

from app.core.db import rowcount
from app.core.tables import UTCDateTime, utcnow
from worker.leases.kind import LeasedKind

REQUEUED = "requeued"


def new_lease_owner() -> str:
    """A name for one claim: which host and process holds it, unique per claim."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def utc(value: datetime) -> Any:
    """A datetime parameter typed as our columns are, so SQLite stores it as they do."""
    return bindparam(None, value, type_=UTCDateTime())


@dataclass
class Reaped:
    """What one reap did: rows requeued (expired leases) and resent (waiting too long), with their queues, to be sent
    a message each; rows it ended otherwise, by outcome ("failed", "cancelled")."""

    requeued: list[tuple[str, str]] = field(default_factory=list)
    resent: list[tuple[str, str]] = field(default_factory=list)
    ended: dict[str, list[str]] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return self.ended.get("failed", [])

    @property
    def cancelled(self) -> list[str]:
        return self.ended.get("cancelled", [])


def claim_values(kind: LeasedKind, lease_owner: str, lease_seconds: float, now: datetime) -> dict[str, Any]:
    """What a claim writes into the row: the lease, one more attempt, and the kind's own columns."""
    entity = kind.entity
    return {"lease_owner": lease_owner, "lease_expires_at": now + timedelta(seconds=lease_seconds),
            "attempt": entity.attempt + 1, **kind.on_claim(now)}


def claimable(kind: LeasedKind, now: datetime) -> Any:
    """Rows a claim may take now: waiting, or under an expired lease; with attempts left."""
    entity = kind.entity
    return and_(or_(kind.waiting, and_(kind.claimed, entity.lease_expires_at < now)),
                entity.attempt < kind.max_attempts, *kind.claimable)


def claim(kind: LeasedKind, *, session: Session, object_id: str, lease_owner: str, lease_seconds: float) -> bool:
    """Take the row if it is claimable (see claimable); False otherwise."""
    now = utcnow()
    entity = kind.entity
    return bool(rowcount(session, update(entity).where(entity.id == object_id, claimable(kind, now))
                         .values(**claim_values(kind, lease_owner, lease_seconds, now))))


def held(kind: LeasedKind, object_id: str, lease_owner: str) -> Any:
    entity = kind.entity
    return and_(entity.id == object_id, entity.lease_owner == lease_owner, kind.claimed)


def renew(kind: LeasedKind, *, session: Session, object_id: str, lease_owner: str, lease_seconds: float,
          values: dict[str, Any] | None = None) -> bool:
    """Extend our lease (writing `values` with it); False when it was taken from us (reaped, claimed by another,
    deleted)."""
    return bool(rowcount(session, update(kind.entity).where(held(kind, object_id, lease_owner)).values(
        lease_expires_at=utcnow() + timedelta(seconds=lease_seconds), **(values or {}))))


def holds(kind: LeasedKind, *, session: Session, object_id: str, lease_owner: str) -> bool:
    """Whether we still hold the row; inside a write transaction, run it first to lock the row."""
    # A no-op UPDATE rather than a SELECT: it takes the row lock, so nobody claims the row until we commit.
    return bool(rowcount(session, update(kind.entity).where(held(kind, object_id, lease_owner)).values(
        lease_owner=lease_owner)))


RELEASED = {"lease_owner": None, "lease_expires_at": None}


def finish(kind: LeasedKind, *, session: Session, object_id: str, lease_owner: str,
           values: dict[str, Any]) -> bool:
    """Record the outcome (`values`) and release the lease; False (nothing written) if we no longer hold it."""
    return bool(rowcount(session, update(kind.entity).where(held(kind, object_id, lease_owner)).values(
        **values, **kind.on_finish(utcnow()), **RELEASED)))


def hand_back(kind: LeasedKind, *, session: Session, object_id: str, lease_owner: str) -> str | None:
    """Give the row back (this worker is shutting down) by the kind's first hand-back rule that holds: its outcome;
    None if we no longer held it."""
    now = utcnow()
    base = update(kind.entity).where(held(kind, object_id, lease_owner))
    for rule in kind.on_hand_back:
        statement = base.where(rule.when) if rule.when is not None else base
        if rowcount(session, statement.values(**rule.values(now, None), **RELEASED)):
            return rule.outcome
    return None


def reap(kind: LeasedKind, *, session: Session, resend_after_seconds: float | None = None) -> Reaped:
    """Rows whose worker stopped renewing its lease, by the kind's expiry rules (requeue, fail, cancel); with
    resend_after_seconds, also waiting rows whose message was sent longer ago than that (presumed lost).

    The caller commits, then sends a message for each requeued or resent row. Every UPDATE repeats its condition,
    so concurrent reapers (one per worker) never act on a row twice."""
    entity = kind.entity
    now = utcnow()
    reaped = Reaped()
    if resend_after_seconds is not None:
        sent_before = utc(now - timedelta(seconds=resend_after_seconds))
        stale = and_(kind.waiting, entity.lease_owner.is_(None),
                     func.coalesce(entity.enqueued_at, entity.created_at) < sent_before)
        for row in session.execute(select(entity.id, *kind.columns).where(stale).with_for_update(
                skip_locked=True)).all():
            if rowcount(session, update(entity).where(entity.id == row.id, stale).values(enqueued_at=now)):
                reaped.resent.append((row.id, kind.queue(row)))
    expired = and_(kind.claimed, entity.lease_expires_at < now)
    max_attempts = kind.max_attempts if not isinstance(kind.max_attempts, int) else literal(kind.max_attempts)
    # SKIP LOCKED (PostgreSQL): a row locked by a worker frozen inside a transaction (SIGSTOP, a partition) is left
    # for a later reap; waiting for it would stall this worker's event loop, which runs the reaper.
    rows = session.execute(select(entity.id, entity.attempt, max_attempts.label("max_attempts"), *kind.columns)
                           .where(expired).with_for_update(skip_locked=True)).all()
    for row in rows:
        base = update(entity).where(entity.id == row.id, expired)
        for rule in kind.on_expiry:
            statement = base.where(rule.when) if rule.when is not None else base
            if rowcount(session, statement.values(**rule.values(now, row), **RELEASED)):
                if rule.outcome == REQUEUED:
                    reaped.requeued.append((row.id, kind.queue(row)))
                else:
                    reaped.ended.setdefault(rule.outcome, []).append(row.id)
                break
    return reaped


def unqueue(kind: LeasedKind, *, session: Session, object_id: str) -> bool:
    """Undo a requeue whose message could not be sent: the row looks expired again, for the next reap."""
    entity = kind.entity
    now = utcnow()
    return bool(rowcount(session, update(entity).where(
        entity.id == object_id, kind.waiting, entity.lease_owner.is_(None), entity.attempt > 0,
    ).values(lease_expires_at=now, **kind.on_unqueue(now))))
