"""A job's best network exported for other runtimes: ONNX (onnxruntime, Triton, TensorRT) and TorchScript
(torch.jit.load, LibTorch). Both take what the "input" tensor of the v2 protocol takes, float32 pixels
N x C x H x W scaled as ToTensor scales them, apply the job's normalization, and give class probabilities
N x K: on the same images their outputs equal POST /predict's.

Produced once per job, on first request, into the job's artifacts folder (removed with the job); a file
is written under a temporary name and renamed, so a reader never sees half of one.
"""

import copy
import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from app.core import storage
from app.core.errors import Conflict
from app.serving.predictor import Model

log = logging.getLogger(__name__)

ExportFormat = Literal["onnx", "torchscript"]
_lock = threading.Lock()


class Served(nn.Module):
    """normalize (when the job does) -> network -> softmax, as the predictor runs them."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, network: nn.Module, mean: list[float] | None, std: list[float] | None):
        super().__init__()
        self.network = network
        self.normalize = mean is not None and std is not None
        self.register_buffer("mean", torch.tensor(mean or [0.0]).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std or [1.0]).view(-1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            pixels = (pixels - self.mean) / self.std
        return torch.softmax(self.network(pixels).float(), dim=1)


def served_module(model: Model) -> Served:
    # A copy: the served network keeps answering requests on the inference thread meanwhile.
    network = copy.deepcopy(model.network).eval()
    info = model.info
    return Served(network, info.mean if model.normalize else None, info.std if model.normalize else None).eval()


def export_path(artifacts: Path, job_id: str, fmt: ExportFormat) -> Path:
    return storage.job_dir(artifacts, job_id) / storage.EXPORT_FILES[fmt]


def ensure_export(model: Model, fmt: ExportFormat, artifacts: Path) -> Path:
    """The export's path, producing it first if this job has none yet."""
    path = export_path(artifacts, model.job_id, fmt)
    if path.exists():
        return path
    with _lock:  # one export at a time per process: each is CPU-heavy and they would only race
        if path.exists():
            return path
        module = served_module(model)
        example = torch.rand(2, *model.input_shape)
        fd, scratch = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            with warnings.catch_warnings():
                # torch.jit is deprecated in favour of torch.export, yet TorchScript is what LibTorch and
                # older deployments load; the warning is about our choice, not the user's input.
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", FutureWarning)
                warnings.filterwarnings("ignore", module=r"torch\.")
                try:
                    _write(module, example, fmt, scratch)
                except Exception as e:  # the exporter cannot express some layer of this network
                    log.warning("job %s: %s export failed: %s", model.job_id, fmt, e)
                    raise Conflict(f"job {model.job_id}'s network could not be exported to {fmt}: "
                                   f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
            os.replace(scratch, path)
        finally:
            Path(scratch).unlink(missing_ok=True)
    return path


def _write(module: Served, example: torch.Tensor, fmt: ExportFormat, path: str) -> None:
    if fmt == "onnx":
        torch.onnx.export(module, (example,), path, input_names=["input"], output_names=["probabilities"],
                          dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes={"pixels": {0: torch.export.Dim("batch")}})
    else:
        with torch.inference_mode():
            torch.jit.save(torch.jit.trace(module, example), path)
