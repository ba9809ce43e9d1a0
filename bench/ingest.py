"""Dataset ingest throughput: Fashion-MNIST exported to a zip of PNG class folders (as a user would upload
it), decoded into a store by the ingest (one process, as a worker runs it), against two baselines measured
in the same run: decoding alone (read each member, Pillow decode, nothing else), and what a user does by
hand (extract the zip, then one pass of torchvision's ImageFolder with ToTensor). Prints JSON.

    .venv/bin/python -m bench.ingest [--data ../shared/data] [--limit N]
"""

import argparse
import io
import json
import platform
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import datasets
from torchvision.transforms import ToTensor

from app.core.storage import ARCHIVE, STORE
from bench.engine_epoch import DEFAULT_DATA
from spec.datasets import IngestOptions
from tests.archives import fashion_export, zip_of
from worker.ingest.archives import Limits
from worker.ingest.decode import ingest
from worker.ingest.store import read_store

LIMITS = Limits(max_members=500_000, max_uncompressed_bytes=8 << 30, max_ratio=100, max_member_bytes=64 << 20)


def decode_alone(archive: Path) -> float:
    """Seconds to read and decode every member, keeping the pixels and nothing more."""
    started = time.perf_counter()
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            if not info.filename.endswith(".png"):
                continue
            image = Image.open(io.BytesIO(z.read(info)))
            image.load()
            np.asarray(image)
    return time.perf_counter() - started


def by_hand(archive: Path, work: Path) -> float:
    """Seconds to extract the zip and take one pass of ImageFolder + ToTensor over train/ and test/."""
    started = time.perf_counter()
    target = work / "extracted"
    with zipfile.ZipFile(archive) as z:
        z.extractall(target)
    for part in ("train", "test"):
        folder = datasets.ImageFolder(str(target / part), transform=ToTensor())
        for _ in torch.utils.data.DataLoader(folder, batch_size=256):
            pass
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, default=None, help="images per split (default: all 70,000)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="taas-bench-ingest-"))
    try:
        root = work / "data"
        shutil.copytree(args.data / "FashionMNIST", root / "FashionMNIST")
        started = time.perf_counter()
        files = fashion_export(root, limit=args.limit)
        folder = work / "dataset"
        folder.mkdir()
        (folder / ARCHIVE).write_bytes(zip_of(files))
        export_s = time.perf_counter() - started
        n = len(files) - 1  # and classes.txt

        started = time.perf_counter()
        result = ingest(folder / ARCHIVE, folder, options=IngestOptions(), limits=LIMITS, max_pixels=1 << 24,
                        max_store_bytes=8 << 30)
        ingest_s = time.perf_counter() - started
        store = read_store(folder / STORE)
        assert len(store.train_targets) + len(store.test_targets) == n

        decode_s = decode_alone(folder / ARCHIVE)
        by_hand_s = by_hand(folder / ARCHIVE, work)
        print(json.dumps({
            "benchmark": "ingest of Fashion-MNIST as a zip of 28x28 PNG class folders",
            "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()},
            "images": n,
            "archive_bytes": (folder / ARCHIVE).stat().st_size,
            "export_seconds": round(export_s, 2),
            "ingest": {"seconds": round(ingest_s, 2), "images_per_s": round(n / ingest_s),
                       "store_bytes": result.store_bytes, "classes": result.info.classes,
                       "splits": {k: v["images"] for k, v in result.splits.items()}},
            "baseline_decode_alone": {"seconds": round(decode_s, 2), "images_per_s": round(n / decode_s)},
            "baseline_extract_and_imagefolder": {"seconds": round(by_hand_s, 2), "images_per_s": round(n / by_hand_s)},
            "goal": "ingest >= 3000 images/s",
            "goal_met": n / ingest_s >= 3000,
        }, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
