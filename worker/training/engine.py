"""The training engine: fit over train_one_epoch and evaluate, in the tutorials' order of operations.

Plain functions that take objects, return metrics and report through Hooks; they print nothing.
"""

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from app.core.storage import BEST, CHECKPOINT, LAST
from worker.training.checkpoints import (
    load_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
    save_weights,
)
from worker.training.data import Batches
from worker.training.hooks import EpochMetrics, Hooks, LossChunk, RunInfo
from worker.training.optim import LossFn, Scheduler


@dataclass
class Training:
    """Everything fit() needs, already built (see worker.training.build.build_training)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    train: Batches
    test: Batches
    device: torch.device
    generator: torch.Generator  # the shuffle RNG, saved in checkpoints
    augment_generator: torch.Generator | None = None  # the augmentation RNG, saved in checkpoints too
    val: Batches | None = None
    scheduler: Scheduler | None = None
    scheduler_interval: Literal["epoch", "batch"] = "epoch"


@dataclass(frozen=True)
class Reporting:
    """How often losses are handed over and the stop flag is polled."""

    flush_batches: int = 64
    flush_seconds: float = 0.2
    stop_check_batches: int = 8


@dataclass
class EpochResult:
    mean_loss: float
    batches: int
    stopped: bool


@dataclass(frozen=True)
class FitResult:
    status: Literal["completed", "stopped"]
    history: list[EpochMetrics]
    best_epoch: int | None
    best_loss: float | None
    steps: int
    device: str

    def _last(self, name: str) -> float | None:
        return getattr(self.history[-1], name) if self.history else None

    @property
    def test_loss(self) -> float | None:
        return self._last("test_loss")

    @property
    def test_accuracy(self) -> float | None:
        return self._last("test_accuracy")

    @property
    def val_loss(self) -> float | None:
        return self._last("val_loss")

    @property
    def val_accuracy(self) -> float | None:
        return self._last("val_accuracy")


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite: the run cannot recover, so it ends with a readable reason."""


class _LossBuffer:
    """Per-batch losses kept on the device and handed over in chunks: one sync per chunk, not per batch."""

    def __init__(self, epoch: int, first_step: int, hooks: Hooks, device: torch.device, r: Reporting):
        self.values = torch.empty(r.flush_batches, device=device)
        self.times: list[float] = []
        self.epoch, self.next_step, self.next_batch = epoch, first_step, 0
        self.hooks, self.r = hooks, r
        self.total, self.count = 0.0, 0
        self.flushed_at = time.monotonic()

    def add(self, loss: torch.Tensor) -> None:
        self.values[len(self.times)] = loss.detach()
        self.times.append(time.time())
        if len(self.times) == self.r.flush_batches or time.monotonic() - self.flushed_at >= self.r.flush_seconds:
            self.flush()

    def flush(self) -> None:
        n = len(self.times)
        self.flushed_at = time.monotonic()
        if n == 0:
            return
        losses = self.values[:n].tolist()  # the CPU-GPU sync point, once per chunk
        for i, value in enumerate(losses):
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"training diverged: the loss became {value} at step {self.next_step + i} "
                    f"(epoch {self.epoch}, batch {self.next_batch + i}); try a lower learning rate")
        self.hooks.on_losses(LossChunk(self.next_step, self.epoch, self.next_batch, losses, self.times))
        self.total += sum(losses)
        self.count += n
        self.next_step += n
        self.next_batch += n
        self.times = []


def train_one_epoch(model: nn.Module, batches: Batches, loss_fn: LossFn, optimizer: torch.optim.Optimizer,
                    *, epoch: int, first_step: int, device: torch.device, hooks: Hooks | None = None,
                    scheduler: Scheduler | None = None, reporting: Reporting = Reporting()) -> EpochResult:
    """One pass over the training batches; `scheduler` here is a per-batch one (e.g. onecycle)."""
    hooks = hooks or Hooks()
    buffer = _LossBuffer(epoch, first_step, hooks, device, reporting)
    model.train()
    stopped = False
    for batch, (X, y) in enumerate(batches.epoch()):
        pred = model(X)
        loss = loss_fn(pred, y)

        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if scheduler is not None:
            scheduler.step()

        buffer.add(loss)
        # Counted in global steps, so that epochs shorter than stop_check_batches still poll.
        if (first_step + batch + 1) % reporting.stop_check_batches == 0 and hooks.should_stop():
            stopped = True
            break
    buffer.flush()
    return EpochResult(buffer.total / max(buffer.count, 1), buffer.count, stopped)


