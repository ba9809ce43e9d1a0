"""What a job costs in memory, from its spec and its dataset's shape alone (no torch): the network's parameter
count (exact: spec.networks follows models/ and torchvision layer by layer), the training state (weights, gradients,
optimizer buffers) and a batch's activations (as spec.networks.layers counts them)."""

from dataclasses import dataclass

from spec.architectures import network_size
from spec.datasets import DatasetInfo
from spec.job import JobSpec
from spec.networks.layers import FLOAT_BYTES
from spec.training import OPTIMIZERS


@dataclass(frozen=True)
class Footprint:
    """A training job's memory on its device: weights, gradients, optimizer state and a batch's activations."""

    params: int
    weight_bytes: int
    training_state_bytes: int  # weights + gradients + optimizer buffers
    activation_bytes: int  # batch_size x the network's activation bytes per sample

    @property
    def total_bytes(self) -> int:
        return self.training_state_bytes + self.activation_bytes


def job_footprint(spec: JobSpec, info: DatasetInfo) -> Footprint:
    """The memory `spec` needs to train on a dataset described by `info` (float32 throughout)."""
    size = network_size(spec.model.arch, spec.model_params, info.input_shape())
    weight_bytes = size.params * FLOAT_BYTES
    return Footprint(
        params=size.params,
        weight_bytes=weight_bytes,
        training_state_bytes=weight_bytes * (2 + OPTIMIZERS[spec.optimizer.name].buffers(spec.optimizer)),
        activation_bytes=spec.batch_size * size.activation_bytes_per_sample,
    )
