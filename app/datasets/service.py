"""Dataset service functions: keyword-only, scoped by owner, raising domain errors (never HTTP ones).

The upload itself is streamed to disk by app.web.streamed_form; the ingest (archive -> decoded store) runs on a
worker (worker.ingest.decode). Here: the rows, and which jobs may use a dataset.
"""

import logging
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.accounts.limits import EffectiveLimits
from app.accounts.quotas import check_dataset_bytes, lock_owner
from app.core import storage
from app.core.config import Settings
from app.core.db import rowcount
from app.core.errors import Conflict, InvalidSpec, NotFound, Unavailable
from app.core.paging import newest_first
from app.core.queue import enqueue_ingest
from app.core.tables import Dataset, DatasetStatus, Job, JobStatus, is_id
from spec.datasets import DatasetInfo, IngestOptions

log = logging.getLogger(__name__)

ACTIVE_JOBS = (JobStatus.queued, JobStatus.running)


def create_dataset(*, session: Session, owner: str, dataset_id: str, name: str, options: IngestOptions,
                   archive_bytes: int, settings: Settings, limits: EffectiveLimits | None = None) -> Dataset:
    """Record an uploaded archive (already in its folder) as `processing` and enqueue its ingest.

    If the queue is down, the row and the folder go again: a refused upload leaves nothing behind. Checked
    again against the owner's storage quota here, under the owner's lock (uploads streamed side by side)."""
    lock_owner(session, owner)
    check_dataset_bytes(session=session, owner=owner, limits=limits or EffectiveLimits.of(settings),
                        adding=archive_bytes)
    dataset = Dataset(id=dataset_id, owner=owner, name=name, status=DatasetStatus.processing,
                      options=options.model_dump(mode="json"), archive_bytes=archive_bytes)
    session.add(dataset)
    session.commit()  # before enqueueing: the worker that gets the message must find the row
    try:
        enqueue_ingest(dataset.id, settings)
    except Unavailable as e:
        removed = rowcount(session, delete(Dataset).where(Dataset.id == dataset.id, Dataset.lease_owner.is_(None))
                            .execution_options(synchronize_session=False))
        session.commit()
        if not removed:  # a worker claimed it: the message got through after all, and this is the answer
            session.refresh(dataset)
            return dataset
        session.expunge(dataset)
        shutil.rmtree(storage.dataset_dir(settings.datasets_path, dataset.id), ignore_errors=True)
        raise Unavailable(f"the dataset was not accepted: {e.detail}. Nothing was kept; upload it again "
                          "shortly") from e
    return dataset


def get_dataset(*, session: Session, owner: str, dataset_id: str) -> Dataset:
    if not is_id(dataset_id):
        raise NotFound(f"no dataset {dataset_id!r}")
    dataset = session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.owner == owner))
    if dataset is None:
        raise NotFound(f"no dataset {dataset_id!r}")
    return dataset


def list_datasets(*, session: Session, owner: str, status: DatasetStatus | None, limit: int,
                  cursor: str | None) -> tuple[list[Dataset], str | None]:
    """One page of the owner's datasets, newest first, and the cursor of the next page."""
    query = select(Dataset).where(Dataset.owner == owner)
    if status is not None:
        query = query.where(Dataset.status == status)
    return newest_first(session, query, Dataset, kind="datasets", limit=limit, cursor=cursor)


def ready_datasets(*, session: Session, owner: str) -> list[Dataset]:
    """The owner's datasets a job can train on, newest first."""
    return list(session.scalars(select(Dataset).where(Dataset.owner == owner, Dataset.status == DatasetStatus.ready)
                                .order_by(Dataset.created_at.desc(), Dataset.id.desc())))


def _locked(session: Session, owner: str, dataset_id: str) -> Dataset | None:
    # FOR UPDATE (PostgreSQL): a job submission and a deletion of the same dataset take this lock in turn.
    # SQLite ignores it; there the deletion is one conditional statement and the submission checks again
    # after its insert (confirm_dataset_for_job), which together keep the same promise.
    if not is_id(dataset_id):
        return None
    return session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.owner == owner)
                          .with_for_update())


def _active_jobs(dataset_id: str) -> Any:
    return select(Job.id).where(Job.dataset_id == dataset_id, Job.status.in_(ACTIVE_JOBS))


def dataset_for_job(*, session: Session, owner: str, dataset_id: str) -> DatasetInfo:
    """What a job on this dataset needs to know; the row stays locked until the caller commits."""
    dataset = _locked(session, owner, dataset_id)
    if dataset is None:
        raise InvalidSpec(f"dataset.id: no dataset {dataset_id!r}; GET /datasets lists yours")
    if dataset.status == DatasetStatus.processing:
        raise Conflict(f"dataset {dataset_id} is still processing: submit the job once it is ready "
                       f"(GET /datasets/{dataset_id})")
    if dataset.status != DatasetStatus.ready or dataset.info is None:
        raise Conflict(f"dataset {dataset_id} failed ({dataset.error}): it cannot be trained on; upload it again")
    return DatasetInfo.model_validate(dataset.info)


def confirm_dataset_for_job(*, session: Session, dataset_id: str) -> None:
    """After the job's row was inserted (flushed, not committed): the dataset is still there and ready. A
    deletion that ran in between is seen here; one that runs later sees the job and refuses."""
    status = session.scalar(select(Dataset.status).where(Dataset.id == dataset_id))
    if status != DatasetStatus.ready:
        session.rollback()
        raise Conflict(f"dataset {dataset_id} was deleted while the job was being submitted")


def delete_dataset(*, session: Session, owner: str, dataset_id: str, datasets_dir: Path) -> None:
    """Delete a dataset and its files, unless a queued or running job trains on it (a processing one is
    deleted too: its ingest finds the row gone and keeps nothing)."""
    dataset = _locked(session, owner, dataset_id)
    if dataset is None:
        raise NotFound(f"no dataset {dataset_id!r}")
    # Counted after the lock is held: a job submitted meanwhile has committed and is seen.
    users = list(session.scalars(_active_jobs(dataset.id).order_by(Job.created_at)))
    if not users:
        # Conditional: on SQLite (no row lock) a job inserted since the count keeps the dataset.
        deleted = rowcount(session, delete(Dataset).where(Dataset.id == dataset.id,
                                                           ~_active_jobs(dataset.id).exists())
                            .execution_options(synchronize_session=False))
        session.commit()
        if deleted:
            session.expunge(dataset)
            shutil.rmtree(storage.dataset_dir(datasets_dir, dataset.id), ignore_errors=True)
            return
        users = list(session.scalars(_active_jobs(dataset.id).order_by(Job.created_at)))
        if not users:  # deleted by another request meanwhile
            raise NotFound(f"no dataset {dataset_id!r}")
    shown = ", ".join(users[:5]) + (", ..." if len(users) > 5 else "")
    raise Conflict(f"dataset {dataset.id} is used by {len(users)} queued or running job(s) ({shown}): cancel them "
                   "or wait until they end, then delete it")
