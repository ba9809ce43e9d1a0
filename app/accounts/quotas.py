"""Quotas of an owner (queued + running jobs, bytes of datasets) and the bounds of one job (its network,
memory, epochs and attempts), checked when work is submitted. The limits come from the request's key
(app.accounts.limits); every refusal names the limit and the setting behind it.

The counts are read under a per-owner lock (PostgreSQL: a transaction-scoped advisory lock), so two
submissions racing each other cannot both take the last slot. SQLite serializes writers anyway."""

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from app.accounts.limits import EffectiveLimits, setting_name
from app.core.errors import InvalidSpec, TooManyRequests
from app.core.tables import Dataset, DatasetStatus, Job, JobStatus
from spec.budget import job_footprint
from spec.datasets import DatasetInfo
from spec.job import JobSpec

# A job quota frees up when one of the owner's jobs ends: a client may look again after this long.
ACTIVE_JOBS_RETRY_SECONDS = 30
STORAGE_RETRY_SECONDS = 60


def _limit(name: str) -> str:
    return f"this key's {name} limit (default {setting_name(name)})"


def lock_owner(session: Session, owner: str) -> None:
    """Serialize the quota checks of one owner until the transaction ends (PostgreSQL)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:owner, 7))"), {"owner": owner})


def check_active_jobs(*, session: Session, owner: str, limits: EffectiveLimits) -> None:
    active = session.scalar(select(func.count()).select_from(Job).where(
        Job.owner == owner, Job.status.in_((JobStatus.queued, JobStatus.running)))) or 0
    if active >= limits.active_jobs:
        raise TooManyRequests(
            f"quota reached: owner {owner!r} has {active} queued or running jobs, at most {limits.active_jobs} "
            f"({_limit('active_jobs')}); submit again when one has ended, or cancel one",
            retry_after=ACTIVE_JOBS_RETRY_SECONDS)


def dataset_bytes(*, session: Session, owner: str) -> int:
    """Bytes the owner's datasets hold on disk: archives waiting for their ingest, decoded stores."""
    used = session.scalar(select(func.sum(
        func.coalesce(Dataset.store_bytes, 0) + Dataset.archive_bytes)).where(
        Dataset.owner == owner, Dataset.status != DatasetStatus.failed))
    return int(used or 0)


def check_dataset_bytes(*, session: Session, owner: str, limits: EffectiveLimits, adding: int) -> None:
    used = dataset_bytes(session=session, owner=owner)
    if used + adding > limits.dataset_bytes:
        raise TooManyRequests(
            f"storage quota reached: owner {owner!r} has {used:,} bytes of datasets and this upload adds "
            f"{adding:,}, over {limits.dataset_bytes:,} ({_limit('dataset_bytes')}); delete datasets you "
            "no longer need (DELETE /datasets/{id})", retry_after=STORAGE_RETRY_SECONDS)


def remaining_dataset_bytes(*, session: Session, owner: str, limits: EffectiveLimits) -> int:
    return max(0, limits.dataset_bytes - dataset_bytes(session=session, owner=owner))


def check_job_size(*, spec: JobSpec, info: DatasetInfo, limits: EffectiveLimits) -> None:
    """422 for a job bigger than the owner may run: network parameters, estimated memory, epochs, attempts."""
    if spec.epochs > limits.job_epochs:
        raise InvalidSpec(f"epochs: {spec.epochs} is over {limits.job_epochs} ({_limit('job_epochs')})")
    if spec.max_attempts > limits.job_attempts:
        raise InvalidSpec(f"max_attempts: {spec.max_attempts} is over {limits.job_attempts} "
                          f"({_limit('job_attempts')})")
    footprint = job_footprint(spec, info)
    if footprint.params > limits.job_params:
        raise InvalidSpec(
            f"model: {spec.model.arch} with these params has {footprint.params:,} parameters on this dataset, "
            f"over {limits.job_params:,} ({_limit('job_params')}); choose smaller layers")
    if footprint.total_bytes > limits.job_memory_bytes:
        raise InvalidSpec(
            f"batch_size/model: training needs about {footprint.total_bytes / 2**30:.1f} GiB (weights, gradients "
            f"and optimizer state {footprint.training_state_bytes / 2**30:.2f} GiB, activations of a batch of "
            f"{spec.batch_size} {footprint.activation_bytes / 2**30:.2f} GiB), over "
            f"{limits.job_memory_bytes / 2**30:.1f} GiB ({_limit('job_memory_bytes')}); lower batch_size or "
            "choose a smaller model")
