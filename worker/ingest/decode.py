"""The ingest: an uploaded archive becomes a dataset store. Every image is decoded once (as /predict decodes,
app.core.images), converted to the dataset's channels and size, and kept as uint8 N x C x H x W with its label.

Plain functions over a folder; the Celery task (worker.training.task) records the outcome. Any failure raises
IngestFailed with a reason a person can act on, and leaves no store and no scratch file behind.
"""

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.core import images
from app.core.config import Settings
from app.core.storage import STORE
from spec.datasets import MAX_SIDE, DatasetInfo, ImageShape, IngestOptions
from worker.ingest.archives import Archive, ArchiveRejected, Limits, open_archive
from worker.ingest.layouts import Item, Labelled, Layout, SkipLog, check_every_class, find_layout, store_order
from worker.ingest.store import write_store

MIN_STD = 1 / 255
# Scratch files (a compressed tar, decompressed) start with this; a new attempt removes a dead one's.
SCRATCH_PREFIX = ".archive."
PROGRESS_SECONDS = 0.5
STATS_CHUNK = 4096


class IngestFailed(Exception):
    """Why the archive did not become a dataset, in words for the person who uploaded it."""


class IngestStopped(Exception):
    """The progress callback asked to stop (the dataset was deleted, or another worker took it over)."""


@dataclass(frozen=True)
class IngestResult:
    layout: Layout
    info: DatasetInfo
    splits: dict[str, dict[str, Any]]
    skipped: list[dict[str, object]]
    store_bytes: int


# (images decoded, images in all) -> keep going?
Progress = Callable[[int, int], bool]


def ingest(archive_path: Path, folder: Path, *, options: IngestOptions, limits: Limits, max_pixels: int,
           max_store_bytes: int, progress: Progress | None = None) -> IngestResult:
    """Decode the archive into folder/STORE; raises IngestFailed (nothing written) when it cannot, and
    IngestStopped when `progress` says to stop."""
    # Named for this run: a worker that lost its lease meanwhile cannot truncate or remove another's.
    scratch = folder / f"{SCRATCH_PREFIX}{uuid.uuid4().hex}.tar"
    try:
        with open_archive(archive_path, limits=limits, scratch=scratch) as archive:
            skipped = SkipLog()
            labelled = find_layout(archive.members, archive.read, skipped)
            train, test = labelled.train, labelled.test
            if test is None:
                train, test = stratified_split(train, len(labelled.classes), options.test_fraction, options.seed,
                                               labelled.classes)
            decoder = _Decoder(archive, options, skipped, max_pixels=max_pixels, max_store_bytes=max_store_bytes,
                               total=len(train) + len(test), progress=progress)
            train_x, train_items = decoder.decode(train)
            test_x, test_items = decoder.decode(test)
    except ArchiveRejected as e:
        raise IngestFailed(str(e)) from None
    finally:
        scratch.unlink(missing_ok=True)
    try:
        check_every_class(labelled.classes, train_items, "train")
        check_every_class(labelled.classes, test_items, "test")
    except ArchiveRejected as e:
        raise IngestFailed(f"{e}, once the skipped files were left out") from None
    train_x, test_x = decoder.finish(train_x, test_x)
    if progress is not None and not progress(decoder.done, decoder.total):
        raise IngestStopped()  # the lease is gone: leave the store to the worker that holds it
    mean, std = channel_stats(train_x)
    train_y = np.array([i.label for i in train_items], dtype=np.int64)
    test_y = np.array([i.label for i in test_items], dtype=np.int64)
    store_bytes = write_store(folder / STORE, train=(train_x, train_y), test=(test_x, test_y),
                              classes=labelled.classes, mean=mean, std=std)
    shape = ImageShape(channels=train_x.shape[1], height=train_x.shape[2], width=train_x.shape[3])
    info = DatasetInfo(classes=labelled.classes, shape=shape, mean=mean.tolist(), std=std.tolist())
    return IngestResult(labelled.layout, info, {"train": _split_summary(labelled, train_y),
                                                 "test": _split_summary(labelled, test_y)},
                        skipped.as_json(), store_bytes)


def stratified_split(items: list[Item], n_classes: int, fraction: float, seed: int,
                     classes: list[str]) -> tuple[list[Item], list[Item]]:
    """Hold out `fraction` of each class (at least one image, and at least one left to train on), seeded."""
    rng = np.random.default_rng(seed)
    by_class: list[list[Item]] = [[] for _ in range(n_classes)]
    for item in items:
        by_class[item.label].append(item)
    train: list[Item] = []
    test: list[Item] = []
    for label, members in enumerate(by_class):
        if len(members) < 2:
            raise IngestFailed(f"class {classes[label]!r} has {len(members)} image(s): a train/test split needs at "
                               "least 2 per class (or give the archive a test/ part)")
        n_test = min(max(round(len(members) * fraction), 1), len(members) - 1)
        held = set(rng.permutation(len(members))[:n_test].tolist())
        for i, item in enumerate(members):
            (test if i in held else train).append(item)
    return sorted(train, key=store_order), sorted(test, key=store_order)


