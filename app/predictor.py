"""Inference for finished jobs, pytorch/serve style: load once (LRU), preprocess -> inference -> postprocess.

The only app module that imports torch. Weights load through safetensors, never pickle.
"""

import io
import logging
import os
import struct
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn
from torchvision.transforms.functional import to_tensor

from app.errors import BadImage, Conflict, NotFound, PayloadTooLarge, UnsupportedMedia
from app.jobs import WEIGHT_FILES
from app.spec import JobSpec
from models import InputShape, build_model
from worker.datasets import DATASETS

log = logging.getLogger(__name__)

# What Pillow raises for a damaged file in a format it did recognise, from open() to convert().
# (UnidentifiedImageError, "not an image at all", is an OSError too: it is caught before these.)
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)
# Integer grayscale modes whose samples are 16-bit: convert("L") would clip them at 255, not scale them.
WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


@dataclass(frozen=True)
class Prediction:
    filename: str
    class_index: int
    label: str
    probabilities: list[float]


class Predictor:
    """Caches the networks of the last `cache_size` jobs used; safe to call from many threads."""

    def __init__(self, *, artifacts: Path, cache_size: int, max_pixels: int):
        self.artifacts = artifacts
        self.cache_size = cache_size
        self.max_pixels = max_pixels
        self._cache: OrderedDict[tuple[str, int], nn.Module] = OrderedDict()
        self._lock = threading.Lock()

    def predict(self, *, job_id: str, spec: JobSpec, uploads: list[Upload]) -> list[Prediction]:
        dataset = DATASETS[spec.dataset.name]
        batch = torch.stack([self.preprocess(u, dataset.shape) for u in uploads])
        network = self.load(job_id=job_id, spec=spec)
        probabilities = self.inference(network, batch)
        return self.postprocess(uploads, probabilities, dataset.classes)

    def load(self, *, job_id: str, spec: JobSpec) -> nn.Module:
        """The job's network with its best weights, in eval mode, built once per weights file."""
        path = self.artifacts / job_id / WEIGHT_FILES["best"]
        try:
            # Keyed and read through one open file: a file deleted or replaced meanwhile cannot mix the two.
            with path.open("rb") as file:
                key = (job_id, os.fstat(file.fileno()).st_mtime_ns)
                with self._lock:
                    if key in self._cache:
                        self._cache.move_to_end(key)
                        return self._cache[key]
                data = file.read()
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"job {job_id} has no best weights file: its artifacts are gone") from None
        network = build_model(spec.model.arch, spec.model_params, DATASETS[spec.dataset.name].shape)
        try:
            network.load_state_dict(load_safetensors(data))
        except (SafetensorError, RuntimeError) as e:
            log.warning("weights of job %s do not load into %s: %s", job_id, spec.model.arch, e)
            raise Conflict(
                f"job {job_id}'s weights do not match the job's architecture ({spec.model.arch!r} with its "
                "params): the file holds other layers or shapes, or is damaged; train the job again"
            ) from None
        network.eval()
        with self._lock:
            self._cache[key] = network
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return network

    def evict(self, job_id: str) -> None:
        with self._lock:
            for key in [k for k in self._cache if k[0] == job_id]:
                del self._cache[key]

    def preprocess(self, upload: Upload, shape: InputShape) -> torch.Tensor:
        """Decode, turn upright (EXIF), scale 16-bit to 8-bit, put transparency on black, then convert
        to the dataset's channels and size and apply ToTensor (uint8 / 255, C x H x W)."""
        name = upload.filename
        try:
            with warnings.catch_warnings():
                # Our pixel limit is stricter than Pillow's bomb warning, and its warnings about damaged
                # metadata only repeat what the decode outcome says anyway.
                warnings.filterwarnings("ignore", module=r"PIL\.")
                image = self._open(upload)
                image.load()
                image = ImageOps.exif_transpose(image)
                image = _onto_black(_to_8bit(image))
                image = image.convert("L" if shape.channels == 1 else "RGB")
                if image.size != (shape.width, shape.height):
                    image = image.resize((shape.width, shape.height), Image.Resampling.BILINEAR)
        except UnidentifiedImageError:
            raise UnsupportedMedia(
                f"file {name!r} is not an image Pillow can read: send PNG, JPEG, BMP, GIF, TIFF or WebP"
            ) from None
        except Image.DecompressionBombError:
            raise PayloadTooLarge(f"image {name!r} has too many pixels") from None
        except DECODE_ERRORS as e:
            raise BadImage(f"image {name!r} is broken and cannot be decoded: {e}") from None
        return to_tensor(image)

    def _open(self, upload: Upload) -> Image.Image:
        """Read the header only, and refuse too many pixels before any are decoded."""
        image = Image.open(io.BytesIO(upload.data))
        width, height = image.size
        if width * height > self.max_pixels:
            raise PayloadTooLarge(f"image {upload.filename!r} is {width}x{height} pixels; at most "
                                  f"{self.max_pixels} pixels are accepted")
        return image

    @torch.inference_mode()
    def inference(self, network: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities: softmax turns logits and log-probabilities alike into probabilities."""
        return torch.softmax(network(batch).float(), dim=1)

    def postprocess(
        self, uploads: list[Upload], probabilities: torch.Tensor, classes: tuple[str, ...]
    ) -> list[Prediction]:
        indices = probabilities.argmax(dim=1).tolist()
        return [
            Prediction(u.filename, i, classes[i], p)
            for u, i, p in zip(uploads, indices, probabilities.tolist(), strict=True)
        ]


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit grayscale scaled to 0-255 (v / 257, so 257 * v comes back as v); others as they are.

    Mode "I" is read as 16-bit samples too: that is how Pillow opens 16-bit PNG and TIFF files."""
    if image.mode not in WIDE_GRAY_MODES:
        return image
    samples = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(samples / 257), 0, 255).astype(np.uint8))


def _onto_black(image: Image.Image) -> Image.Image:
    """Transparent pixels composited on black, the datasets' background (convert() would drop the
    alpha and show whatever colour the transparent pixels hold)."""
    if not image.has_transparency_data:
        return image
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