def evaluate(model: nn.Module, batches: Batches, loss_fn: LossFn) -> tuple[float, float]:
    """(average of per-batch mean losses, accuracy as a fraction), as the tutorial's test_loop."""
    model.eval()
    # Accumulated on the device (float64 like the tutorial's Python float; MPS has no float64): one sync.
    acc_dtype = torch.float32 if next(model.parameters()).device.type == "mps" else torch.float64
    total: torch.Tensor | float = 0.0
    correct: torch.Tensor | int = 0
    n_batches = size = 0
    with torch.no_grad():
        for X, y in batches.epoch():
            pred = model(X)
            total = total + loss_fn(pred, y).to(acc_dtype)
            correct = correct + (pred.argmax(1) == y).sum()
            n_batches += 1
            size += len(y)
    if n_batches == 0:
        raise ValueError("nothing to evaluate: the split is empty")
    loss = float(total) / n_batches
    if not math.isfinite(loss):
        raise TrainingDiverged(f"training diverged: the evaluation loss is {loss}; try a lower learning rate")
    return loss, int(correct) / size


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def fit(t: Training, *, epochs: int, job_dir: Path, hooks: Hooks | None = None,
        reporting: Reporting = Reporting()) -> FitResult:
    """Train for `epochs`, resuming from job_dir's checkpoint if there is one; checkpoint every epoch."""
    hooks = hooks or Hooks()
    job_dir.mkdir(parents=True, exist_ok=True)
    start_epoch, step, best_epoch, best_loss, history = 1, 0, None, None, []
    ckpt_path = job_dir / CHECKPOINT
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        t.model.load_state_dict(ckpt["model"])
        t.optimizer.load_state_dict(ckpt["optimizer"])
        if t.scheduler is not None and ckpt["scheduler"] is not None:
            t.scheduler.load_state_dict(ckpt["scheduler"])
        restore_rng(ckpt["rng"], t.generator, t.device, t.augment_generator)
        start_epoch, step = ckpt["epoch"] + 1, ckpt["step"]
        best_epoch, best_loss = ckpt["best_epoch"], ckpt["best_loss"]
        history = [EpochMetrics(**m) for m in json.loads(ckpt["history"])]

    hooks.on_start(RunInfo(str(t.device), epochs, len(t.train), start_epoch, step, tuple(history)))
    batch_scheduler = t.scheduler if t.scheduler_interval == "batch" else None
    for epoch in range(start_epoch, epochs + 1):
        started = time.perf_counter()
        r = train_one_epoch(t.model, t.train, t.loss_fn, t.optimizer, epoch=epoch, first_step=step,
                            device=t.device, hooks=hooks, scheduler=batch_scheduler, reporting=reporting)
        step += r.batches
        if r.stopped:
            return FitResult("stopped", history, best_epoch, best_loss, step, str(t.device))
        val_loss, val_acc = evaluate(t.model, t.val, t.loss_fn) if t.val is not None else (None, None)
        test_loss, test_acc = evaluate(t.model, t.test, t.loss_fn)
        lr = _lr(t.optimizer)
        if t.scheduler is not None and t.scheduler_interval == "epoch":
            t.scheduler.step()
        metrics = EpochMetrics(epoch, r.mean_loss, test_loss, test_acc, val_loss, val_acc, lr,
                               time.perf_counter() - started)
        history.append(metrics)

        # The best state_dict by validation loss, else by test loss (no validation split).
        watched = val_loss if val_loss is not None else test_loss
        improved = best_loss is None or watched < best_loss
        if improved:
            best_epoch, best_loss = epoch, watched
        _save_epoch(t, metrics, _checkpoint(t, epoch, step, best_epoch, best_loss, history), improved=improved,
                    job_dir=job_dir, hooks=hooks)
    return FitResult("completed", history, best_epoch, best_loss, step, str(t.device))


def _save_epoch(t: Training, metrics: EpochMetrics, state: dict[str, Any], *, improved: bool, job_dir: Path,
                hooks: Hooks) -> None:
    """Write the epoch's weights (best only if it improved) and checkpoint, and report the epoch."""
    files = hooks.staging_dir(job_dir, metrics.epoch) or job_dir
    if improved:
        save_weights(t.model, files / BEST)
    save_weights(t.model, files / LAST)
    if files == job_dir:
        # Report before the checkpoint: a crash in between replays this epoch (the reporter upserts),
        # whereas the other order could lose the epoch's metrics for good.
        hooks.on_epoch(metrics, job_dir)
        save_checkpoint(job_dir / CHECKPOINT, state)
    else:
        # Staged: nothing is in place until the hooks commit the three files with the epoch's metrics.
        save_checkpoint(files / CHECKPOINT, state)
        hooks.on_epoch(metrics, files)


def _checkpoint(t: Training, epoch: int, step: int, best_epoch: int | None, best_loss: float | None,
                history: list[EpochMetrics]) -> dict[str, Any]:
    """The resumable state after `epoch` (tensors and plain values only: loadable with weights_only)."""
    return {
        "model": t.model.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict() if t.scheduler is not None else None,
        "epoch": epoch,
        "step": step,
        "rng": rng_state(t.generator, t.device, t.augment_generator),
        "best_epoch": best_epoch,
        "best_loss": best_loss,
        "history": json.dumps([asdict(m) for m in history]),
    }