def channel_stats(images_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 N x C x H x W images scaled to [0, 1] (float64, in chunks)."""
    n, c = images_u8.shape[:2]
    total = np.zeros(c)
    squares = np.zeros(c)
    for start in range(0, n, STATS_CHUNK):
        chunk = images_u8[start:start + STATS_CHUNK].astype(np.float64) / 255
        total += chunk.sum(axis=(0, 2, 3))
        squares += np.square(chunk).sum(axis=(0, 2, 3))
    count = n * images_u8.shape[2] * images_u8.shape[3]
    mean = total / count
    # At least one intensity step: a constant channel must not make normalization divide by zero.
    std = np.maximum(np.sqrt(np.maximum(squares / count - mean**2, 0)), MIN_STD)
    return mean, std


def _split_summary(labelled: Labelled, labels: np.ndarray) -> dict[str, Any]:
    counts = np.bincount(labels, minlength=len(labelled.classes))
    return {"images": int(len(labels)), "per_class": dict(zip(labelled.classes, counts.tolist(), strict=True))}


class _Decoder:
    """Decodes items into one preallocated uint8 array per split, learning the size and channels from the
    first images when the options leave them open (a colour image turns a grayscale dataset into RGB)."""

    def __init__(self, archive: Archive, options: IngestOptions, skipped: SkipLog, *, max_pixels: int,
                 max_store_bytes: int, total: int, progress: Progress | None):
        self.archive, self.options, self.skipped = archive, options, skipped
        self.max_pixels, self.max_store_bytes, self.total = max_pixels, max_store_bytes, total
        self.progress = progress
        self.size: tuple[int, int] | None = options.image_size
        self.channels = options.channels or 1
        self.done = 0
        self.reported_at = time.monotonic()
        if self.size is not None:
            self._check_store_size()

    def _check_store_size(self) -> None:
        assert self.size is not None
        need = self.total * self.channels * self.size[0] * self.size[1]
        if need > self.max_store_bytes:
            raise IngestFailed(f"decoded, these {self.total} images of {self.channels}x{self.size[0]}x{self.size[1]}"
                               f" would take {need} bytes; at most {self.max_store_bytes} are kept "
                               "(TAAS_DATASET_MAX_STORE_BYTES): upload again with a smaller image_size")

    def decode(self, items: list[Item]) -> tuple[np.ndarray, list[Item]]:
        out: np.ndarray | None = None
        kept: list[Item] = []
        for item in items:
            pixels = self._decode_one(item)
            self._tick()
            if pixels is None:
                continue
            if out is None or out.shape[1] != self.channels:
                out = self._widen(out, len(items), len(kept))
            out[len(kept)] = pixels
            kept.append(item)
        if out is None:
            out = np.empty((0, self.channels, *(self.size or (1, 1))), dtype=np.uint8)
        return out[:len(kept)], kept

    def _widen(self, out: np.ndarray | None, n: int, filled: int) -> np.ndarray:
        assert self.size is not None
        new = np.empty((n, self.channels, *self.size), dtype=np.uint8)
        if out is not None:
            new[:filled] = out[:filled]  # gray -> RGB repeats the channel, as convert("RGB") does
        return new

    def finish(self, train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both splits with the dataset's final channel count (a split decoded before the first colour
        image was seen is widened)."""
        if self.channels == 3:
            train, test = (np.repeat(a, 3, axis=1) if a.shape[1] == 1 else a for a in (train, test))
        return train, test

    def _decode_one(self, item: Item) -> np.ndarray | None:
        path = item.member.path
        try:
            decoded = images.decode(self.archive.read(item.member), name=path, max_pixels=self.max_pixels)
        except images.ImageRejected as e:
            reason = {"not_image": "not an image Pillow can read", "broken": "broken image",
                      "too_large": f"more than {self.max_pixels} pixels"}[e.reason]
            self._invalid(reason, path, e.detail)
            return None
        width, height = decoded.image.size
        if self.size is None:
            if max(height, width) > MAX_SIDE:
                raise IngestFailed(f"the images are {height}x{width} pixels (height x width, e.g. {path!r}); sides "
                                   f"of at most {MAX_SIDE} are stored: upload again with image_size to resize them")
            self.size = (height, width)
            self._check_store_size()
        elif (height, width) != self.size and self.options.image_size is None:
            self._invalid(
                "size differs from the dataset's", path,
                f"image {path!r} is {height}x{width} but the dataset's images are {self.size[0]}x{self.size[1]} "
                "(height x width): upload again with image_size to resize them all")
            return None
        if self.options.channels is None and not decoded.gray and self.channels == 1:
            self.channels = 3
            self._check_store_size()
        return images.conform(decoded.image, channels=self.channels, height=self.size[0], width=self.size[1])

    def _invalid(self, reason: str, path: str, detail: str) -> None:
        if not self.options.skip_invalid:
            raise IngestFailed(f"{detail}; remove it, or upload again with skip_invalid=true to skip such files")
        self.skipped.add(reason, path)
        return None

    def _tick(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.progress is not None and (now - self.reported_at >= PROGRESS_SECONDS or self.done == self.total):
            self.reported_at = now
            if not self.progress(self.done, self.total):
                raise IngestStopped()


def limits_of(settings: Settings) -> Limits:
    """The archive limits from the settings."""
    return Limits(max_members=settings.dataset_max_members,
                  max_uncompressed_bytes=settings.dataset_max_uncompressed_bytes,
                  max_ratio=settings.dataset_max_compression_ratio,
                  max_member_bytes=settings.dataset_max_member_bytes)

