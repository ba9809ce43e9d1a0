"""Job claims: a lease in the job's row, so that exactly one worker trains a job at a time.

A worker claims a job with one conditional UPDATE and renews the lease while it trains; a job whose lease
expired (its worker died) is claimable again, and the reaper puts such jobs back on the queue.
"""

import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from app.db import rowcount
from app.tables import Job, JobStatus, UTCDateTime, utcnow

log = logging.getLogger(__name__)


def new_lease_owner() -> str:
    """A name for this claim: which host and process holds it, unique per claim."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Claim:
    job_id: str
    lease_owner: str
    attempt: int
    max_attempts: int
    spec: dict[str, Any]
    queue: str


@dataclass(frozen=True)
class LeaseState:
    held: bool
    cancel_requested: bool


@dataclass
class Reaped:
    requeued: list[tuple[str, str]] = field(default_factory=list)  # (job id, queue)
    resent: list[tuple[str, str]] = field(default_factory=list)  # queued too long: message presumed lost
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


def _utc(value: datetime) -> Any:
    # Typed, so SQLite stores it as the column does (not through sqlite3's deprecated adapter).
    return bindparam(None, value, type_=UTCDateTime())


def claim_job(*, session: Session, job_id: str, lease_owner: str, lease_seconds: float) -> Claim | None:
    """Take the job if it is queued, or running on an expired lease, with attempts left; None otherwise.

    One conditional UPDATE: of two workers that try at once, exactly one changes the row."""
    now = utcnow()
    claimable = or_(
        Job.status == JobStatus.queued,
        and_(Job.status == JobStatus.running, Job.lease_expires_at < now),
    )
    won = rowcount(session, update(Job).where(
        Job.id == job_id, claimable, Job.attempt < Job.max_attempts, Job.cancel_requested.is_(False),
    ).values(
        status=JobStatus.running,
        lease_owner=lease_owner,
        lease_expires_at=now + timedelta(seconds=lease_seconds),
        attempt=Job.attempt + 1,
        started_at=func.coalesce(Job.started_at, _utc(now)),
        error=None,
    ))
    if not won:
        return None
    job = session.scalars(select(Job).where(Job.id == job_id).execution_options(populate_existing=True)).one()
    return Claim(job.id, lease_owner, job.attempt, job.max_attempts, job.spec, job.queue)


def _held(job_id: str, lease_owner: str) -> Any:
    return and_(Job.id == job_id, Job.lease_owner == lease_owner, Job.status == JobStatus.running)


def renew_lease(*, session: Session, job_id: str, lease_owner: str, lease_seconds: float) -> LeaseState:
    """Extend our lease; held=False when it was taken from us (reaped, claimed by another, deleted)."""
    renewed = rowcount(session, update(Job).where(_held(job_id, lease_owner)).values(
        lease_expires_at=utcnow() + timedelta(seconds=lease_seconds)))
    if not renewed:
        return LeaseState(held=False, cancel_requested=False)
    cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return LeaseState(held=True, cancel_requested=bool(cancel))


def holds_lease(*, session: Session, job_id: str, lease_owner: str) -> bool:
    """Whether we still hold the job; inside a write transaction, run it first to lock the row."""
    # A no-op UPDATE rather than a SELECT: it takes the row lock, so nobody claims the job until we commit.
    return bool(rowcount(session, update(Job).where(_held(job_id, lease_owner)).values(
        lease_owner=lease_owner)))


def finish_job(*, session: Session, job_id: str, lease_owner: str, status: JobStatus,
               error: str | None = None, result: dict[str, Any] | None = None) -> bool:
    """Record how the job ended and release the lease; False (nothing written) if we no longer hold it."""
    return bool(rowcount(session, update(Job).where(_held(job_id, lease_owner)).values(
        status=status, error=error, result=result, finished_at=utcnow(), lease_owner=None,
        lease_expires_at=None)))


def release_job(*, session: Session, job_id: str, lease_owner: str) -> JobStatus | None:
    """Give the job back to the queue (this worker is shutting down) without counting the attempt;
    a job whose cancel was requested ends cancelled instead. None if we no longer held it."""
    released = dict(lease_owner=None, lease_expires_at=None)
    if rowcount(session, update(Job).where(_held(job_id, lease_owner), Job.cancel_requested.is_(True))
                 .values(status=JobStatus.cancelled, finished_at=utcnow(), **released)):
        return JobStatus.cancelled
    if rowcount(session, update(Job).where(_held(job_id, lease_owner)).values(
            status=JobStatus.queued, attempt=Job.attempt - 1, **released)):
        return JobStatus.queued
    return None


def reap_expired(*, session: Session, resend_after_seconds: float | None = None) -> Reaped:
    """Jobs whose worker stopped renewing: requeue them (attempts left), else fail them; honour cancels.
    With resend_after_seconds, also queued jobs whose message was sent longer ago than that.

    The caller commits, then sends a task for each requeued or resent job. Every UPDATE repeats the
    condition, so concurrent reapers (one per worker) never requeue a job twice."""
    now = utcnow()
    reaped = Reaped()
    if resend_after_seconds is not None:
        sent_before = _utc(now - timedelta(seconds=resend_after_seconds))
        stale = and_(Job.status == JobStatus.queued, Job.lease_owner.is_(None),
                     func.coalesce(Job.enqueued_at, Job.created_at) < sent_before)
        for job_id, queue in session.execute(select(Job.id, Job.queue).where(stale)).all():
            if rowcount(session, update(Job).where(Job.id == job_id, stale).values(enqueued_at=now)):
                reaped.resent.append((job_id, queue))
    expired = and_(Job.status == JobStatus.running, Job.lease_expires_at < now)
    rows = session.execute(select(Job.id, Job.queue, Job.attempt, Job.max_attempts, Job.cancel_requested)
                           .where(expired)).all()
    for job_id, queue, attempt, max_attempts, cancel_requested in rows:
        base = update(Job).where(Job.id == job_id, expired)
        if cancel_requested:
            if rowcount(session, base.values(status=JobStatus.cancelled, finished_at=now, lease_owner=None,
                                              lease_expires_at=None)):
                reaped.cancelled.append(job_id)
        elif attempt < max_attempts:
            if rowcount(session, base.values(status=JobStatus.queued, lease_owner=None, lease_expires_at=None,
                                              enqueued_at=now)):
                reaped.requeued.append((job_id, queue))
        elif rowcount(session, base.values(
                status=JobStatus.failed, finished_at=now, lease_owner=None, lease_expires_at=None,
                error=f"worker lost: the worker running attempt {attempt} of {max_attempts} stopped "
                      "responding, and no attempts are left")):
            reaped.failed.append(job_id)
    return reaped


def unqueue(*, session: Session, job_id: str) -> bool:
    """Undo a requeue whose message could not be sent: the job looks expired again, for the next reap."""
    return bool(rowcount(session, update(Job).where(
        Job.id == job_id, Job.status == JobStatus.queued, Job.lease_owner.is_(None), Job.attempt > 0,
    ).values(status=JobStatus.running, lease_expires_at=utcnow())))
