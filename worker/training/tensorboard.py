"""TensorBoard event files per job: per-batch loss, per-epoch metrics and learning rate, the spec as hparams.

Written with torch.utils.tensorboard's SummaryWriter into the job's folder (app.core.storage.tensorboard_dir), so
`tensorboard --logdir <artifacts>` shows every job as a run of its own, "<job id>/tensorboard". The hooks
only hand their arguments to a queue; a thread of ours builds the events (the SummaryWriter's own thread
writes the file), so the training thread does one queue put per chunk of losses, nothing per batch.

Step axis: one, the job's global step (a batch's, from 0 over the whole job). Per-batch losses sit at their
step, with the wall time the engine recorded for them. Per-epoch scalars sit at the epoch's last step, so
they line up with the batch curve they summarize, and TensorBoard draws train/test/validation loss and the
batch loss against the same x; an x of epochs instead would give the epoch charts a scale of their own.

Resume: an attempt that resumes from the epoch-k checkpoint opens a new event file with purge_step = the
checkpoint's step. Readers then drop whatever earlier files hold at or past that step (EventAccumulator on
the file's SessionLog.START; TensorBoard's data server on the step going back), which is the dead attempt's
replayed tail: each step is loaded once, with the new attempt's value. What the checkpoint covers must be on
disk before the checkpoint can be committed, or the purge would leave a gap: on_epoch waits (bounded) until
our thread has flushed the epoch's events, before the service's Reporter is handed the epoch to commit (see
CombinedHooks' order in worker.training.task). That is one wait of about a millisecond per epoch, next to the
engine's own synchronous checkpoint write.

Fencing: event files are not staged and committed like checkpoints; TensorBoard reads them while they grow.
Each attempt writes only a file of its own, named by TensorBoard after its creation time, so a worker that
lost the job can never touch the holder's file, and its own sorts before the holder's, whose purge step
hides anything it adds at or past the checkpoint the holder resumed from. Once the heartbeat or the
reporter knows the lease is lost (`fenced`), this thread writes nothing more. A TensorBoard that is already
watching during such a takeover may show the stale worker's last few seconds until it reloads.

A failure here (a full disk, anything) is logged and ends the job's event files, never the job.
"""

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from torch.utils.tensorboard import FileWriter, SummaryWriter
from torch.utils.tensorboard.summary import hparams

from app.core.storage import EVENT_FILE_PREFIX
from worker.training.hooks import EpochMetrics, Hooks, LossChunk, RunInfo

log = logging.getLogger(__name__)

# Tags: TensorBoard groups charts by the part before the "/".
BATCH_LOSS = "loss/batch"
EPOCH_TAGS = {
    "train_loss": "loss/train",
    "test_loss": "loss/test",
    "val_loss": "loss/val",
    "test_accuracy": "accuracy/test",
    "val_accuracy": "accuracy/val",
    "lr": "lr",
}

HParam = int | float | str

# How long a new attempt waits for its clock to pass an earlier attempt's file (see _sort_after_earlier_files).
MAX_CLOCK_WAIT_SECONDS = 5.0


def _created_second(name: str) -> int | None:
    """The creation second in an event file's name ("events.out.tfevents.<seconds>.<host>.<pid>.<n>")."""
    head = name.removeprefix(EVENT_FILE_PREFIX).split(".", 1)[0]
    return int(head) if name.startswith(EVENT_FILE_PREFIX) and head.isdigit() else None


def flat_hparams(spec: Mapping[str, Any], prefix: str = "") -> dict[str, HParam]:
    """The spec as hparams: nested keys joined by ".", lists as JSON, booleans as "true"/"false" (torch would
    store them as the numbers 1 and 0), nulls left out (TensorBoard has no null hparam)."""
    flat: dict[str, HParam] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, bool):
            flat[name] = "true" if value else "false"
        elif isinstance(value, int | float | str):
            flat[name] = value
        elif value is not None:
            flat[name] = json.dumps(value)
    return flat


@dataclass(frozen=True)
class _Epoch:
    metrics: EpochMetrics
    step: int  # the epoch's last global step
    walltime: float
    last: bool  # the job's final epoch
    written: threading.Event  # set once its events are flushed (or will never be)


_Work = RunInfo | LossChunk | _Epoch | None


