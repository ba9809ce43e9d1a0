"""Dataset registry: torchvision datasets by name, their classes, and the seeded validation split."""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.datasets.utils import check_integrity
from torchvision.transforms import ToTensor

from models import InputShape


class DatasetUnavailable(RuntimeError):
    """The dataset's files are not under the data root and downloading is not allowed."""


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    description: str
    cls: type[datasets.MNIST]
    shape: InputShape
    classes: tuple[str, ...]


FASHION_CLASSES = ("T-Shirt", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle Boot")

DATASETS: dict[str, DatasetEntry] = {
    d.name: d
    for d in [
        DatasetEntry("fashion-mnist", "Zalando Fashion-MNIST: 60,000 + 10,000 28x28 grayscale images.",
                     datasets.FashionMNIST, InputShape(1, 28, 28, 10), FASHION_CLASSES),
        DatasetEntry("mnist", "MNIST handwritten digits: 60,000 + 10,000 28x28 grayscale images.",
                     datasets.MNIST, InputShape(1, 28, 28, 10), tuple(str(i) for i in range(10))),
    ]
}


def _archives_present(cls: type[datasets.MNIST], root: Path) -> bool:
    raw = root / cls.__name__ / "raw"
    return all(check_integrity(str(raw / Path(url).name), md5) for url, md5 in cls.resources)


def load_split(name: str, root: Path, *, train: bool, download: bool = False) -> datasets.MNIST:
    """The torchvision dataset with ToTensor, i.e. uint8 / 255 (its `.data` holds the decoded images)."""
    cls = DATASETS[name].cls
    # Archives that are already on disk with the right MD5 are only unpacked: no network involved.
    local = _archives_present(cls, root)
    try:
        return cls(str(root), train=train, download=download or local, transform=ToTensor())
    except RuntimeError as e:
        raise DatasetUnavailable(
            f"dataset {name!r} not found under {root} (expected {cls.__name__}/raw/ in torchvision's "
            "layout) and downloading is disabled (TAAS_DATA_DOWNLOAD=false)"
        ) from e


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Seeded train/validation split of range(n), each part in ascending order; own RNG, global untouched."""
    n_val = int(round(n * val_fraction))
    if n_val == 0:
        return torch.arange(n), None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def images_and_targets(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded uint8 images (N, C, H, W) and int64 targets, straight from torchvision's tensors."""
    assert isinstance(ds, datasets.MNIST)
    data = ds.data
    if data.dim() == 3:
        data = data.unsqueeze(1)
    return data, ds.targets.long()
