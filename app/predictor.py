"""Inference for finished jobs, pytorch/serve style: load once (LRU), preprocess -> inference -> postprocess.

The only app module that imports torch. Weights load through safetensors, never pickle.
"""

import io
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from safetensors.torch import load_file
from torch import nn
from torchvision.transforms.functional import to_tensor

from app.errors import BadImage, NotFound, PayloadTooLarge, UnsupportedMedia
from app.jobs import WEIGHT_FILES
from app.spec import JobSpec
from models import InputShape, build_model
from worker.datasets import DATASETS


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
            key = (job_id, path.stat().st_mtime_ns)
        except FileNotFoundError:
            raise NotFound(f"job {job_id} has no best weights file: its artifacts are gone") from None
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        network = build_model(spec.model.arch, spec.model_params, DATASETS[spec.dataset.name].shape)
        network.load_state_dict(load_file(path, device="cpu"))
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
        """Decode, convert to the dataset's channels and size, then ToTensor (uint8 / 255, C x H x W)."""
        image = self._decode(upload)
        image = image.convert("L" if shape.channels == 1 else "RGB")
        if image.size != (shape.width, shape.height):
            image = image.resize((shape.width, shape.height), Image.Resampling.BILINEAR)
        return to_tensor(image)

    def _decode(self, upload: Upload) -> Image.Image:
        name = upload.filename
        try:
            with warnings.catch_warnings():
                # Our own pixel limit below is stricter; Pillow's warning would only be noise.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(upload.data))
        except UnidentifiedImageError:
            raise UnsupportedMedia(
                f"file {name!r} is not an image Pillow can read: send PNG, JPEG, BMP, GIF, TIFF or WebP"
            ) from None
        except Image.DecompressionBombError:
            raise PayloadTooLarge(f"image {name!r} has too many pixels") from None
        width, height = image.size
        if width * height > self.max_pixels:
            raise PayloadTooLarge(
                f"image {name!r} is {width}x{height} pixels; at most {self.max_pixels} pixels are accepted"
            )
        try:
            image.load()
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise BadImage(f"image {name!r} is broken and cannot be decoded: {e}") from None
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
