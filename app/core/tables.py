"""ORM tables (SQLAlchemy 2, typed). The schema itself exists only through the Alembic revisions."""

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


_HEX = frozenset("0123456789abcdef")


def is_id(value: str) -> bool:
    """Whether `value` has the form of our ids (new_id): anything else names nothing, and is never sent to
    the database (which may refuse it: PostgreSQL text holds no NUL)."""
    return len(value) == 32 and _HEX.issuperset(value)


class Base(DeclarativeBase):
    # Named constraints, so later migrations can drop them (SQLite's batch mode needs the names).
    metadata = MetaData(naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    queue: Mapped[str] = mapped_column(String(32), default="cpu")
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    # Lease: the worker that claimed the job renews lease_expires_at while it trains.
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    # When a task message for the job was last sent; a queued job whose message was lost (the API died
    # between commit and send, or Redis lost its data) is sent again by the reaper after a while.
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=utcnow)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    device: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The uploaded dataset the job trains on (None: a built-in one). Not a foreign key: a finished job
    # outlives its dataset, and keeps what predictions need of it in dataset_info.
    dataset_id: Mapped[str | None] = mapped_column(String(32), index=True)
    # spec.datasets.DatasetInfo as JSON: classes, image shape, mean/std, fixed when the job was submitted.
    dataset_info: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (
        # Listing is "my jobs, newest first, maybe of one status", paged by (created_at, id).
        Index("ix_jobs_owner_created", "owner", "created_at", "id"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
    )


class EpochMetric(Base):
    __tablename__ = "epoch_metrics"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    train_loss: Mapped[float] = mapped_column(Float)
    test_loss: Mapped[float] = mapped_column(Float)
    test_accuracy: Mapped[float] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    val_accuracy: Mapped[float | None] = mapped_column(Float)
    lr: Mapped[float | None] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)


class LossPoint(Base):
    """Every batch's loss, persisted at checkpoints and at the end (Redis only holds the live tail)."""

    __tablename__ = "loss_points"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    batch: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float] = mapped_column(Float)
    t: Mapped[float] = mapped_column(Float)


class Artifact(Base):
    """Files a job wrote to the artifact store (weights, checkpoint), indexed by kind."""

    __tablename__ = "artifacts"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DatasetStatus(enum.StrEnum):
    processing = "processing"
    ready = "ready"
    failed = "failed"


class Dataset(Base):
    """An uploaded, labelled image dataset: the archive is ingested off the API into a decoded store."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=DatasetStatus.processing)
    error: Mapped[str | None] = mapped_column(Text)
    # spec.datasets.IngestOptions as JSON (test_fraction, image_size, channels, skip_invalid, seed).
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    archive_bytes: Mapped[int] = mapped_column(BigInteger)
    # Filled in by the ingest.
    layout: Mapped[str | None] = mapped_column(String(32))
    # spec.datasets.DatasetInfo as JSON (classes, shape, mean, std) once ready.
    info: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # {"train": {"images": n, "per_class": {class: n}}, "test": {...}}
    splits: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # [{"reason", "count", "examples": [paths]}]
    skipped: Mapped[list[Any] | None] = mapped_column(JSON)
    store_bytes: Mapped[int | None] = mapped_column(BigInteger)
    images_done: Mapped[int] = mapped_column(Integer, default=0)
    images_total: Mapped[int | None] = mapped_column(Integer)
    # Ingest lease, as for jobs: one worker ingests at a time; an expired lease lets the reaper resend.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ready_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_datasets_owner_created", "owner", "created_at", "id"),
        Index("ix_datasets_status_lease", "status", "lease_expires_at"),
    )


class ApiKey(Base):
    """A key for `Authorization: Bearer`: only its SHA-256 is stored (the key is shown once, at creation)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    admin: Mapped[bool] = mapped_column(default=False)
    name: Mapped[str | None] = mapped_column(String(200))
    # Hex SHA-256 of the whole key: keys are 32 random bytes, so a fast hash is enough (nothing to brute-force).
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The key's first characters, so a person can tell their keys apart in a listing.
    prefix: Mapped[str] = mapped_column(String(16))
    # Per-key overrides of the limits in settings (app.accounts.limits.Limits as JSON; absent fields: the settings').
    limits: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AuditEvent(Base):
    """One state-changing request: who (key, owner), what (method, route), which object, how it ended."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    key_id: Mapped[str | None] = mapped_column(String(32))
    owner: Mapped[str | None] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(8))
    # The route's template (/jobs/{job_id}/cancel), or the path when no route matched.
    route: Mapped[str] = mapped_column(String(200))
    object_id: Mapped[str | None] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))
    client: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_audit_events_owner_at", "owner", "at"),
    )
