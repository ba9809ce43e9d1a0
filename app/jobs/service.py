"""Job service functions: keyword-only, scoped by owner, raising domain errors (never HTTP ones)."""

import logging
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Literal

import redis
from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy import ColumnElement, and_, delete, select, update
from sqlalchemy.orm import Session

from app.accounts.limits import EffectiveLimits
from app.accounts.quotas import check_active_jobs, check_job_size, lock_owner
from app.core import storage
from app.core.config import Settings
from app.core.db import rowcount
from app.core.errors import Conflict, InvalidSpec, NotFound, Unavailable
from app.core.loss_stream import LossRecord, LossStream
from app.core.paging import newest_first
from app.core.queue import enqueue_training, queue_for_device
from app.core.redis_keys import cancel_key
from app.core.tables import TERMINAL, EpochMetric, Job, JobStatus, LossPoint, is_id, utcnow
from app.datasets.service import confirm_dataset_for_job, dataset_for_job
from spec.architectures import misfit
from spec.datasets import BUILTIN_DATASETS, DatasetInfo
from spec.job import BuiltinDatasetSpec, JobSpec

log = logging.getLogger(__name__)

# The expiry only bounds a flag nobody consumed (the job ended before the worker looked).
CANCEL_FLAG_SECONDS = 7 * 24 * 3600


def create_job(*, session: Session, owner: str, spec: JobSpec, settings: Settings,
               limits: EffectiveLimits | None = None) -> Job:
    """Insert the job (queued), commit, then enqueue it; if the queue is down the row is deleted again.

    Refused when the job is bigger than `limits` allow (422) or the owner's queue is full (429)."""
    limits = limits or EffectiveLimits.of(settings)
    dataset_id = spec.uploaded_dataset
    if isinstance(spec.dataset, BuiltinDatasetSpec):
        info = BUILTIN_DATASETS[spec.dataset.name].info
    else:
        info = dataset_for_job(session=session, owner=owner, dataset_id=spec.dataset.id)
        shape = info.shape
        if (reason := misfit(spec.model.arch, shape.height, shape.width)) is not None:
            raise InvalidSpec(f"model.arch: {reason} (dataset {dataset_id}); pick another arch, or upload the "
                              "dataset again with a larger image_size")
    check_job_size(spec=spec, info=info, limits=limits)
    lock_owner(session, owner)
    check_active_jobs(session=session, owner=owner, limits=limits)
    job = Job(
        owner=owner, name=spec.name, status=JobStatus.queued, spec=spec.model_dump(mode="json"),
        queue=queue_for_device(spec.device, settings), max_attempts=spec.max_attempts,
        dataset_id=dataset_id, dataset_info=info.model_dump(mode="json"),
    )
    session.add(job)
    if dataset_id is not None:
        session.flush()
        confirm_dataset_for_job(session=session, dataset_id=dataset_id)
    # Commit before enqueueing: a worker that gets the message must find the row.
    session.commit()
    try:
        enqueue_training(job.id, job.queue)
    except Unavailable as e:
        # A refused request leaves nothing behind. Only a still-queued row goes: if a worker claimed it,
        # the message did get through after all, and the job is the answer.
        removed = rowcount(session, delete(Job).where(Job.id == job.id, Job.status == JobStatus.queued)
                            .execution_options(synchronize_session=False))
        session.commit()
        if not removed:
            session.refresh(job)
            return job
        session.expunge(job)
        raise Unavailable(
            f"the job was not submitted: {e.detail}. Nothing was recorded; submit it again shortly"
        ) from e
    return job


def job_not_found(job_id: str) -> NotFound:
    return NotFound(f"no job {job_id!r}")


def owned_job(*, owner: Any, job_id: Any) -> ColumnElement[bool]:
    """The condition "the job of this id, if it is this owner's" (values, or columns to join on): every read of a
    job by a request (this module's, and GET /jobs/{id}'s batched one, app.jobs.reads) is scoped by it."""
    return and_(Job.id == job_id, Job.owner == owner)


def get_job(*, session: Session, owner: str, job_id: str) -> Job:
    if not is_id(job_id):
        raise job_not_found(job_id)
    job = session.scalar(select(Job).where(owned_job(owner=owner, job_id=job_id)))
    if job is None:
        raise job_not_found(job_id)
    return job


def list_jobs(
    *, session: Session, owner: str, status: JobStatus | None, limit: int, cursor: str | None
) -> tuple[list[Job], str | None]:
    """One page of the owner's jobs, newest first, and the cursor of the next page (None at the end)."""
    query = select(Job).where(Job.owner == owner)
    if status is not None:
        query = query.where(Job.status == status)
    return newest_first(session, query, Job, kind="jobs", limit=limit, cursor=cursor)


def live_steps(*, client: redis.Redis, job: Job) -> int | None:
    """Steps done according to the loss stream (ahead of the DB, which the worker updates per epoch)."""
    if job.status != JobStatus.running:
        return None
    try:
        last = LossStream(client).last_step(job.id)
    except RedisError:
        return None
    return None if last is None else last + 1


def _reread(session: Session, job: Job) -> Job:
    """The row as it is now (after a conditional write changed nothing); NotFound if it was deleted."""
    current = session.get(Job, job.id, populate_existing=True)
    if current is None:
        raise NotFound(f"no job {job.id!r}")
    return current


