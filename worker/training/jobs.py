"""Training jobs as leased rows (worker.leases): which jobs wait and which run, what a claim, an expiry and a
hand-back write; and which job a free worker trains next, the fair choice among its queue's, whatever job its
message named, so owners share the workers whatever order their jobs were submitted in."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, case, func, select, update
from sqlalchemy.orm import Session, aliased

from app.core.config import get_settings
from app.core.queue import TRAIN_TASK
from app.core.storage import job_dir
from app.core.tables import Job, JobStatus, utcnow
from worker.leases.claims import claim, claim_values, utc
from worker.leases.kind import LeasedKind, Rule
from worker.training.attempts import remove_attempt_folders

# Conditional UPDATEs claim_next tries before giving up (each lost one means another worker took a job).
CLAIM_TRIES = 5


def _worker_lost(now: datetime, row: Any) -> dict[str, Any]:
    return {"status": JobStatus.failed, "finished_at": now,
            "error": f"worker lost: the worker running attempt {row.attempt} of {row.max_attempts} stopped "
                     "responding, and no attempts are left"}


def _cancelled(now: datetime, row: Any) -> dict[str, Any]:
    return {"status": JobStatus.cancelled, "finished_at": now}


def _remove_attempts(job_id: str) -> None:
    remove_attempt_folders(job_dir(get_settings().artifacts_path, job_id))


CANCEL_REQUESTED = Job.cancel_requested.is_(True)

JOBS = LeasedKind(
    name="job", entity=Job, task=TRAIN_TASK, queue=lambda row: row.queue, columns=(Job.queue,),
    waiting=Job.status == JobStatus.queued, claimed=Job.status == JobStatus.running,
    max_attempts=Job.max_attempts, claimable=(Job.cancel_requested.is_(False),),
    on_claim=lambda now: {"status": JobStatus.running, "started_at": func.coalesce(Job.started_at, utc(now)),
                          "error": None},
    on_expiry=(
        Rule("cancelled", _cancelled, when=CANCEL_REQUESTED),
        Rule("requeued", lambda now, row: {"status": JobStatus.queued, "enqueued_at": now},
             when=Job.attempt < Job.max_attempts),
        Rule("failed", _worker_lost),
    ),
    on_hand_back=(
        Rule("cancelled", _cancelled, when=CANCEL_REQUESTED),
        Rule("requeued", lambda now, row: {"status": JobStatus.queued, "attempt": Job.attempt - 1, "enqueued_at": now}),
    ),
    on_finish=lambda now: {"finished_at": now},
    on_unqueue=lambda now: {"status": JobStatus.running},
    # Nobody claims a failed or cancelled job again: what its dead worker staged goes now.
    cleanup=_remove_attempts,
)


@dataclass(frozen=True)
class Claim:
    job_id: str
    lease_owner: str
    attempt: int
    max_attempts: int
    spec: dict[str, Any]
    queue: str


def claim_of(session: Session, job_id: str, lease_owner: str) -> Claim:
    """The claimed job as the task needs it, read after the claim."""
    job = session.scalars(select(Job).where(Job.id == job_id).execution_options(populate_existing=True)).one()
    return Claim(job.id, lease_owner, job.attempt, job.max_attempts, job.spec, job.queue)


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
        ).values(**claim_values(JOBS, lease_owner, lease_seconds, utcnow())).returning(Job.id)
            .execution_options(synchronize_session=False))
        if won is not None:
            return claim_of(session, won, lease_owner)
        if session.scalar(fair_choice(queue)) is None:
            return None
    raise ClaimContended(f"queue {queue}: other workers won the choice {tries} times in a row")


def queue_of(session: Session, job_id: str) -> str | None:
    """The queue job_id waits in (None: no such job, e.g. deleted since its message was sent)."""
    return session.scalar(select(Job.queue).where(Job.id == job_id))


def cancel_requested(session: Session, job_id: str) -> bool:
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def claim_job(*, session: Session, job_id: str, lease_owner: str, lease_seconds: float) -> Claim | None:
    """Claim this job (worker.leases.claims.claim), as the task needs it; None when it is not claimable."""
    if not claim(JOBS, session=session, object_id=job_id, lease_owner=lease_owner, lease_seconds=lease_seconds):
        return None
    return claim_of(session, job_id, lease_owner)
