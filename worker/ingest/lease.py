"""Dataset ingest claims: a lease in the dataset's row, as for jobs (worker.leases.claims), so that one worker
ingests an upload at a time, and one whose worker died is ingested again by another.

Every state change is one conditional UPDATE; the lease is renewed (with the progress) by a thread.
"""

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.core.db import rowcount, session_scope
from app.core.tables import Dataset, DatasetStatus, utcnow

log = logging.getLogger(__name__)

MAX_INGEST_ATTEMPTS = 3


@dataclass(frozen=True)
class IngestClaim:
    dataset_id: str
    lease_owner: str
    attempt: int
    options: dict[str, Any]


@dataclass
class ReapedIngests:
    resent: list[str] = field(default_factory=list)  # queued too long, or their worker died
    failed: list[str] = field(default_factory=list)  # their worker died once too often


def _held(dataset_id: str, lease_owner: str) -> Any:
    return and_(Dataset.id == dataset_id, Dataset.lease_owner == lease_owner,
                Dataset.status == DatasetStatus.processing)


def claim_ingest(*, session: Session, dataset_id: str, lease_owner: str, lease_seconds: float) -> IngestClaim | None:
    """Take the upload if it is processing and unclaimed (or its lease expired), with attempts left."""
    now = utcnow()
    won = rowcount(session, update(Dataset).where(
        Dataset.id == dataset_id, Dataset.status == DatasetStatus.processing,
        or_(Dataset.lease_owner.is_(None), Dataset.lease_expires_at < now),
        Dataset.attempt < MAX_INGEST_ATTEMPTS,
    ).values(lease_owner=lease_owner, lease_expires_at=now + timedelta(seconds=lease_seconds),
             attempt=Dataset.attempt + 1, images_done=0))
    if not won:
        return None
    row = session.execute(select(Dataset.attempt, Dataset.options).where(Dataset.id == dataset_id)).one()
    return IngestClaim(dataset_id, lease_owner, row.attempt, row.options)


def renew_ingest(*, session: Session, dataset_id: str, lease_owner: str, lease_seconds: float, done: int,
                 total: int | None) -> bool:
    """Extend the lease and record the progress; False when the lease is no longer ours (or the row is gone)."""
    return bool(rowcount(session, update(Dataset).where(_held(dataset_id, lease_owner)).values(
        lease_expires_at=utcnow() + timedelta(seconds=lease_seconds), images_done=done, images_total=total)))


def finish_ingest(*, session: Session, dataset_id: str, lease_owner: str, values: dict[str, Any]) -> bool:
    """Record the outcome (status ready or failed, and what goes with it) and release the lease."""
    return bool(rowcount(session, update(Dataset).where(_held(dataset_id, lease_owner)).values(
        ready_at=utcnow(), lease_owner=None, lease_expires_at=None, **values)))


def release_ingest(*, session: Session, dataset_id: str, lease_owner: str) -> bool:
    """Give the upload back (this worker is shutting down) without counting the attempt."""
    return bool(rowcount(session, update(Dataset).where(_held(dataset_id, lease_owner)).values(
        lease_owner=None, lease_expires_at=None, attempt=Dataset.attempt - 1, enqueued_at=utcnow())))


def dataset_status(*, session: Session, dataset_id: str) -> DatasetStatus | None:
    """The dataset's status now; None once it was deleted."""
    status = session.scalar(select(Dataset.status).where(Dataset.id == dataset_id))
    return None if status is None else DatasetStatus(status)


def reap_ingests(*, session: Session, resend_after_seconds: float) -> ReapedIngests:
    """Uploads whose ingest message was lost (never claimed for too long) or whose worker died (lease
    expired): their task is to be sent again, or, out of attempts, they fail. The caller commits, then sends."""
    now = utcnow()
    reaped = ReapedIngests()
    stale = and_(Dataset.status == DatasetStatus.processing, or_(
        and_(Dataset.lease_owner.is_(None), Dataset.enqueued_at < now - timedelta(seconds=resend_after_seconds)),
        and_(Dataset.lease_owner.is_not(None), Dataset.lease_expires_at < now)))
    for dataset_id, attempt in session.execute(select(Dataset.id, Dataset.attempt).where(stale)).all():
        base = update(Dataset).where(Dataset.id == dataset_id, stale)
        if attempt < MAX_INGEST_ATTEMPTS:
            if rowcount(session, base.values(lease_owner=None, lease_expires_at=None, enqueued_at=now)):
                reaped.resent.append(dataset_id)
        elif rowcount(session, base.values(
                status=DatasetStatus.failed, ready_at=now, lease_owner=None, lease_expires_at=None,
                error=f"the ingest was interrupted {attempt} times (its worker stopped responding): upload the "
                      "archive again")):
            reaped.failed.append(dataset_id)
    return reaped


class IngestLease:
    """Renews the lease (and records the progress) every `every` seconds on a thread; `lost` is set once
    the lease is gone, or could not be renewed for longer than it lasts."""

    def __init__(self, claim: IngestClaim, *, lease_seconds: float, every: float):
        self.claim, self.lease_seconds, self.every = claim, lease_seconds, every
        self.done: int = 0
        self.total: int | None = None
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._renewed_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"ingest-lease-{claim.dataset_id}", daemon=True)

    def progress(self, done: int, total: int) -> bool:
        """The ingest's progress callback: keep going while the lease is ours."""
        self.done, self.total = done, total
        return not self.lost.is_set()

    def __enter__(self) -> "IngestLease":
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every + 30)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                with session_scope() as session:
                    held = renew_ingest(session=session, dataset_id=self.claim.dataset_id,
                                        lease_owner=self.claim.lease_owner, lease_seconds=self.lease_seconds,
                                        done=self.done, total=self.total)
            except SQLAlchemyError as e:
                log.warning("dataset %s: lease renewal failed: %s", self.claim.dataset_id, e)
                held = time.monotonic() - self._renewed_at < self.lease_seconds - self.every
            else:
                self._renewed_at = time.monotonic()
            if not held:
                log.warning("dataset %s: ingest lease lost (deleted, or taken over); stopping", self.claim.dataset_id)
                self.lost.set()
                return
