"""The service's Hooks: per-batch losses to the job's Redis Stream as they come, each epoch to the database.

Both kinds of I/O run on their own threads, in order, off the training thread. The database always holds
a contiguous prefix of the job's steps (written per epoch, and the rest at the end), so the losses survive
a Redis flush; the stream holds the live tail. A resumed attempt first drops what the dead one left past
its checkpoint, so replayed steps are written once, fresh.

Only the lease holder's writes land. Every database transaction first checks and locks the lease
(worker.leases.claims.holds); the stream refuses appends unless the job's lease key names us
(app.core.loss_stream); and an epoch's files, staged by the engine in our attempt folder, are renamed into the
job's folder inside the transaction that records the epoch. A worker that lost the job (frozen past its lease,
partitioned) fails those checks, deletes its staged files and stops.

Why the file commit rides on the epoch's own transaction, on the writer thread, rather than making the
training thread wait for it: the files and the epoch's metrics and losses then land together or not at all,
and training never waits on the database (one rename per file per epoch, nothing per batch). The engine
stages each epoch in a folder of its own, so the next epoch's files never overwrite ones still waiting to be
committed, and a resume reads only committed files. How far a worker can run ahead of its commits is bounded
by its lease: a worker cut off from the database stops once its lease may have expired (worker.training.heartbeat).
"""

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.exceptions import RedisError
from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.core import storage
from app.core.config import Settings
from app.core.db import session_scope
from app.core.loss_stream import LossRecord, LossStream, StreamFenced
from app.core.storage import ARTIFACT_FILES
from app.core.tables import Artifact, EpochMetric, Job, LossPoint
from worker.leases.claims import holds
from worker.training.attempts import remove_attempt
from worker.training.checkpoints import discard, promote
from worker.training.hooks import EpochMetrics, Hooks, LossChunk, RunInfo
from worker.training.jobs import JOBS

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another worker holds the job now: write nothing more for it."""


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


@dataclass(frozen=True)
class _Epoch:
    chunks: list[LossChunk]
    metrics: EpochMetrics | None  # None: the losses of an unfinished epoch (a run that stopped or failed)
    next_step: int
    job_dir: Path | None  # where the job's files are (indexed in artifacts when the epoch is recorded)
    staged: Path | None = None  # the epoch's files, to move into job_dir when the epoch is recorded


class Reporter(Hooks):
    """Hooks for a claimed job. Use as a context manager; close() flushes everything (or raises)."""

    def __init__(self, *, job_id: str, lease_owner: str, client: redis.Redis, settings: Settings,
                 stop: threading.Event):
        self.job_id, self.lease_owner, self.client, self.settings = job_id, lease_owner, client, settings
        self.stream = LossStream(client, settings.loss_stream_maxlen)
        self.info: RunInfo | None = None
        self.lease_lost = False
        self.db_error: Exception | None = None
        self._stop = stop
        self._chunks: list[LossChunk] = []  # the current epoch's, for the database
        self._next_step = 0
        self._redis_queue: queue.SimpleQueue[LossChunk | None] = queue.SimpleQueue()
        self._db_queue: queue.SimpleQueue[_Epoch | None] = queue.SimpleQueue()
        self._deadline: float | None = None  # set by close(): writers give up retrying after it
        self._job_dir: Path | None = None  # the engine's, once it asked for a staging folder
        self._threads = [
            threading.Thread(target=self._write_stream, name=f"losses-{job_id}", daemon=True),
            threading.Thread(target=self._write_db, name=f"db-{job_id}", daemon=True),
        ]

    def __enter__(self) -> "Reporter":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._deadline is None:
            self.close(persist_tail=False)

    # Hooks, called on the training thread.

    def staging_dir(self, job_dir: Path, epoch: int) -> Path:
        self._job_dir = job_dir
        return self._staged(job_dir, epoch)

    def _staged(self, job_dir: Path, epoch: int) -> Path:
        return storage.staged_epoch_dir(storage.attempt_dir(job_dir, self.lease_owner), epoch)

    def on_start(self, info: RunInfo) -> None:
        """Once, before the first batch: clear what a previous attempt left past our starting step."""
        self.info = info
        self._next_step = info.start_step
        backoff = 0.5
        while True:
            try:
                with session_scope() as session:
                    dropped = self._prepare_db(session, info)
                if info.start_step or dropped:
                    log.info("job %s: resuming at epoch %d, step %d (%d stale stream entries dropped)",
                             self.job_id, info.start_epoch, info.start_step, dropped)
                return
            except LeaseLost:
                self.lease_lost = True
                return
            except SQLAlchemyError as e:
                # A database blip must not fail the job for good: retry for about half a minute.
                if backoff > 8:
                    raise
                log.warning("job %s: database not ready, retrying in %.1f s: %s", self.job_id, backoff, e)
                time.sleep(backoff)
                backoff *= 2

    def on_losses(self, chunk: LossChunk) -> None:
        self._chunks.append(chunk)
        self._next_step = chunk.first_step + len(chunk.losses)
        self._redis_queue.put(chunk)

    def on_epoch(self, metrics: EpochMetrics, checkpoint_dir: Path) -> None:
        chunks, self._chunks = self._chunks, []
        if self._job_dir is not None and checkpoint_dir == self._staged(self._job_dir, metrics.epoch):
            work = _Epoch(chunks, metrics, self._next_step, self._job_dir, staged=checkpoint_dir)
        else:  # the files are in place already (a caller that does not stage)
            work = _Epoch(chunks, metrics, self._next_step, checkpoint_dir)
        self._db_queue.put(work)

    def should_stop(self) -> bool:
        # Flags only: the heartbeat thread sets _stop (cancel, lost lease); the writers set lease_lost.
        return self._stop.is_set() or self.lease_lost

    def close(self, *, persist_tail: bool = True, timeout: float = 60.0) -> None:
        """Write what is left (with persist_tail, an unfinished epoch's losses too) and stop the writers.

        Raises the database error that kept losses from being persisted, if any."""
        if persist_tail and self._chunks:
            self._db_queue.put(_Epoch(self._chunks, None, self._next_step, None))
        self._chunks = []
        self._deadline = time.monotonic() + timeout
        self._redis_queue.put(None)
        self._db_queue.put(None)
        for thread in self._threads:
            thread.join(timeout=max(self._deadline - time.monotonic(), 0) + 5)
        if any(thread.is_alive() for thread in self._threads):
            raise TimeoutError(f"job {self.job_id}: losses not written within {timeout:.0f} s")
        if self._job_dir is not None:  # what was staged and not committed must never land
            remove_attempt(self._job_dir, self.lease_owner)
        if self.db_error is not None:
            raise self.db_error

    # The writers.

    def _write_stream(self) -> None:
        pending: list[LossRecord] = []
        closing, failing, backoff, fenced_off = False, False, 0.2, False
        while True:
            items = [] if pending else [self._redis_queue.get()]
            while True:  # everything that piled up goes in one round trip
                try:
                    items.append(self._redis_queue.get_nowait())
                except queue.Empty:
                    break
            for chunk in items:
                if chunk is None:
                    closing = True
                elif not fenced_off:
                    pending.extend(records_of(chunk))
            try:
                self._append(pending)
                pending, failing, backoff = [], False, 0.2
            except LeaseLost:
                log.warning("job %s: lease lost; the loss stream refused %d losses, and takes no more from us",
                            self.job_id, len(pending))
                self.lease_lost, fenced_off, pending = True, True, []
            except (RedisError, StreamFenced, SQLAlchemyError) as e:
                # The database gets these losses at the end of the epoch; the stream catches up on retry.
                if not failing:
                    log.warning("job %s: loss stream write failed, retrying: %s", self.job_id, e)
                failing, backoff = True, min(backoff * 2, 5.0)
                pending = pending[-self.settings.loss_stream_maxlen:]
                if closing:
                    log.warning("job %s: %d losses not written to the stream (they are in the database)",
                                self.job_id, len(pending))
                    return
                time.sleep(backoff)
            if closing and not pending:
                return

    def _append(self, records: list[LossRecord]) -> None:
        """Append as the lease holder; raises LeaseLost when the database says we no longer are."""
        try:
            self.stream.append_fenced(self.job_id, records, lease_owner=self.lease_owner)
            return
        except StreamFenced:
            pass
        # Refused: the lease key is missing (Redis lost it) or names another owner. Only the database knows
        # who holds the job: prove it with the row locked, set the key before unlocking, and write again.
        # A second refusal (the key vanished again at once) is retried like a Redis error.
        with session_scope() as session:
            self._check_lease(session)
            self.stream.fence(self.job_id, self.lease_owner)
        log.info("job %s: loss stream lease key set again (it was missing or stale)", self.job_id)
        self.stream.append_fenced(self.job_id, records, lease_owner=self.lease_owner)

    def _write_db(self) -> None:
        discarding = False
        while True:
            work = self._db_queue.get()
            if work is None:
                return
            if self.lease_lost or self.db_error is not None:
                # A later epoch alone would leave a gap: write nothing after a failure, land no file.
                if work.staged is not None:
                    if not discarding:
                        log.warning("job %s: epoch %s not recorded, its files discarded (%s), and those of any "
                                    "later epoch", self.job_id, work.metrics.epoch if work.metrics else "tail",
                                    "lease lost" if self.lease_lost else "database writes failed")
                    discarding = True
                    discard(work.staged)
                continue
            backoff = 0.5
            while True:
                try:
                    with session_scope() as session:
                        self._persist(session, work)
                    break
                except LeaseLost:
                    log.warning("job %s: lease lost; not recording epoch %s%s", self.job_id,
                                work.metrics.epoch if work.metrics else "tail",
                                ", its files discarded" if work.staged is not None else "")
                    if work.staged is not None:
                        discard(work.staged)
                    self.lease_lost = True
                    break
                except Exception as e:  # any error: a dead writer must not look like one that finished
                    if not isinstance(e, SQLAlchemyError) or (
                            self._deadline is not None and time.monotonic() + backoff > self._deadline):
                        log.error("job %s: giving up writing losses to the database", self.job_id, exc_info=e)
                        self.db_error = e
                        break
                    log.warning("job %s: database write failed, retrying in %.1f s: %s", self.job_id, backoff, e)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)

    # Database work, each call one transaction that first checks (and locks) our lease.

    def _check_lease(self, session: Session) -> None:
        if not holds(JOBS, session=session, object_id=self.job_id, lease_owner=self.lease_owner):
            raise LeaseLost(self.job_id)

    def _prepare_db(self, session: Session, info: RunInfo) -> int:
        """Returns how many stream entries past our start it dropped."""
        self._check_lease(session)
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
        insert_ignore(session, EpochMetric, [_metric_row(self.job_id, m) for m in info.history])
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
        insert_ignore(session, LossPoint, [_row(self.job_id, r) for r in contiguous])
        if len(contiguous) < start_step - first_missing:
            log.error("job %s: losses of steps %d..%d are lost (not in the database nor in Redis)",
                      self.job_id, first_missing + len(contiguous), start_step - 1)

    def _persist(self, session: Session, work: _Epoch) -> None:
        self._check_lease(session)
        insert_ignore(session, LossPoint, [_row(self.job_id, r) for c in work.chunks for r in records_of(c)])
        progress: dict[str, Any] = {"step": work.next_step}
        if work.metrics is not None:
            insert_ignore(session, EpochMetric, [_metric_row(self.job_id, work.metrics)])
            progress["epoch"] = work.metrics.epoch
        session.execute(update(Job).where(Job.id == self.job_id).values(**progress))
        if work.staged is not None and work.job_dir is not None:
            # Last before the commit, with the row locked since _check_lease: no other worker can hold the
            # job while the files move. Should the commit fail after the move, the files are ours from a
            # moment we held the lease, and the epoch is recorded again on retry (or replayed on resume).
            promote(work.staged, work.job_dir)
            discard(work.staged)
        if work.job_dir is not None:
            record_artifacts(session, self.job_id, work.job_dir)


def _metric_row(job_id: str, m: EpochMetrics) -> dict[str, Any]:
    return {"job_id": job_id, "epoch": m.epoch, "train_loss": m.train_loss, "test_loss": m.test_loss,
            "test_accuracy": m.test_accuracy, "val_loss": m.val_loss, "val_accuracy": m.val_accuracy,
            "lr": m.lr, "seconds": m.seconds}


def _row(job_id: str, r: LossRecord) -> dict[str, Any]:
    return {"job_id": job_id, "step": r.step, "epoch": r.epoch, "batch": r.batch, "loss": r.loss, "t": r.t}
