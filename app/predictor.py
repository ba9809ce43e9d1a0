"""Inference for finished jobs, pytorch/serve style: load once (LRU), preprocess -> inference -> postprocess.

The only app module that imports torch. Weights load through safetensors, never pickle.
"""

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from app import images, storage
from app.errors import BadImage, Conflict, NotFound, PayloadTooLarge, UnsupportedMedia
from models import build_model
from spec.datasets import DatasetInfo
from spec.job import JobSpec

log = logging.getLogger(__name__)

REJECTIONS = {"not_image": UnsupportedMedia, "broken": BadImage, "too_large": PayloadTooLarge}


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

    def predict(self, *, job_id: str, spec: JobSpec, info: DatasetInfo, uploads: list[Upload]) -> list[Prediction]:
        """Class probabilities for each upload, with the network and preprocessing of the job."""
        batch = torch.stack([self.preprocess(u, info) for u in uploads])
        if spec.dataset.normalize:
            mean = torch.tensor(info.mean).view(-1, 1, 1)
            std = torch.tensor(info.std).view(-1, 1, 1)
            batch = (batch - mean) / std
        network = self.load(job_id=job_id, spec=spec, info=info)
        probabilities = self.inference(network, batch)
        return self.postprocess(uploads, probabilities, info.classes)

    def load(self, *, job_id: str, spec: JobSpec, info: DatasetInfo) -> nn.Module:
        """The job's network with its best weights, in eval mode, built once per weights file."""
        path = storage.job_dir(self.artifacts, job_id) / storage.BEST
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
        network = build_model(spec.model.arch, spec.model_params, info.input_shape())
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

    def preprocess(self, upload: Upload, info: DatasetInfo) -> torch.Tensor:
        """Decode and conform the image as the dataset's images were (app.images), then ToTensor's
        uint8 / 255, C x H x W."""
        try:
            decoded = images.decode(upload.data, name=upload.filename, max_pixels=self.max_pixels)
        except images.ImageRejected as e:
            raise REJECTIONS[e.reason](e.detail) from None
        shape = info.shape
        pixels = images.conform(decoded.image, channels=shape.channels, height=shape.height, width=shape.width)
        return torch.from_numpy(pixels).to(torch.float32).div(255)

    @torch.inference_mode()
    def inference(self, network: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities: softmax turns logits and log-probabilities alike into probabilities."""
        return torch.softmax(network(batch).float(), dim=1)

    def postprocess(
        self, uploads: list[Upload], probabilities: torch.Tensor, classes: list[str]
    ) -> list[Prediction]:
        indices = probabilities.argmax(dim=1).tolist()
        return [
            Prediction(u.filename, i, classes[i], p)
            for u, i, p in zip(uploads, indices, probabilities.tolist(), strict=True)
        ]
