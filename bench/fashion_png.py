"""Fashion-MNIST exported as a user would hold it: PNG class folders named after the classes, in a zip.

    .venv/bin/python -m bench.fashion_png --data .taas/data -o .taas/fashion-png.zip [--limit N]

writes train/<class>/<index>.png and test/<class>/<index>.png (all 70,000 images, or the first N of each
split) and classes.txt (the class order of the original labels): the archive of the README's own-data
walk-through, of the ingest benchmark and of tests/test_own_data.py.
"""

import argparse
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from spec.datasets import FASHION_CLASSES
from worker.training.datasets import load_split


def fashion_pngs(data_root: Path, *, limit: int | None = None) -> Iterator[tuple[str, bytes]]:
    """(path in the archive, bytes): classes.txt (the dataset's class order: label i is its i-th line), then
    each image as a PNG, train split first, numbered in the original files' order."""
    yield "classes.txt", "".join(f"{name}\n" for name in FASHION_CLASSES).encode()
    for part in ("train", "test"):
        split = load_split("fashion-mnist", data_root, train=part == "train")
        n = len(split) if limit is None else min(limit, len(split))
        for i, (image, label) in enumerate(zip(split.data[:n].numpy(), split.targets[:n].tolist(), strict=True)):
            out = io.BytesIO()
            Image.fromarray(image).save(out, format="PNG")
            yield f"{part}/{FASHION_CLASSES[label]}/{i:05d}.png", out.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True, help="a data root holding FashionMNIST/raw/")
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=None, help="images per split (default: all)")
    args = ap.parse_args()
    count = 0
    with zipfile.ZipFile(args.output, "w") as z:
        for name, data in fashion_pngs(args.data, limit=args.limit):
            z.writestr(name, data)
            count += name.endswith(".png")
    print(f"{args.output}: {count} PNG images in class folders, and classes.txt")


if __name__ == "__main__":
    main()