def cancel_job(*, session: Session, client: redis.Redis, owner: str, job_id: str) -> Job:
    """Queued: cancelled now. Running: flag it (DB + Redis); the worker stops within a few batches.

    Each write is conditional on the status it was decided on: when a worker claimed, finished or
    requeued the job meanwhile, nothing is written and the job is judged again by its new status."""
    job = get_job(session=session, owner=owner, job_id=job_id)
    for _ in range(3):
        if job.status == JobStatus.queued:
            done = rowcount(session, update(Job).where(Job.id == job.id, Job.status == JobStatus.queued)
                             .values(status=JobStatus.cancelled, cancel_requested=True, finished_at=utcnow()))
        elif job.status == JobStatus.running:
            done = rowcount(session, update(Job).where(Job.id == job.id, Job.status == JobStatus.running)
                             .values(cancel_requested=True))
        else:
            raise Conflict(
                f"job {job.id} is already {job.status}: only queued or running jobs can be cancelled")
        session.commit()
        job = _reread(session, job)
        if done:
            break
    else:
        raise Conflict(f"job {job.id} kept changing status while being cancelled (now {job.status}): try again")
    if job.status == JobStatus.running:
        try:
            client.set(cancel_key(job.id), "1", ex=CANCEL_FLAG_SECONDS)
        except RedisError as e:
            # The DB flag is the record; the worker's heartbeat sees it even without the Redis key.
            log.warning("cancel flag for job %s not set in Redis: %s", job.id, e)
    return job


# Running jobs are not deletable: their worker still writes rows and files.
DELETABLE = (JobStatus.queued, *sorted(TERMINAL))


def delete_job(*, session: Session, client: redis.Redis, owner: str, job_id: str, artifacts: Path) -> None:
    """Delete a job that is not running, with its metrics, losses, loss stream and artifact folder."""
    job = get_job(session=session, owner=owner, job_id=job_id)
    if job.status not in DELETABLE:
        raise Conflict(f"job {job.id} is running: cancel it first (POST /jobs/{job.id}/cancel), then delete it")
    deleted = rowcount(session, delete(Job).where(Job.id == job.id, Job.status.in_(DELETABLE))
                        .execution_options(synchronize_session=False))
    session.commit()
    if not deleted:
        # Claimed (or deleted) between our read and our delete.
        job = _reread(session, job)
        raise Conflict(f"job {job.id} is {job.status} now: cancel it first, then delete it")
    session.expunge(job)
    try:
        LossStream(client).delete(job.id)
    except RedisError as e:
        log.warning("loss stream of deleted job %s left in Redis: %s", job.id, e)
    shutil.rmtree(storage.job_dir(artifacts, job.id), ignore_errors=True)


def read_losses(
    *, session: Session, client: redis.Redis | None, job_id: str, after: int, limit: int
) -> list[LossRecord]:
    """Up to `limit` losses with step > after, without gaps: the DB prefix first, then the Redis tail."""
    rows = session.scalars(
        select(LossPoint).where(LossPoint.job_id == job_id, LossPoint.step > after)
        .order_by(LossPoint.step).limit(limit)
    )
    records = [LossRecord(r.step, r.epoch, r.batch, r.loss, r.t) for r in rows]
    if len(records) == limit or client is None:
        return records
    last = records[-1].step if records else after
    try:
        tail = LossStream(client).read(job_id, after=last, limit=limit - len(records))
    except RedisError as e:
        log.warning("loss stream of job %s unreadable, answering from the DB: %s", job_id, e)
        return records
    # The stream may be trimmed past what the DB holds yet: stop at a gap rather than skip steps,
    # since the client moves its cursor past whatever we return.
    for record in tail:
        if record.step != last + 1:
            break
        records.append(record)
        last = record.step
    return records


def epoch_metrics(*, session: Session, job_id: str) -> list[EpochMetric]:
    return list(session.scalars(
        select(EpochMetric).where(EpochMetric.job_id == job_id).order_by(EpochMetric.epoch)))


def open_weights(*, job: Job, which: Literal["best", "last"], artifacts: Path) -> BinaryIO:
    """The job's safetensors state_dict, opened; NotFound until the worker wrote it (or once it is gone).

    Opened rather than checked: whatever happens to the path afterwards, the open file stays readable."""
    path = storage.job_dir(artifacts, job.id) / storage.WEIGHT_FILES[which]
    try:
        return path.open("rb")
    except (FileNotFoundError, IsADirectoryError):
        raise NotFound(
            f"job {job.id} has no {which} weights (status {job.status}): they are written at the end "
            "of each epoch, and removed with the job"
        ) from None


def succeeded_job(*, session: Session, owner: str, job_id: str) -> Job:
    """The job, if it succeeded (predictions need finished weights)."""
    job = get_job(session=session, owner=owner, job_id=job_id)
    if job.status != JobStatus.succeeded:
        hint = "wait until it succeeds" if job.status not in TERMINAL else "train it again"
        raise Conflict(f"job {job.id} is {job.status}, not succeeded: {hint} before predicting with it")
    return job


def job_dataset(job: Job, spec: JobSpec) -> DatasetInfo:
    """The classes, shape and statistics of the job's data, as fixed when it was submitted."""
    if job.dataset_info is None and isinstance(spec.dataset, BuiltinDatasetSpec):
        return BUILTIN_DATASETS[spec.dataset.name].info  # submitted before jobs recorded their dataset
    return DatasetInfo.model_validate(job.dataset_info)


def job_spec(job: Job) -> JobSpec:
    """The stored spec, validated again; Conflict if this version of the service no longer accepts it."""
    spec: dict[str, Any] = job.spec
    try:
        return JobSpec.model_validate(spec)
    except ValidationError as e:
        raise Conflict(
            f"job {job.id}'s stored spec is not valid for this version of the service "
            f"({e.error_count()} errors): train it again"
        ) from None
