"""Resumable checkpoints and safetensors weights, written atomically; loading never unpickles objects."""

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from app.core.storage import BEST, CHECKPOINT, LAST

# The checkpoint goes last: a commit cut short never leaves a checkpoint claiming an epoch whose weights
# did not land (a resume from the older one replays that epoch and writes them).
PROMOTE_ORDER = (BEST, LAST, CHECKPOINT)


def _atomic(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)  # readers see the old file or the new one, never half of one


def save_weights(model: nn.Module, path: Path) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    _atomic(path, lambda p: save_file(tensors, str(p)))


def rng_state(generator: torch.Generator, device: torch.device,
              augment: torch.Generator | None = None) -> dict[str, Any]:
    """Every RNG the run touches, as tensors and plain values (loadable with weights_only=True)."""
    version, mt, gauss = random.getstate()
    np_state: tuple[Any, ...] = tuple(np.random.get_state())
    return {
        "augment": augment.get_state() if augment is not None else None,
        "torch": torch.get_rng_state(),
        # Only the training device's: get_rng_state_all() would open a CUDA context on every GPU.
        "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else [],
        "shuffle": generator.get_state(),
        "python": [version, list(mt), gauss],
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1]).astype(np.int64)),
                  *[float(v) if isinstance(v, float) else int(v) for v in np_state[2:]]],
    }


def restore_rng(state: dict[str, Any], generator: torch.Generator, device: torch.device,
                augment: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    # Checkpoints written before augmentation existed have no "augment" entry (and no augmentation).
    if augment is not None and state.get("augment") is not None:
        augment.set_state(state["augment"])
    if state["cuda"] and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"][0], device)
    generator.set_state(state["shuffle"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    _atomic(path, lambda p: torch.save(state, p))


def load_checkpoint(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def promote(staged: Path, job_dir: Path) -> list[str]:
    """Move an epoch's staged files into job_dir, each atomically (same filesystem); returns the names moved.

    Files already moved are skipped, so a commit retried after a database error finishes the job."""
    job_dir.mkdir(parents=True, exist_ok=True)
    moved = []
    for name in PROMOTE_ORDER:
        try:
            os.replace(staged / name, job_dir / name)
        except FileNotFoundError:
            continue
        moved.append(name)
    return moved


def discard(folder: Path) -> None:
    """Delete staged files that must not land (ours, once the lease is lost; a dead worker's)."""
    shutil.rmtree(folder, ignore_errors=True)
