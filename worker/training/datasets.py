"""Training data for a dataset spec: a built-in torchvision dataset, or an uploaded dataset's store."""

from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import torch
from torchvision import datasets
from torchvision.datasets.utils import check_integrity
from torchvision.transforms import ToTensor

from app.core import storage
from spec.datasets import BUILTIN_DATASETS, DatasetInfo
from spec.job import DatasetSpec, UploadedDatasetSpec
from worker.ingest.store import StoreError, read_store

TORCHVISION: dict[str, type[datasets.MNIST]] = {"fashion-mnist": datasets.FashionMNIST, "mnist": datasets.MNIST}
if set(TORCHVISION) != set(BUILTIN_DATASETS):
    raise RuntimeError(f"torchvision classes {sorted(TORCHVISION)} do not match {sorted(BUILTIN_DATASETS)}")


class DatasetUnavailable(RuntimeError):
    """The dataset's files are not there (and downloading is not allowed): a message for the user."""


@dataclass(frozen=True)
class Split:
    """Decoded images, uint8 N x C x H x W, and their int64 class indices."""

    images: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.targets)


# A torchvision dataset (decoded lazily per sample on the DataLoader path) or an already decoded split.
Source: TypeAlias = Split | datasets.MNIST


@dataclass(frozen=True)
class TrainingData:
    train: Source
    test: Source
    info: DatasetInfo


def _archives_present(cls: type[datasets.MNIST], root: Path) -> bool:
    raw = root / cls.__name__ / "raw"
    return all(check_integrity(str(raw / Path(url).name), md5) for url, md5 in cls.resources)


def load_split(name: str, root: Path, *, train: bool, download: bool = False) -> datasets.MNIST:
    """The built-in torchvision dataset with ToTensor, i.e. uint8 / 255 (`.data` holds the decoded images)."""
    cls = TORCHVISION[name]
    # Archives that are already on disk with the right MD5 are only unpacked: no network involved.
    local = _archives_present(cls, root)
    try:
        return cls(str(root), train=train, download=download or local, transform=ToTensor())
    except RuntimeError as e:
        raise DatasetUnavailable(
            f"dataset {name!r} not found under {root} (expected {cls.__name__}/raw/ in torchvision's "
            "layout) and downloading is disabled (TAAS_DATA_DOWNLOAD=false)"
        ) from e


def load_data(spec: DatasetSpec, *, data_root: Path, datasets_dir: Path, download: bool = False) -> TrainingData:
    """The train and test splits the spec names, with what a job needs to know about them."""
    if isinstance(spec, UploadedDatasetSpec):
        path = storage.dataset_dir(datasets_dir, spec.id) / storage.STORE
        try:
            store = read_store(path)
        except FileNotFoundError:
            raise DatasetUnavailable(f"dataset {spec.id} has no decoded images at {path}: it was deleted, "
                                     "or the workers do not share the API's datasets folder") from None
        except StoreError as e:
            raise DatasetUnavailable(f"dataset {spec.id}'s store is unreadable ({e}): upload it again") from None
        return TrainingData(Split(store.train_images, store.train_targets),
                            Split(store.test_images, store.test_targets), store.info)
    return TrainingData(load_split(spec.name, data_root, train=True, download=download),
                        load_split(spec.name, data_root, train=False, download=download),
                        BUILTIN_DATASETS[spec.name].info)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Seeded train/validation split of range(n), each part in ascending order; own RNG, global untouched."""
    n_val = int(round(n * val_fraction))
    if n_val == 0:
        return torch.arange(n), None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def images_and_targets(source: Source) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded uint8 images (N, C, H, W) and int64 targets."""
    if isinstance(source, Split):
        return source.images, source.targets
    data = source.data
    if data.dim() == 3:
        data = data.unsqueeze(1)
    return data, source.targets.long()
