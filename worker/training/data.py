"""Batches for the engine: decoded once into memory (fast path), or through a DataLoader.

Both paths yield the same batches in the same order with the same values as
`DataLoader(dataset, batch_size, shuffle, generator=g)` over a torchvision dataset with ToTensor, and
both consume `g` exactly as that DataLoader does, so either path can resume the other's checkpoint.
Augmentation and normalization happen after that, on the training device, to whole batches.
"""

from collections.abc import Iterator
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from spec.job import Augment
from worker.training.datasets import Source, Split, images_and_targets

Batch = tuple[torch.Tensor, torch.Tensor]


class Batches(Protocol):
    def __len__(self) -> int: ...

    def epoch(self) -> Iterator[Batch]:
        """One pass over the data, as (images float32 NCHW, int64 targets) on the device."""
        ...


class BatchTransform:
    """What a float batch in [0, 1] goes through on the device: augmentation (training batches only),
    then per-channel normalization. Vectorized over the batch: no per-sample Python or PIL work.

    The random draws come from `generator` (a CPU generator, checkpointed with the job), so a seed gives
    the same augmentations on every device and a resumed job continues them exactly."""

    def __init__(self, *, device: torch.device, augment: Augment | None = None,
                 generator: torch.Generator | None = None, mean: list[float] | None = None,
                 std: list[float] | None = None):
        if augment is not None and augment.active and generator is None:
            raise ValueError("augmentation needs a generator")
        self.augment = augment if augment is not None and augment.active else None
        self.generator = generator
        self.device = device
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.augment is not None:
            assert self.generator is not None
            if self.augment.random_crop is not None:
                x = random_crop(x, self.augment.random_crop.padding, self.generator)
            if self.augment.horizontal_flip:
                x = random_flip(x, self.generator)
        if self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std
        return x


def batch_transform(*, device: torch.device, augment: Augment | None = None,
                    generator: torch.Generator | None = None, mean: list[float] | None = None,
                    std: list[float] | None = None) -> BatchTransform | None:
    """The transform, or None when it would do nothing (plain ToTensor batches, as the tutorials train)."""
    if (augment is None or not augment.active) and mean is None:
        return None
    return BatchTransform(device=device, augment=augment, generator=generator, mean=mean, std=std)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """torchvision's RandomCrop(size, padding) for a whole batch: zero-pad, then each image its own offset."""
    n, c, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = (offsets[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (offsets[1, :, None] + torch.arange(w, device=x.device))[:, None, None, :]
    images = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[images, channels, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """RandomHorizontalFlip(p=0.5) for a whole batch."""
    flip = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _draw_base_seed(generator: torch.Generator) -> None:
    # A DataLoader iterator draws a base seed for its workers from the generator before sampling;
    # drawing it here too keeps the generator in step with the DataLoader path.
    torch.empty((), dtype=torch.int64).random_(generator=generator)


class TensorBatches:
    """The whole split as one uint8 tensor, on the device (resident) or in host memory; a batch is a slice
    or an index_select, moved to the device and scaled to [0, 1] there."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, *, batch_size: int, shuffle: bool,
                 generator: torch.Generator, device: torch.device, transform: BatchTransform | None = None,
                 resident: bool = True):
        self.resident = resident
        home = device if resident else torch.device("cpu")
        self.x = images.to(home)
        self.y = targets.to(home)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.device = device
        self.transform = transform

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def _ready(self, x: torch.Tensor, y: torch.Tensor) -> Batch:
        # ToTensor semantics: uint8 -> float32, then / 255 (the same two ops, so the same bits).
        x = x.to(self.device, non_blocking=True).to(torch.float32).div(255)
        if self.transform is not None:
            x = self.transform(x)
        return x, y.to(self.device, non_blocking=True)

    def epoch(self) -> Iterator[Batch]:
        n, bs = len(self.y), self.batch_size
        _draw_base_seed(self.generator)
        if not self.shuffle:
            for i in range(0, n, bs):
                yield self._ready(self.x[i:i + bs], self.y[i:i + bs])
            return
        perm = torch.randperm(n, generator=self.generator).to(self.x.device)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            yield self._ready(self.x.index_select(0, idx), self.y.index_select(0, idx))
        # RandomSampler draws a second (empty) permutation when it is exhausted; mirror it.
        torch.randperm(n, generator=self.generator)


class LoaderBatches:
    """A DataLoader over the torchvision dataset (per-sample PIL decode + ToTensor), moved to the device."""

    def __init__(self, dataset: torch.utils.data.Dataset, *, batch_size: int, shuffle: bool,
                 generator: torch.Generator, device: torch.device, num_workers: int = 0,
                 transform: BatchTransform | None = None):
        pin = device.type == "cuda"
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                 num_workers=num_workers, pin_memory=pin,
                                 persistent_workers=num_workers > 0)
        self.device = device
        self.transform = transform

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self) -> Iterator[Batch]:
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            yield (self.transform(x) if self.transform is not None else x), y.to(self.device, non_blocking=True)


Mode = Literal["auto", "memory", "loader"]


def decoded_bytes(source: Source) -> int:
    """Bytes of the decoded uint8 images, which the fast path keeps on the device."""
    images, _ = images_and_targets(source)
    return images.numel() * images.element_size()


def make_batches(source: Source, indices: torch.Tensor | None, *, batch_size: int, shuffle: bool,
                 generator: torch.Generator, device: torch.device, mode: Mode = "auto",
                 memory_budget_bytes: int = 4 << 30, num_workers: int = 0,
                 transform: BatchTransform | None = None) -> Batches:
    """Batches over `source` (restricted to `indices`), on the device when it fits the budget.

    Over budget (or mode "loader"), a torchvision dataset goes through a DataLoader; a decoded split stays
    in host memory and moves to the device batch by batch."""
    if mode == "auto":
        mode = "memory" if decoded_bytes(source) <= memory_budget_bytes else "loader"
    if mode == "memory" or isinstance(source, Split):
        images, targets = images_and_targets(source)
        if indices is not None:
            images, targets = images[indices], targets[indices]
        return TensorBatches(images, targets, batch_size=batch_size, shuffle=shuffle, generator=generator,
                             device=device, transform=transform, resident=mode == "memory")
    subset = source if indices is None else Subset(source, indices.tolist())
    return LoaderBatches(subset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                         device=device, num_workers=num_workers, transform=transform)
