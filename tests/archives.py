"""Archives for dataset tests, built in memory: images, class folders and CSVs in zip and tar form, and the
hostile kinds (zip slip, links, bombs)."""

import io
import tarfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from tests.tiny_data import make_images


def png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    """8-bit (16-bit when pixels are uint16) PNG."""
    out = io.BytesIO()
    if pixels.dtype != np.uint16:
        pixels = pixels.astype(np.uint8)
    Image.fromarray(pixels, mode=mode).save(out, format="PNG")
    return out.getvalue()


def jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def zip_of(files: Mapping[str, bytes], *, compression: int = zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out.getvalue()


def tar_of(files: Mapping[str, bytes], *, mode: str = "w") -> bytes:
    """mode "w" (plain), "w:gz", "w:bz2" or "w:xz"."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as t:  # type: ignore[call-overload]
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


def tar_with(entries: Iterable[tarfile.TarInfo], files: Mapping[str, bytes] | None = None) -> bytes:
    """A plain tar with these raw entries (links, devices...) plus regular files."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as t:
        for name, data in (files or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for entry in entries:
            t.addfile(entry)
    return out.getvalue()


def bars(n: int, seed: int, classes: int = 3, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """tests.tiny_data's learnable images (a bright bar per class) and their labels."""
    images, labels = make_images(n, seed, classes=classes, size=size)
    return images, labels.astype(np.int64)


def class_folders(images: np.ndarray, labels: np.ndarray, classes: list[str], prefix: str = "",
                  encode=png) -> dict[str, bytes]:
    """{prefix<class>/<index>.png: image}, numbered in order."""
    return {f"{prefix}{classes[int(y)]}/{i:05d}.png": encode(x) for i, (x, y) in enumerate(zip(images, labels,
                                                                                              strict=True))}


def csv_layout(images: np.ndarray, labels: np.ndarray, classes: list[str] | None, *, csv_name: str = "labels.csv",
               folder: str = "images", header: bool = False) -> dict[str, bytes]:
    """A CSV of file,label (class names, or indices when classes is None) and the images in `folder`."""
    files: dict[str, bytes] = {}
    rows = ["file,label"] if header else []
    for i, (x, y) in enumerate(zip(images, labels, strict=True)):
        name = f"{i:05d}.png"
        files[f"{folder}/{name}" if folder else name] = png(x)
        rows.append(f"{name},{classes[int(y)] if classes is not None else int(y)}")
    files[csv_name] = ("\n".join(rows) + "\n").encode()
    return files


SHAPES = ["circle", "cross", "square", "triangle"]


def shapes(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """RGB images (n, size, size, 3) of one coloured shape each on a dark, noisy background; the label is
    the shape (SHAPES), whatever its colour, size and position."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(SHAPES), n)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        image = Image.fromarray(rng.integers(0, 40, (size, size, 3)).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        r = int(rng.integers(size // 5, size // 3))
        cx, cy = (int(v) for v in rng.integers(r + 1, size - r - 1, 2))
        colour = tuple(int(v) for v in rng.integers(100, 256, 3))
        kind = SHAPES[label]
        if kind == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        elif kind == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
        elif kind == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
        else:
            w = max(r // 3, 1)
            draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
            draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
        out[i] = np.asarray(image)
    return out, labels.astype(np.int64)


def fashion_export(data_root: Path, *, limit: int | None = None) -> dict[str, bytes]:
    """The Fashion-MNIST files under data_root as PNG class folders (bench.fashion_png), in memory."""
    from bench.fashion_png import fashion_pngs

    return dict(fashion_pngs(data_root, limit=limit))
