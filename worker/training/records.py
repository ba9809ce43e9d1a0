"""A claimed job's rows of its run: its per-batch losses, its epochs' metrics and progress, its artifacts index.
Every write is one transaction that first checks and locks the job's lease (worker.leases.claims.holds), so only the
lease holder's writes land; an epoch's staged files are renamed into the job's folder inside the transaction that
records the epoch, so they land with it or not at all."""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.core.loss_stream import LossRecord, LossStream
from app.core.storage import ARTIFACT_FILES
from app.core.tables import Artifact, EpochMetric, Job, LossPoint
from worker.leases.claims import holds
from worker.training.checkpoints import discard, promote
from worker.training.hooks import EpochMetrics, LossChunk, RunInfo
from worker.training.jobs import JOBS

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another worker holds the job now: write nothing more for it."""


@dataclass(frozen=True)
class EpochRecord:
    """What one transaction records: an epoch's losses and metrics, and its files."""

    chunks: list[LossChunk]
    metrics: EpochMetrics | None  # None: the losses of an unfinished epoch (a run that stopped or failed)
    next_step: int
    job_dir: Path | None  # where the job's files are (indexed in artifacts when the epoch is recorded)
    staged: Path | None = None  # the epoch's files, to move into job_dir when the epoch is recorded


def records_of(chunk: LossChunk) -> list[LossRecord]:
    return [LossRecord(chunk.first_step + i, chunk.epoch, chunk.first_batch + i, loss, t)
            for i, (loss, t) in enumerate(zip(chunk.losses, chunk.times, strict=True))]


def _insert(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return pg_insert
    if dialect == "sqlite":
        return sqlite_insert
    raise NotImplementedError(f"no insert-or-ignore for {dialect}")


def insert_ignore(session: Session, entity: Any, rows: list[dict[str, Any]]) -> None:
    """Bulk insert, skipping rows whose primary key exists (a replayed write is harmless)."""
    if rows:
        session.execute(_insert(session)(entity).on_conflict_do_nothing(), rows)


def record_artifacts(session: Session, job_id: str, job_dir: Path) -> None:
    """Index the job's weight and checkpoint files with their sizes (insert or update)."""
    rows = [{"job_id": job_id, "kind": kind, "path": str((job_dir / name).resolve()),
             "size_bytes": (job_dir / name).stat().st_size}
            for kind, name in ARTIFACT_FILES.items() if (job_dir / name).is_file()]
    if rows:
        stmt = _insert(session)(Artifact)
        session.execute(stmt.on_conflict_do_update(
            index_elements=["job_id", "kind"],
            set_={"path": stmt.excluded.path, "size_bytes": stmt.excluded.size_bytes,
                  "created_at": stmt.excluded.created_at}), rows)


def metric_row(job_id: str, m: EpochMetrics) -> dict[str, Any]:
    return {"job_id": job_id, "epoch": m.epoch, "train_loss": m.train_loss, "test_loss": m.test_loss,
            "test_accuracy": m.test_accuracy, "val_loss": m.val_loss, "val_accuracy": m.val_accuracy,
            "lr": m.lr, "seconds": m.seconds}


def loss_row(job_id: str, r: LossRecord) -> dict[str, Any]:
    return {"job_id": job_id, "step": r.step, "epoch": r.epoch, "batch": r.batch, "loss": r.loss, "t": r.t}


class RunRecords:
    """The database side of one claim's run of a job: each method is one transaction's work, checking (and
    locking) the claim's lease first; LeaseLost when another worker holds the job."""

    def __init__(self, *, job_id: str, lease_owner: str, stream: LossStream):
        self.job_id, self.lease_owner, self.stream = job_id, lease_owner, stream

    def check_lease(self, session: Session) -> None:
        if not holds(JOBS, session=session, object_id=self.job_id, lease_owner=self.lease_owner):
            raise LeaseLost(self.job_id)

    def prepare(self, session: Session, info: RunInfo) -> int:
        """Before the first batch: drop what a previous attempt left past our starting step (rows, stream entries);
        restore what it never wrote that our checkpoint covers. Returns how many stream entries it dropped."""
        self.check_lease(session)
        # Under the row lock: nobody can take the job (and start a stream of its own) until we commit.
        try:
            dropped = self.stream.truncate(self.job_id, info.start_step)
        except RedisError as e:
            log.warning("job %s: could not clear the loss stream past step %d: %s", self.job_id,
                        info.start_step, e)
            dropped = 0
        self._backfill(session, info.start_step)
        # Epochs the checkpoint covers whose rows the dead attempt never committed (it writes them after
        # handing them over, possibly after the checkpoint was saved).
        insert_ignore(session, EpochMetric, [metric_row(self.job_id, m) for m in info.history])
        session.execute(delete(LossPoint).where(LossPoint.job_id == self.job_id,
                                                LossPoint.step >= info.start_step))
        session.execute(delete(EpochMetric).where(EpochMetric.job_id == self.job_id,
                                                  EpochMetric.epoch >= info.start_epoch))
        session.execute(update(Job).where(Job.id == self.job_id).values(
            device=info.device, total_steps=info.total_steps, epoch=info.start_epoch - 1,
            step=info.start_step))
        return dropped

    def _backfill(self, session: Session, start_step: int) -> None:
        """Steps the checkpoint covers but the database lacks (the last worker died before writing them)."""
        have = session.scalar(select(func.max(LossPoint.step)).where(LossPoint.job_id == self.job_id))
        first_missing = 0 if have is None else have + 1
        if first_missing >= start_step:
            return
        try:
            records = self.stream.read(self.job_id, after=first_missing - 1, limit=start_step - first_missing)
        except RedisError as e:
            records = []
            log.warning("job %s: loss stream unreadable for backfill: %s", self.job_id, e)
        contiguous = []
        for expected, record in enumerate(records, start=first_missing):
            if record.step != expected or record.step >= start_step:
                break
            contiguous.append(record)
        insert_ignore(session, LossPoint, [loss_row(self.job_id, r) for r in contiguous])
        if len(contiguous) < start_step - first_missing:
            log.error("job %s: losses of steps %d..%d are lost (not in the database nor in Redis)",
                      self.job_id, first_missing + len(contiguous), start_step - 1)

    def persist(self, session: Session, work: EpochRecord) -> None:
        """Record an epoch (or an unfinished one's losses), and land its staged files."""
        self.check_lease(session)
        insert_ignore(session, LossPoint, [loss_row(self.job_id, r) for c in work.chunks for r in records_of(c)])
        progress: dict[str, Any] = {"step": work.next_step}
        if work.metrics is not None:
            insert_ignore(session, EpochMetric, [metric_row(self.job_id, work.metrics)])
            progress["epoch"] = work.metrics.epoch
        session.execute(update(Job).where(Job.id == self.job_id).values(**progress))
        if work.staged is not None and work.job_dir is not None:
            # Last before the commit, with the row locked since check_lease: no other worker can hold the
            # job while the files move. Should the commit fail after the move, the files are ours from a
            # moment we held the lease, and the epoch is recorded again on retry (or replayed on resume).
            promote(work.staged, work.job_dir)
            discard(work.staged)
        if work.job_dir is not None:
            record_artifacts(session, self.job_id, work.job_dir)
