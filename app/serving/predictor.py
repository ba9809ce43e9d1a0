"""Inference for finished jobs, pytorch/serve style: load once, preprocess -> inference -> postprocess, in
batches that may join several requests (app.serving.batching).

The only app module that imports torch. Weights load through safetensors, never pickle.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from app.core import images, storage
from app.core.errors import BadImage, Conflict, DomainError, InvalidSpec, NotFound, PayloadTooLarge, UnsupportedMedia
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


@dataclass(frozen=True, eq=False)
class Model:
    """A job's network with its best weights, in eval mode, and what its inputs must look like."""

    job_id: str
    network: nn.Module
    info: DatasetInfo
    normalize: bool
    weights_mtime_ns: int
    weight_bytes: int = 0  # of its parameters and buffers in memory

    @property
    def input_shape(self) -> tuple[int, int, int]:
        shape = self.info.shape
        return shape.channels, shape.height, shape.width

    @property
    def classes(self) -> list[str]:
        return self.info.classes


@dataclass(frozen=True, eq=False)
class Work:
    """One request's share of a batch: encoded images, or float32 pixels N x C x H x W already scaled as
    ToTensor scales them (0..1), not yet normalized."""

    model: Model
    uploads: list[Upload] | None = None
    pixels: np.ndarray | None = None

    @property
    def size(self) -> int:
        return len(self.uploads) if self.uploads is not None else len(self.pixels if self.pixels is not None else ())


class Predictor:
    """Loads networks and runs batches of Work; `run` is called from one thread at a time per batcher."""

    def __init__(self, *, artifacts: Path, max_pixels: int, max_request_pixels: int | None = None,
                 threads: int = 0):
        self.artifacts = artifacts
        self.max_pixels = max_pixels
        self.max_request_pixels = max_request_pixels if max_request_pixels is not None else max_pixels
        if threads > 0:
            torch.set_num_threads(threads)

    def weights_mtime(self, job_id: str) -> int:
        """The best weights file's modification time; NotFound when it is gone."""
        try:
            return (storage.job_dir(self.artifacts, job_id) / storage.BEST).stat().st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"job {job_id} has no best weights file: its artifacts are gone") from None

    def load(self, *, job_id: str, spec: JobSpec, info: DatasetInfo) -> Model:
        """Build the job's network with its best weights."""
        path = storage.job_dir(self.artifacts, job_id) / storage.BEST
        try:
            # Read through one open file, its mtime from that file: a file replaced meanwhile cannot mix the two.
            with path.open("rb") as file:
                mtime = os.fstat(file.fileno()).st_mtime_ns
                data = file.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
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
        return Model(job_id=job_id, network=network, info=info, normalize=spec.dataset.normalize,
                     weights_mtime_ns=mtime, weight_bytes=len(data))

    def run(self, batch: list[Work]) -> list[np.ndarray | DomainError]:
        """Class probabilities (float32, n x K) for each Work, or the error that refuses it (a bad image
        refuses its own request, not the others of the batch). Works of one model go through the network
        together."""
        results: list[np.ndarray | DomainError] = [InvalidSpec("not run")] * len(batch)
        by_model: dict[int, list[int]] = {}
        for i, work in enumerate(batch):
            by_model.setdefault(id(work.model), []).append(i)
        for indices in by_model.values():
            model = batch[indices[0]].model
            inputs, sizes, kept = [], [], []
            for i in indices:
                try:
                    pixels = self.pixels(batch[i], model)
                except DomainError as e:
                    results[i] = e
                    continue
                inputs.append(pixels)
                sizes.append(len(pixels))
                kept.append(i)
            if not kept:
                continue
            probabilities = self.inference(model, torch.cat(inputs) if len(inputs) > 1 else inputs[0]).numpy()
            start = 0
            for i, size in zip(kept, sizes, strict=True):
                results[i] = probabilities[start:start + size]
                start += size
        return results

    def pixels(self, work: Work, model: Model) -> torch.Tensor:
        if work.pixels is not None:
            return torch.from_numpy(work.pixels)
        assert work.uploads is not None
        # The decoding work of one request is bounded, not only its bytes: small files of blank pixels
        # compress a thousandfold (64 all-zero 4096 x 4096 PNGs are 3 MB and took 15 s to decode).
        counts = [images.header_pixels(u.data) for u in work.uploads]
        total = sum(counts)
        # (An image over the per-image limit is refused by its own decode, with its own size in the message.)
        if total > self.max_request_pixels and max(counts) <= self.max_pixels:
            raise PayloadTooLarge(
                f"the images of this request have {total:,} pixels in all; at most {self.max_request_pixels:,} "
                "are decoded per request (TAAS_PREDICT_MAX_REQUEST_PIXELS): send fewer or smaller images")
        return torch.stack([self.preprocess(u, model.info) for u in work.uploads])

    def preprocess(self, upload: Upload, info: DatasetInfo) -> torch.Tensor:
        """Decode and conform the image as the dataset's images were (app.core.images), then ToTensor's
        uint8 / 255, C x H x W."""
        try:
            decoded = images.decode(upload.data, name=upload.filename, max_pixels=self.max_pixels)
        except images.ImageRejected as e:
            raise REJECTIONS[e.reason](e.detail) from None
        shape = info.shape
        pixels = images.conform(decoded.image, channels=shape.channels, height=shape.height, width=shape.width)
        return torch.from_numpy(pixels).to(torch.float32).div_(255)

    @torch.inference_mode()
    def inference(self, model: Model, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities: softmax turns logits and log-probabilities alike into probabilities."""
        if model.normalize:
            mean = torch.tensor(model.info.mean).view(-1, 1, 1)
            std = torch.tensor(model.info.std).view(-1, 1, 1)
            batch = (batch - mean) / std
        return torch.softmax(model.network(batch).float(), dim=1)


def postprocess(uploads: list[Upload], probabilities: np.ndarray, classes: list[str]) -> list[Prediction]:
    indices = probabilities.argmax(axis=1).tolist()
    return [
        Prediction(u.filename, i, classes[i], p)
        for u, i, p in zip(uploads, indices, probabilities.tolist(), strict=True)
    ]
