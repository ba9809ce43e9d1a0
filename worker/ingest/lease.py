"""Dataset ingests as leased rows (worker.leases), so that one worker ingests an upload at a time, and one whose
worker died is ingested again by another: a processing dataset without a lease waits for a worker; the lease is
renewed with the ingest's progress."""

import shutil
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.queue import INGEST_QUEUE, INGEST_TASK, queue_name
from app.core.storage import dataset_dir
from app.core.tables import Dataset, DatasetStatus
from worker.leases.claims import claim
from worker.leases.keeper import LeaseKeeper
from worker.leases.kind import LeasedKind, Rule

MAX_INGEST_ATTEMPTS = 3
PROCESSING = Dataset.status == DatasetStatus.processing


def _interrupted(now: datetime, row: Any) -> dict[str, Any]:
    return {"status": DatasetStatus.failed, "ready_at": now,
            "error": f"the ingest was interrupted {row.attempt} times (its worker stopped responding): upload the "
                     "archive again"}


def _remove_folder(dataset_id: str) -> None:
    # A failed dataset keeps its row (with the reason), no files.
    shutil.rmtree(dataset_dir(get_settings().datasets_path, dataset_id), ignore_errors=True)


DATASETS = LeasedKind(
    name="dataset", entity=Dataset, task=INGEST_TASK,
    queue=lambda row: queue_name(INGEST_QUEUE, get_settings()),
    waiting=PROCESSING & Dataset.lease_expires_at.is_(None),
    claimed=PROCESSING & Dataset.lease_expires_at.is_not(None),
    max_attempts=MAX_INGEST_ATTEMPTS,
    on_claim=lambda now: {"images_done": 0},
    on_expiry=(
        Rule("requeued", lambda now, row: {"enqueued_at": now}, when=Dataset.attempt < MAX_INGEST_ATTEMPTS),
        Rule("failed", _interrupted),
    ),
    on_hand_back=(Rule("requeued", lambda now, row: {"attempt": Dataset.attempt - 1, "enqueued_at": now}),),
    on_finish=lambda now: {"ready_at": now},
    cleanup=_remove_folder,
)


@dataclass(frozen=True)
class IngestClaim:
    dataset_id: str
    lease_owner: str
    attempt: int
    options: dict[str, Any]


def claim_ingest(*, session: Session, dataset_id: str, lease_owner: str, lease_seconds: float) -> IngestClaim | None:
    """Take the upload if it is processing and unclaimed (or its lease expired), with attempts left."""
    if not claim(DATASETS, session=session, object_id=dataset_id, lease_owner=lease_owner,
                 lease_seconds=lease_seconds):
        return None
    row = session.execute(select(Dataset.attempt, Dataset.options).where(Dataset.id == dataset_id)).one()
    return IngestClaim(dataset_id, lease_owner, row.attempt, row.options)


def dataset_status(*, session: Session, dataset_id: str) -> DatasetStatus | None:
    """The dataset's status now; None once it was deleted."""
    status = session.scalar(select(Dataset.status).where(Dataset.id == dataset_id))
    return None if status is None else DatasetStatus(status)


class IngestLease(LeaseKeeper):
    """The ingest's lease, renewed with its progress; `lost` once it is gone (deleted, or taken over)."""

    def __init__(self, claim: IngestClaim, *, lease_seconds: float, every: float):
        super().__init__(DATASETS, claim.dataset_id, claim.lease_owner, lease_seconds=lease_seconds, every=every)
        self.done: int = 0
        self.total: int | None = None

    def progress(self, done: int, total: int) -> bool:
        """The ingest's progress callback: keep going while the lease is ours."""
        self.done, self.total = done, total
        return not self.lost.is_set()

    def values(self) -> dict[str, Any]:
        return {"images_done": self.done, "images_total": self.total}