class TensorBoardWriter(Hooks):
    """Hooks that write a job's event files into `log_dir`. Use as a context manager; close() ends them.

    `spec` (the stored JobSpec, as JSON) becomes the run's hparams; `fenced` says whether this worker lost the
    job's lease (polled on our thread before every write)."""

    def __init__(self, log_dir: Path, *, spec: Mapping[str, Any], fenced: Callable[[], bool] = lambda: False,
                 flush_seconds: float = 2.0, epoch_wait_seconds: float = 2.0):
        self.log_dir = log_dir
        self.failed = False  # set on our thread: the events ended early (logged)
        self._hparams = flat_hparams(spec)
        self._fenced = fenced
        self._flush_seconds, self._epoch_wait_seconds = flush_seconds, epoch_wait_seconds
        self._queue: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self._writer: SummaryWriter | None = None
        self._epochs = 0
        self._next_step = 0
        self._stopped = False  # on our thread: fenced off or failed, nothing more is written
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"tensorboard-{log_dir.parent.name}", daemon=True)

    def __enter__(self) -> "TensorBoardWriter":
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # Hooks, called on the training thread: queue puts, and one bounded wait per epoch.

    def on_start(self, info: RunInfo) -> None:
        self._epochs, self._next_step = info.epochs, info.start_step
        self._queue.put(info)

    def on_losses(self, chunk: LossChunk) -> None:
        self._next_step = chunk.first_step + len(chunk.losses)
        self._queue.put(chunk)

    def on_epoch(self, metrics: EpochMetrics, checkpoint_dir: Path) -> None:
        epoch = _Epoch(metrics, self._next_step - 1, time.time(), metrics.epoch == self._epochs, threading.Event())
        self._queue.put(epoch)
        # Before the epoch's checkpoint can be committed (see the module docstring); bounded, so that a slow
        # disk delays the commit by at most this much and never stops the training.
        if self._thread.is_alive() and not epoch.written.wait(self._epoch_wait_seconds):
            log.warning("%s: epoch %d's TensorBoard events not flushed within %.0f s; a resume from its "
                        "checkpoint may miss some of them", self.log_dir, metrics.epoch, self._epoch_wait_seconds)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued and close the event file; logs rather than raises."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("%s: TensorBoard events still being written after %.0f s; left to finish",
                            self.log_dir, timeout)

    # Our thread.

    def _run(self) -> None:
        while (work := self._queue.get()) is not None:
            try:
                if not self._stopped and self._fenced():
                    log.warning("%s: lease lost; no more TensorBoard events from this worker", self.log_dir)
                    self._stop()
                if not self._stopped:
                    self._write(work)
            except Exception:
                log.exception("%s: writing TensorBoard events failed; the job goes on without them", self.log_dir)
                self.failed = True
                self._stop()
            finally:
                if isinstance(work, _Epoch):
                    work.written.set()
        self._stop()

    def _write(self, work: RunInfo | LossChunk | _Epoch) -> None:
        if isinstance(work, RunInfo):
            self._open(work)
            return
        writer = self._writer
        if writer is None:  # not started: nothing to write into
            return
        if isinstance(work, LossChunk):
            for i, (loss, t) in enumerate(zip(work.losses, work.times, strict=True)):
                writer.add_scalar(BATCH_LOSS, loss, work.first_step + i, walltime=t)
            return
        for field, tag in EPOCH_TAGS.items():
            value = getattr(work.metrics, field)
            if value is not None:
                writer.add_scalar(tag, value, work.step, walltime=work.walltime)
        if work.last:
            _, _, session_end = hparams(self._hparams, {})
            cast(FileWriter, writer.file_writer).add_summary(session_end, work.step, work.walltime)
        writer.flush()

    def _open(self, info: RunInfo) -> None:
        """A new event file for this attempt, hiding what earlier ones hold from our first step on."""
        self._close_writer()
        self._sort_after_earlier_files()
        self._writer = SummaryWriter(str(self.log_dir), purge_step=info.start_step, max_queue=1024,
                                     flush_secs=self._flush_seconds)
        if info.start_step == 0:
            # The session start alone, not hparams()'s experiment summary: TensorBoard takes the columns of its
            # HPARAMS tab from one experiment summary of the whole logdir when there is one (another job's,
            # with other hparams), and from every run's session start and scalar tags when there is none.
            # A resumed attempt keeps the first one's (step 0 is before its purge step).
            _, session_start, _ = hparams(self._hparams, {tag: 0.0 for tag in EPOCH_TAGS.values()})
            cast(FileWriter, self._writer.file_writer).add_summary(session_start, 0)
        self._writer.flush()

    def _sort_after_earlier_files(self) -> None:
        """Wait, if need be, until our file's name sorts after every earlier attempt's.

        Readers apply a file's purge step to the files before it in name order, and a name starts with the
        second it was created in (then host, pid and a counter): an attempt that took over within the same
        second (a worker's shutdown hands its job back at once), or on a host whose clock is behind, would
        otherwise come first, and the earlier attempt's replayed steps would load after our purge."""
        seconds = [_created_second(p.name) for p in self.log_dir.glob(f"{EVENT_FILE_PREFIX}*")]
        newest = max((s for s in seconds if s is not None), default=None)
        if newest is None:
            return
        deadline = time.monotonic() + MAX_CLOCK_WAIT_SECONDS
        while int(time.time()) <= newest:
            if time.monotonic() >= deadline:
                log.warning("%s: an earlier event file is from %d s ahead of this host's clock; TensorBoard may "
                            "read this attempt's file before it", self.log_dir, newest - int(time.time()))
                return
            time.sleep(min(newest + 1 - time.time(), deadline - time.monotonic()) + 0.01)

    def _stop(self) -> None:
        self._stopped = True
        try:
            self._close_writer()
        except Exception:
            log.exception("%s: closing the TensorBoard event file failed", self.log_dir)

    def _close_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
