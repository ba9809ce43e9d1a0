"""From a JobSpec to a trained state_dict: build everything from the registries, then fit."""

import random
from pathlib import Path
from typing import Literal, cast

import numpy as np
import torch

from app.config import Settings
from app.spec import JobSpec
from models import build_model
from worker.data import Mode, make_batches
from worker.datasets import DATASETS, load_split, split_indices
from worker.engine import FitResult, Reporting, Training, fit
from worker.hooks import Hooks
from worker.optim import LOSSES, OPTIMIZERS, SCHEDULERS


def pick_device(requested: str) -> torch.device:
    """The spec's device, or cuda -> mps -> cpu as the tutorials pick it."""
    if requested != "auto":
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {requested!r} requested but CUDA is not available on this worker")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError("device 'mps' requested but MPS is not available on this worker")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def build_training(spec: JobSpec, *, data_root: Path, download: bool = False, mode: Mode = "auto",
                   memory_budget_bytes: int = 4 << 30, num_workers: int = 0) -> Training:
    """Datasets, network, loss, optimizer and scheduler for `spec`, seeded as the tutorials seed."""
    entry = DATASETS[spec.dataset.name]
    train_ds = load_split(spec.dataset.name, data_root, train=True, download=download)
    test_ds = load_split(spec.dataset.name, data_root, train=False, download=download)
    device = pick_device(spec.device)

    # The tutorials call torch.manual_seed(s) right before building the network: same seed, same weights.
    seed_everything(spec.seed)
    model = build_model(spec.model.arch, spec.model_params, entry.shape).to(device)
    optimizer = OPTIMIZERS[spec.optimizer.name].build(model.parameters(), spec.optimizer)
    loss_fn = LOSSES[spec.loss.name].build(spec.loss)

    generator = torch.Generator().manual_seed(spec.seed)
    train_idx, val_idx = split_indices(len(train_ds), spec.dataset.val_fraction, spec.seed)
    common = dict(device=device, mode=mode, memory_budget_bytes=memory_budget_bytes, num_workers=num_workers)
    train = make_batches(train_ds, None if val_idx is None else train_idx, batch_size=spec.batch_size,
                         shuffle=spec.shuffle, generator=generator, **common)  # type: ignore[arg-type]
    # Evaluation never shuffles; its own generator keeps the training RNG streams untouched.
    val = None if val_idx is None else make_batches(
        train_ds, val_idx, batch_size=spec.batch_size, shuffle=False, generator=torch.Generator(),
        **common)  # type: ignore[arg-type]
    test = make_batches(test_ds, None, batch_size=spec.batch_size, shuffle=False,
                        generator=torch.Generator(), **common)  # type: ignore[arg-type]

    scheduler, interval = None, cast(Literal["epoch", "batch"], "epoch")
    if spec.scheduler is not None:
        sched_entry = SCHEDULERS[spec.scheduler.name]
        scheduler = sched_entry.build(optimizer, spec.scheduler, spec.epochs, len(train))
        interval = sched_entry.interval
    return Training(model=model, optimizer=optimizer, loss_fn=loss_fn, train=train, test=test,
                    device=device, generator=generator, val=val, scheduler=scheduler,
                    scheduler_interval=interval, config=spec.model_dump(mode="json"))


def run_job(spec: JobSpec, job_dir: Path, *, settings: Settings, hooks: Hooks | None = None) -> FitResult:
    """Train `spec` into job_dir (checkpoint.pt, best/last.safetensors), resuming if a checkpoint exists."""
    training = build_training(
        spec, data_root=settings.data_path, download=settings.data_download, mode=settings.data_mode,
        memory_budget_bytes=settings.data_memory_budget_mb << 20, num_workers=settings.data_num_workers)
    reporting = Reporting(settings.loss_flush_batches, settings.loss_flush_seconds, settings.stop_check_batches)
    return fit(training, epochs=spec.epochs, job_dir=job_dir, hooks=hooks, reporting=reporting)
