"""From a JobSpec to a trained state_dict: build everything from the registries, then fit."""

import random
from pathlib import Path
from typing import Literal, cast

import numpy as np
import torch

from app.core.config import Settings
from models import build_model
from spec.job import JobSpec
from spec.training import SCHEDULERS
from worker.training.data import Mode, batch_transform, make_batches
from worker.training.datasets import load_data, split_indices
from worker.training.engine import FitResult, Reporting, Training, fit
from worker.training.hooks import Hooks
from worker.training.optim import LOSS_BUILDERS, OPTIMIZER_BUILDERS, SCHEDULER_BUILDERS


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


# The augmentation RNG's seed is offset from the job's, so it never mirrors the shuffle RNG's stream.
AUGMENT_SEED_OFFSET = 0x5EED


def build_training(spec: JobSpec, *, data_root: Path, datasets_dir: Path, download: bool = False,
                   mode: Mode = "auto", memory_budget_bytes: int = 4 << 30, num_workers: int = 0) -> Training:
    """Datasets, network, loss, optimizer and scheduler for `spec`, seeded as the tutorials seed."""
    data = load_data(spec.dataset, data_root=data_root, datasets_dir=datasets_dir, download=download)
    device = pick_device(spec.device)

    # The tutorials call torch.manual_seed(s) right before building the network: same seed, same weights.
    seed_everything(spec.seed)
    model = build_model(spec.model.arch, spec.model_params, data.info.input_shape()).to(device)
    optimizer = OPTIMIZER_BUILDERS[spec.optimizer.name](model.parameters(), spec.optimizer)
    loss_fn = LOSS_BUILDERS[spec.loss.name](spec.loss)

    generator = torch.Generator().manual_seed(spec.seed)
    options = spec.dataset
    augment_generator = None
    if options.augment.active:
        augment_generator = torch.Generator().manual_seed(spec.seed + AUGMENT_SEED_OFFSET)
    mean, std = (data.info.mean, data.info.std) if options.normalize else (None, None)
    train_transform = batch_transform(device=device, augment=options.augment, generator=augment_generator,
                                      mean=mean, std=std)
    eval_transform = batch_transform(device=device, mean=mean, std=std)

    train_idx, val_idx = split_indices(len(data.train), options.val_fraction, spec.seed)
    common = dict(device=device, mode=mode, memory_budget_bytes=memory_budget_bytes, num_workers=num_workers)
    train = make_batches(data.train, None if val_idx is None else train_idx, batch_size=spec.batch_size,
                         shuffle=spec.shuffle, generator=generator, transform=train_transform,
                         **common)  # type: ignore[arg-type]
    # Evaluation never shuffles nor augments; its own generator keeps the training RNG streams untouched.
    val = None if val_idx is None else make_batches(
        data.train, val_idx, batch_size=spec.batch_size, shuffle=False, generator=torch.Generator(),
        transform=eval_transform, **common)  # type: ignore[arg-type]
    test = make_batches(data.test, None, batch_size=spec.batch_size, shuffle=False,
                        generator=torch.Generator(), transform=eval_transform, **common)  # type: ignore[arg-type]

    scheduler, interval = None, cast(Literal["epoch", "batch"], "epoch")
    if spec.scheduler is not None:
        scheduler = SCHEDULER_BUILDERS[spec.scheduler.name](optimizer, spec.scheduler, spec.epochs, len(train))
        interval = SCHEDULERS[spec.scheduler.name].interval
    return Training(model=model, optimizer=optimizer, loss_fn=loss_fn, train=train, test=test,
                    device=device, generator=generator, augment_generator=augment_generator, val=val,
                    scheduler=scheduler, scheduler_interval=interval)


def run_job(spec: JobSpec, job_dir: Path, *, settings: Settings, hooks: Hooks | None = None) -> FitResult:
    """Train `spec` into job_dir (checkpoint.pt, best/last.safetensors), resuming if a checkpoint exists."""
    training = build_training(
        spec, data_root=settings.data_path, datasets_dir=settings.datasets_path, download=settings.data_download,
        mode=settings.data_mode, memory_budget_bytes=settings.data_memory_budget_mb << 20,
        num_workers=settings.data_num_workers)
    reporting = Reporting(settings.loss_flush_batches, settings.loss_flush_seconds, settings.stop_check_batches)
    return fit(training, epochs=spec.epochs, job_dir=job_dir, hooks=hooks, reporting=reporting)
