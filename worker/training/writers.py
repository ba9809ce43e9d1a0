"""The Reporter's two writers, each a thread of its own taking work in order from a queue, off the training thread:
losses to the job's Redis Stream as they come (the live tail), epochs to the database (the record)."""

import logging
import queue
import threading
import time

from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from app.core.db import session_scope
from app.core.loss_stream import LossRecord, LossStream, StreamFenced
from worker.retry import Backoff
from worker.training.checkpoints import discard
from worker.training.hooks import LossChunk
from worker.training.records import EpochRecord, LeaseLost, RunRecords, records_of

log = logging.getLogger(__name__)


class StreamWriter:
    """Appends the chunks it is handed to the job's stream, as the lease holder (app.core.loss_stream's fencing),
    everything that piled up in one round trip; retries while Redis fails (the database gets these losses at the
    end of the epoch anyway). Sets `lease_lost` once the database says the job is another worker's."""

    def __init__(self, records: RunRecords, stream: LossStream, *, maxlen: int, lease_lost: threading.Event):
        self.records, self.stream, self.maxlen, self.lease_lost = records, stream, maxlen, lease_lost
        self.job_id = records.job_id
        self.queue: queue.SimpleQueue[LossChunk | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=f"losses-{self.job_id}", daemon=True)

    def _run(self) -> None:
        pending: list[LossRecord] = []
        closing, failing, fenced_off = False, False, False
        backoff = Backoff(0.4, cap=5.0)
        while True:
            items = [] if pending else [self.queue.get()]
            while True:  # everything that piled up goes in one round trip
                try:
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            for chunk in items:
                if chunk is None:
                    closing = True
                elif not fenced_off:
                    pending.extend(records_of(chunk))
            try:
                self._append(pending)
                pending, failing = [], False
                backoff.reset()
            except LeaseLost:
                log.warning("job %s: lease lost; the loss stream refused %d losses, and takes no more from us",
                            self.job_id, len(pending))
                self.lease_lost.set()
                fenced_off, pending = True, []
            except (RedisError, StreamFenced, SQLAlchemyError) as e:
                if not failing:
                    log.warning("job %s: loss stream write failed, retrying: %s", self.job_id, e)
                failing = True
                pending = pending[-self.maxlen:]
                if closing:
                    log.warning("job %s: %d losses not written to the stream (they are in the database)",
                                self.job_id, len(pending))
                    return
                backoff.wait()
            if closing and not pending:
                return

    def _append(self, records: list[LossRecord]) -> None:
        """Append as the lease holder; raises LeaseLost when the database says we no longer are."""
        lease_owner = self.records.lease_owner
        try:
            self.stream.append_fenced(self.job_id, records, lease_owner=lease_owner)
            return
        except StreamFenced:
            pass
        # Refused: the lease key is missing (Redis lost it) or names another owner. Only the database knows
        # who holds the job: prove it with the row locked, set the key before unlocking, and write again.
        # A second refusal (the key vanished again at once) is retried like a Redis error.
        with session_scope() as session:
            self.records.check_lease(session)
            self.stream.fence(self.job_id, lease_owner)
        log.info("job %s: loss stream lease key set again (it was missing or stale)", self.job_id)
        self.stream.append_fenced(self.job_id, records, lease_owner=lease_owner)


class EpochWriter:
    """Records each epoch it is handed in one transaction (RunRecords.persist), retrying database errors until
    `deadline` (set when the run closes). Once the lease is lost or a write failed for good it records nothing more,
    and lands no file: a later epoch alone would leave a gap."""

    def __init__(self, records: RunRecords, *, lease_lost: threading.Event):
        self.records, self.lease_lost = records, lease_lost
        self.job_id = records.job_id
        self.error: Exception | None = None
        self.deadline: float | None = None
        self.queue: queue.SimpleQueue[EpochRecord | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=f"db-{self.job_id}", daemon=True)

    def _run(self) -> None:
        discarding = False
        while True:
            work = self.queue.get()
            if work is None:
                return
            if self.lease_lost.is_set() or self.error is not None:
                if work.staged is not None:
                    if not discarding:
                        log.warning("job %s: epoch %s not recorded, its files discarded (%s), and those of any "
                                    "later epoch", self.job_id, work.metrics.epoch if work.metrics else "tail",
                                    "lease lost" if self.lease_lost.is_set() else "database writes failed")
                    discarding = True
                    discard(work.staged)
                continue
            self._record(work)

    def _record(self, work: EpochRecord) -> None:
        backoff = Backoff(0.5, cap=5.0)
        while True:
            try:
                with session_scope() as session:
                    self.records.persist(session, work)
                return
            except LeaseLost:
                log.warning("job %s: lease lost; not recording epoch %s%s", self.job_id,
                            work.metrics.epoch if work.metrics else "tail",
                            ", its files discarded" if work.staged is not None else "")
                if work.staged is not None:
                    discard(work.staged)
                self.lease_lost.set()
                return
            except Exception as e:  # any error: a dead writer must not look like one that finished
                if not isinstance(e, SQLAlchemyError) or (
                        self.deadline is not None and time.monotonic() + backoff.delay > self.deadline):
                    log.error("job %s: giving up writing losses to the database", self.job_id, exc_info=e)
                    self.error = e
                    return
                log.warning("job %s: database write failed, retrying in %.1f s: %s", self.job_id, backoff.delay, e)
                backoff.wait()
