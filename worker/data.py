"""Batches for the engine: decoded once into device memory (fast path), or through a DataLoader.

Both paths yield the same batches in the same order with the same values as
`DataLoader(dataset, batch_size, shuffle, generator=g)` over a torchvision dataset with ToTensor, and
both consume `g` exactly as that DataLoader does, so either path can resume the other's checkpoint.
"""

from collections.abc import Iterator
from typing import Literal, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from worker.datasets import images_and_targets

Batch = tuple[torch.Tensor, torch.Tensor]


class Batches(Protocol):
    def __len__(self) -> int: ...

    def epoch(self) -> Iterator[Batch]:
        """One pass over the data, as (images float32 NCHW in [0, 1], int64 targets) on the device."""
        ...


def _draw_base_seed(generator: torch.Generator) -> None:
    # A DataLoader iterator draws a base seed for its workers from the generator before sampling;
    # drawing it here too keeps the generator in step with the DataLoader path.
    torch.empty((), dtype=torch.int64).random_(generator=generator)


class TensorBatches:
    """The whole split as one float tensor on the device; a batch is a slice or an index_select."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, *, batch_size: int, shuffle: bool,
                 generator: torch.Generator, device: torch.device):
        # ToTensor semantics: uint8 -> float32, then / 255 (the same two ops, so the same bits).
        self.x = images.to(device).to(torch.float32).div(255)
        self.y = targets.to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def epoch(self) -> Iterator[Batch]:
        n, bs = len(self.y), self.batch_size
        _draw_base_seed(self.generator)
        if not self.shuffle:
            for i in range(0, n, bs):
                yield self.x[i:i + bs], self.y[i:i + bs]
            return
        perm = torch.randperm(n, generator=self.generator).to(self.x.device)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            yield self.x.index_select(0, idx), self.y.index_select(0, idx)
        # RandomSampler draws a second (empty) permutation when it is exhausted; mirror it.
        torch.randperm(n, generator=self.generator)


class LoaderBatches:
    """A DataLoader over the torchvision dataset (per-sample PIL decode + ToTensor), moved to the device."""

    def __init__(self, dataset: Dataset, *, batch_size: int, shuffle: bool, generator: torch.Generator,
                 device: torch.device, num_workers: int = 0):
        pin = device.type == "cuda"
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                 num_workers=num_workers, pin_memory=pin,
                                 persistent_workers=num_workers > 0)
        self.device = device

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self) -> Iterator[Batch]:
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


Mode = Literal["auto", "memory", "loader"]


def decoded_bytes(dataset: Dataset) -> int:
    images, _ = images_and_targets(dataset)
    return images.numel() * 4


def make_batches(dataset: Dataset, indices: torch.Tensor | None, *, batch_size: int, shuffle: bool,
                 generator: torch.Generator, device: torch.device, mode: Mode = "auto",
                 memory_budget_bytes: int = 4 << 30, num_workers: int = 0) -> Batches:
    """Batches over `dataset` (restricted to `indices`), in memory when it fits the budget."""
    if mode == "auto":
        mode = "memory" if decoded_bytes(dataset) <= memory_budget_bytes else "loader"
    if mode == "memory":
        images, targets = images_and_targets(dataset)
        if indices is not None:
            images, targets = images[indices], targets[indices]
        return TensorBatches(images, targets, batch_size=batch_size, shuffle=shuffle,
                             generator=generator, device=device)
    subset = dataset if indices is None else Subset(dataset, indices.tolist())
    return LoaderBatches(subset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                         device=device, num_workers=num_workers)
