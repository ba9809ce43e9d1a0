"""The service's Hooks: per-batch losses to the job's Redis Stream as they come, each epoch to the database.

Both kinds of I/O run on their own threads, in order, off the training thread. The database always holds
a contiguous prefix of the job's steps (written per epoch, and the rest at the end), so the losses survive
a Redis flush; the stream holds the live tail. A resumed attempt first drops what the dead one left past
its checkpoint, so replayed steps are written once, fresh.
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

from app.config import Settings
from app.db import session_scope
from app.loss_stream import LossRecord, LossStream, stream_key
from app.storage import ARTIFACT_FILES
from app.tables import Artifact, EpochMetric, Job, LossPoint
from worker.claims import holds_lease
from worker.hooks import EpochMetrics, Hooks, LossChunk, RunInfo

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


def drop_stream_tail(client: redis.Redis, job_id: str, from_step: int) -> int:
    """Delete stream entries with step >= from_step and let those steps be added again; returns how many."""
    key = stream_key(job_id)
    if from_step == 0:
        return int(client.delete(key))
    dropped = 0
    while True:
        entries: Any = client.xrange(key, min=f"{from_step}-0", max="+", count=1000)
        if not entries:
            break
        dropped += int(client.xdel(key, *[entry_id for entry_id, _ in entries]))
    if client.exists(key):
        # XDEL leaves the stream's last id where it was; XADD only accepts ids above it.
        client.execute_command("XSETID", key, f"{from_step - 1}-1")
    return dropped


@dataclass(frozen=True)
class _Epoch:
    chunks: list[LossChunk]
    metrics: EpochMetrics | None  # None: the losses of an unfinished epoch (a run that stopped or failed)
    next_step: int
    job_dir: Path | None


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

    def on_start(self, info: RunInfo) -> None:
        """Once, before the first batch: clear what a previous attempt left past our starting step."""
        self.info = info
        self._next_step = info.start_step
        try:
            dropped = drop_stream_tail(self.client, self.job_id, info.start_step)
        except RedisError as e:
            log.warning("job %s: could not clear the loss stream past step %d: %s", self.job_id,
                        info.start_step, e)
            dropped = 0
        if info.start_step or dropped:
            log.info("job %s: resuming at epoch %d, step %d (%d stale stream entries dropped)",
                     self.job_id, info.start_epoch, info.start_step, dropped)
        backoff = 0.5
        while True:
            try:
                with session_scope() as session:
                    self._prepare_db(session, info)
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
        self._db_queue.put(_Epoch(chunks, metrics, self._next_step, checkpoint_dir))

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
        if self.db_error is not None:
            raise self.db_error

    # The writers.

    def _write_stream(self) -> None:
        pending: list[LossRecord] = []
        closing, failing, backoff = False, False, 0.2
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
                else:
                    pending.extend(records_of(chunk))
            try:
                self.stream.append(self.job_id, pending)
                pending, failing, backoff = [], False, 0.2
            except RedisError as e:
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

    def _write_db(self) -> None:
        while True:
            work = self._db_queue.get()
            if work is None:
                return
            if self.lease_lost or self.db_error is not None:
                continue  # a later epoch alone would leave a gap: write nothing after a failure
            backoff = 0.5
            while True:
                try:
                    with session_scope() as session:
                        self._persist(session, work)
                    break
                except LeaseLost:
                    log.warning("job %s: lease lost; not recording epoch %s", self.job_id,
                                work.metrics.epoch if work.metrics else "tail")
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
        if not holds_lease(session=session, job_id=self.job_id, lease_owner=self.lease_owner):
            raise LeaseLost(self.job_id)

    def _prepare_db(self, session: Session, info: RunInfo) -> None:
        self._check_lease(session)
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
        if work.job_dir is not None:
            record_artifacts(session, self.job_id, work.job_dir)


def _metric_row(job_id: str, m: EpochMetrics) -> dict[str, Any]:
    return {"job_id": job_id, "epoch": m.epoch, "train_loss": m.train_loss, "test_loss": m.test_loss,
            "test_accuracy": m.test_accuracy, "val_loss": m.val_loss, "val_accuracy": m.val_accuracy,
            "lr": m.lr, "seconds": m.seconds}


def _row(job_id: str, r: LossRecord) -> dict[str, Any]:
    return {"job_id": job_id, "step": r.step, "epoch": r.epoch, "batch": r.batch, "loss": r.loss, "t": r.t}
