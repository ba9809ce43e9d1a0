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
import threading
import time
from pathlib import Path

import redis
from sqlalchemy.exc import SQLAlchemyError

from app.core import storage
from app.core.config import Settings
from app.core.db import session_scope
from app.core.loss_stream import LossStream
from worker.retry import Backoff
from worker.training.attempts import remove_attempt
from worker.training.hooks import EpochMetrics, Hooks, LossChunk, RunInfo
from worker.training.records import EpochRecord, LeaseLost, RunRecords
from worker.training.writers import EpochWriter, StreamWriter

log = logging.getLogger(__name__)


class Reporter(Hooks):
    """Hooks for a claimed job. Use as a context manager; close() flushes everything (or raises)."""

    def __init__(self, *, job_id: str, lease_owner: str, client: redis.Redis, settings: Settings,
                 stop: threading.Event):
        self.job_id, self.lease_owner = job_id, lease_owner
        stream = LossStream(client, settings.loss_stream_maxlen)
        self.records = RunRecords(job_id=job_id, lease_owner=lease_owner, stream=stream)
        self.info: RunInfo | None = None
        self._lease_lost = threading.Event()  # set by either writer, or by on_start
        self._stop = stop
        self._chunks: list[LossChunk] = []  # the current epoch's, for the database
        self._next_step = 0
        self._closed = False
        self._job_dir: Path | None = None  # the engine's, once it asked for a staging folder
        self.stream_writer = StreamWriter(self.records, stream, maxlen=settings.loss_stream_maxlen,
                                          lease_lost=self._lease_lost)
        self.epoch_writer = EpochWriter(self.records, lease_lost=self._lease_lost)

    @property
    def lease_lost(self) -> bool:
        return self._lease_lost.is_set()

    @property
    def db_error(self) -> Exception | None:
        return self.epoch_writer.error

    def __enter__(self) -> "Reporter":
        self.stream_writer.thread.start()
        self.epoch_writer.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._closed:
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
        # A database blip must not fail the job for good: retry for about half a minute.
        backoff = Backoff(0.5, cap=8.0, tries=5)
        while True:
            try:
                with session_scope() as session:
                    dropped = self.records.prepare(session, info)
                if info.start_step or dropped:
                    log.info("job %s: resuming at epoch %d, step %d (%d stale stream entries dropped)",
                             self.job_id, info.start_epoch, info.start_step, dropped)
                return
            except LeaseLost:
                self._lease_lost.set()
                return
            except SQLAlchemyError as e:
                log.warning("job %s: database not ready, retrying in %.1f s: %s", self.job_id, backoff.delay, e)
                if not backoff.wait():
                    raise

    def on_losses(self, chunk: LossChunk) -> None:
        self._chunks.append(chunk)
        self._next_step = chunk.first_step + len(chunk.losses)
        self.stream_writer.queue.put(chunk)

    def on_epoch(self, metrics: EpochMetrics, checkpoint_dir: Path) -> None:
        chunks, self._chunks = self._chunks, []
        if self._job_dir is not None and checkpoint_dir == self._staged(self._job_dir, metrics.epoch):
            work = EpochRecord(chunks, metrics, self._next_step, self._job_dir, staged=checkpoint_dir)
        else:  # the files are in place already (a caller that does not stage)
            work = EpochRecord(chunks, metrics, self._next_step, checkpoint_dir)
        self.epoch_writer.queue.put(work)

    def should_stop(self) -> bool:
        # Flags only: the heartbeat thread sets _stop (cancel, lost lease); the writers set the lease lost.
        return self._stop.is_set() or self._lease_lost.is_set()

    def close(self, *, persist_tail: bool = True, timeout: float = 60.0) -> None:
        """Write what is left (with persist_tail, an unfinished epoch's losses too) and stop the writers.

        Raises the database error that kept losses from being persisted, if any."""
        self._closed = True
        if persist_tail and self._chunks:
            self.epoch_writer.queue.put(EpochRecord(self._chunks, None, self._next_step, None))
        self._chunks = []
        deadline = self.epoch_writer.deadline = time.monotonic() + timeout
        self.stream_writer.queue.put(None)
        self.epoch_writer.queue.put(None)
        threads = [self.stream_writer.thread, self.epoch_writer.thread]
        for thread in threads:
            thread.join(timeout=max(deadline - time.monotonic(), 0) + 5)
        if any(thread.is_alive() for thread in threads):
            raise TimeoutError(f"job {self.job_id}: losses not written within {timeout:.0f} s")
        if self._job_dir is not None:  # what was staged and not committed must never land
            remove_attempt(self._job_dir, self.lease_owner)
        if self.db_error is not None:
            raise self.db_error
