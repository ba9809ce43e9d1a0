"""Job claims: a lease in the job's row, so that exactly one worker trains a job at a time.

A worker claims a job with one conditional UPDATE and renews the lease while it trains; a job whose lease
expired (its worker died) is claimable again, and the reaper puts such jobs back on the queue.

Which job a free worker claims is the fair choice among its queue's (claim_next), not the one its message
named: owners share the workers, whatever order their jobs were submitted in.
"""

import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, bindparam, case, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from app.core.db import rowcount
from app.core.tables import Job, JobStatus, UTCDateTime, utcnow

log = logging.getLogger(__name__)

# Conditional UPDATEs claim_next tries before giving up (each lost one means another worker took a job).
CLAIM_TRIES = 5


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


def _claimed(lease_owner: str, lease_seconds: float, now: datetime) -> dict[str, Any]:
    """What a claim writes into the row."""
    return dict(
        status=JobStatus.running,
        lease_owner=lease_owner,
        lease_expires_at=now + timedelta(seconds=lease_seconds),
        attempt=Job.attempt + 1,
        started_at=func.coalesce(Job.started_at, _utc(now)),
        error=None,
    )


def _claim_of(session: Session, job_id: str, lease_owner: str) -> Claim:
    job = session.scalars(select(Job).where(Job.id == job_id).execution_options(populate_existing=True)).one()
    return Claim(job.id, lease_owner, job.attempt, job.max_attempts, job.spec, job.queue)


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
    ).values(**_claimed(lease_owner, lease_seconds, now)))
    return _claim_of(session, job_id, lease_owner) if won else None


def _claimable_in(queue: str, job: Any) -> Any:
    return and_(job.status == JobStatus.queued, job.queue == queue, job.attempt < job.max_attempts,
                job.cancel_requested.is_(False))


def fair_choice(queue: str) -> Select[str]:
    """The id of the job a free worker of `queue` trains next, by the fair rule.

    Among the queue's claimable jobs (queued, attempts left, no cancel requested): the owner with the fewest
    running jobs (in any queue) first; among those, the owner served least recently (whose latest started_at
    is oldest; an owner never started goes first); then that owner's oldest queued job (created_at, id). So
    one owner's long backlog never holds another owner's first job back for more than the runs in progress."""
    candidate = aliased(Job, name="candidate")
    waiting = aliased(Job, name="waiting")
    theirs = aliased(Job, name="theirs")
    owners = (
        select(theirs.owner.label("owner"),
               func.sum(case((theirs.status == JobStatus.running, 1), else_=0)).label("running"),
               func.max(theirs.started_at).label("last_started"))
        # Only the owners with something to claim: their rows are found by the (owner, created_at) index.
        .where(theirs.owner.in_(select(waiting.owner).where(_claimable_in(queue, waiting))))
        .group_by(theirs.owner)
        .subquery("owners")
    )
    return (
        select(candidate.id)
        .join(owners, owners.c.owner == candidate.owner)
        .where(_claimable_in(queue, candidate))
        .order_by(owners.c.running, owners.c.last_started.asc().nulls_first(), candidate.created_at, candidate.id)
        .limit(1)
    )


class ClaimContended(Exception):
    """Other workers won the fair choice every time we tried: the message should be tried again later."""


def claim_next(*, session: Session, queue: str, lease_owner: str, lease_seconds: float,
               tries: int = CLAIM_TRIES) -> Claim | None:
    """Claim the fair choice of `queue`'s jobs (fair_choice); None when nothing there is claimable.

    Each try is one conditional UPDATE whose WHERE holds the choice, so the choice and the claim see the same
    rows and, of workers choosing the same job at once, exactly one gets it. A lost try means another worker
    took that job: choose again. After `tries` lost tries, raises ClaimContended."""
    for _ in range(tries):
        won = session.scalar(update(Job).where(
            Job.id == fair_choice(queue).scalar_subquery(), _claimable_in(queue, Job),
        ).values(**_claimed(lease_owner, lease_seconds, utcnow())).returning(Job.id)
            .execution_options(synchronize_session=False))
        if won is not None:
            return _claim_of(session, won, lease_owner)
        if session.scalar(fair_choice(queue)) is None:
            return None
    raise ClaimContended(f"queue {queue}: other workers won the choice {tries} times in a row")


def queue_of(session: Session, job_id: str) -> str | None:
    """The queue job_id waits in (None: no such job, e.g. deleted since its message was sent)."""
    return session.scalar(select(Job.queue).where(Job.id == job_id))


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
        for job_id, queue in session.execute(select(Job.id, Job.queue).where(stale).with_for_update(
                skip_locked=True)).all():
            if rowcount(session, update(Job).where(Job.id == job_id, stale).values(enqueued_at=now)):
                reaped.resent.append((job_id, queue))
    expired = and_(Job.status == JobStatus.running, Job.lease_expires_at < now)
    # SKIP LOCKED (PostgreSQL): a row locked by a worker frozen inside a transaction (SIGSTOP, a partition)
    # is left for a later reap; waiting for it would stall this worker's event loop, which runs the reaper.
    rows = session.execute(select(Job.id, Job.queue, Job.attempt, Job.max_attempts, Job.cancel_requested)
                           .where(expired).with_for_update(skip_locked=True)).all()
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
