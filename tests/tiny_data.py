"""Tiny learnable datasets written in torchvision's own raw file format (IDX, as MNIST ships it)."""

import struct
from pathlib import Path

import numpy as np

FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def write_idx_images(path: Path, images: np.ndarray) -> None:
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes())


def make_images(n: int, seed: int, classes: int = 10, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Each class is a bright bar at its own position plus noise: easy to learn, not trivial."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 60, (n, size, size)).astype(np.int32)
    for i, c in enumerate(labels):
        row = 2 + int(c) * (size - 4) // classes
        images[i, row:row + 2, 4:size - 4] += 180
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def write_dataset(root: Path, folder: str, n_train: int = 512, n_test: int = 128, seed: int = 0) -> Path:
    """Writes <root>/<folder>/raw/* (folder: FashionMNIST or MNIST) and returns root."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for train, n in ((True, n_train), (False, n_test)):
        images, labels = make_images(n, seed + (0 if train else 1))
        img_name, lbl_name = FILES[train]
        write_idx_images(raw / img_name, images)
        write_idx_labels(raw / lbl_name, labels)
    return root
