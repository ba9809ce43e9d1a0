"""A dataset's store: every image decoded once, uint8 N x C x H x W per split, with int64 labels, class
names and per-channel statistics, in one safetensors file (no pickle). Written by the ingest, read by
training."""

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from spec.datasets import DatasetInfo, ImageShape

FORMAT = "taas-dataset/1"


class StoreError(Exception):
    """A store file that is not one of ours or is damaged."""


@dataclass(frozen=True)
class Store:
    train_images: torch.Tensor
    train_targets: torch.Tensor
    test_images: torch.Tensor
    test_targets: torch.Tensor
    info: DatasetInfo


def write_store(path: Path, *, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                classes: list[str], mean: np.ndarray, std: np.ndarray) -> int:
    """Write atomically (a temp file in the same folder, then a rename); returns the file's size."""
    tensors: dict[str, np.ndarray] = {
        "train_images": np.ascontiguousarray(train[0], dtype=np.uint8),
        "train_targets": np.ascontiguousarray(train[1], dtype=np.int64),
        "test_images": np.ascontiguousarray(test[0], dtype=np.uint8),
        "test_targets": np.ascontiguousarray(test[1], dtype=np.int64),
        "mean": np.asarray(mean, dtype=np.float64),
        "std": np.asarray(std, dtype=np.float64),
    }
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(name)
    try:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "classes": json.dumps(classes)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.stat().st_size


def read_store(path: Path) -> Store:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta: dict[str, Any] = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise StoreError(f"not a {FORMAT} file")
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
    except SafetensorError as e:
        raise StoreError(str(e)) from None
    images = tensors["train_images"]
    info = DatasetInfo(
        classes=json.loads(meta["classes"]),
        shape=ImageShape(channels=images.shape[1], height=images.shape[2], width=images.shape[3]),
        mean=tensors["mean"].tolist(), std=tensors["std"].tolist())
    return Store(images, tensors["train_targets"], tensors["test_images"], tensors["test_targets"], info)
