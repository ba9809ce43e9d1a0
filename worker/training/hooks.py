"""How the engine reports to whoever runs it (the Celery task, a test, a benchmark). No I/O here."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LossChunk:
    """Consecutive per-batch losses of one epoch, handed over together (one device sync per chunk)."""

    first_step: int  # global step of losses[0]; steps count from 0 over the whole job
    epoch: int  # 1-based
    first_batch: int  # batch index of losses[0] within its epoch, from 0
    losses: list[float]
    times: list[float]  # unix seconds at which each batch's step finished on the host


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float  # mean of the epoch's per-batch losses
    test_loss: float  # the tutorial's test_loop: mean of per-batch mean losses
    test_accuracy: float  # fraction in [0, 1]
    val_loss: float | None
    val_accuracy: float | None
    lr: float  # learning rate at the end of the epoch
    seconds: float  # wall time of train + evaluation of this epoch


@dataclass(frozen=True)
class RunInfo:
    device: str
    epochs: int
    steps_per_epoch: int
    start_epoch: int  # 1 for a fresh run, k + 1 when resumed from the epoch-k checkpoint
    start_step: int
    # The metrics of the epochs the checkpoint covers (empty for a fresh run): a reporter whose record of
    # them was lost with the previous process can restore it.
    history: tuple[EpochMetrics, ...] = ()

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


class Hooks:
    """Override what you need. Called on the training thread: keep them cheap, hand I/O to a thread."""

    def on_start(self, info: RunInfo) -> None:
        """Before the first batch (after a resume was applied)."""

    def on_losses(self, chunk: LossChunk) -> None:
        """A chunk of per-batch losses, in step order, each step exactly once per run."""

    def staging_dir(self, job_dir: Path, epoch: int) -> Path | None:
        """Where fit() writes `epoch`'s files (best if improved, last, checkpoint): None, in job_dir itself; or an
        empty folder on job_dir's filesystem, whose files are then the hooks' to move into job_dir (a rename,
        worker.training.checkpoints.promote) or delete. The service's Reporter stages them so that only the holder of
        the job's lease commits them (a worker that lost the job to another writes nothing); a resume reads
        job_dir, which holds only what was committed."""
        return None

    def on_epoch(self, metrics: EpochMetrics, checkpoint_dir: Path) -> None:
        """After the epoch's weights (best/last) were written: in job_dir, before its resumable checkpoint is;
        staged (staging_dir), after the checkpoint too, in `checkpoint_dir`, the staging folder.

        If the process dies before the checkpoint lands, the resumed run replays this epoch and calls
        on_epoch for it again: record idempotently (the service's Reporter drops rows past the resume point)."""

    def should_stop(self) -> bool:
        """Polled every few batches; True ends the run after the current batch, without a checkpoint."""
        return False


class CombinedHooks(Hooks):
    """Several hooks as one, called in the given order; the first that stages an epoch's files owns them."""

    def __init__(self, *hooks: Hooks):
        self.hooks = hooks

    def on_start(self, info: RunInfo) -> None:
        for hook in self.hooks:
            hook.on_start(info)

    def on_losses(self, chunk: LossChunk) -> None:
        for hook in self.hooks:
            hook.on_losses(chunk)

    def staging_dir(self, job_dir: Path, epoch: int) -> Path | None:
        # One owner only: the staged files are the hooks' to move into place or delete, exactly once.
        return next((d for hook in self.hooks if (d := hook.staging_dir(job_dir, epoch)) is not None), None)

    def on_epoch(self, metrics: EpochMetrics, checkpoint_dir: Path) -> None:
        for hook in self.hooks:
            hook.on_epoch(metrics, checkpoint_dir)

    def should_stop(self) -> bool:
        return any(hook.should_stop() for hook in self.hooks)
