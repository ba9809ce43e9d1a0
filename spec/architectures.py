"""The architectures a JobSpec can name: the one list from which the JobSpec's model field, the catalog, the job
budget (each entry's size) and models/ (its builders, keyed by these names, checked against them at import) all
derive. An entry cannot be added without its typed params and its size; tests/spec/test_budget.py builds every
entry with torch and checks the size against the real network."""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from spec.networks.layers import InputShape, NetworkSize
from spec.networks.lenet import lenet5_size
from spec.networks.mlp import MLPParams, MnistMLPParams, mlp_size, mnist_mlp_size
from spec.networks.resnet import resnet_size
from spec.networks.vgg import vgg_size
from spec.params import NoParams, Params


@dataclass(frozen=True)
class Architecture:
    name: str
    description: str
    params: type[Params]
    # Parameters and per-sample activations of the network models/ builds, from its params and input alone.
    size: Callable[[Any, InputShape], NetworkSize]
    # What forward() returns: raw scores, or log-probabilities (which only the nll loss expects).
    output: Literal["logits", "log_probs"] = "logits"
    min_size: int = 1


RESNET_BLOCKS = {"resnet18": ((2, 2, 2, 2), False), "resnet34": ((3, 4, 6, 3), False), "resnet50": ((3, 4, 6, 3), True)}

ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in [
        Architecture("mlp", "The Fashion-MNIST tutorial's MLP: Flatten, 784-512-512-10 with ReLU.", MLPParams,
                     mlp_size),
        Architecture("mnist-mlp", "The MNIST tutorial's Net: 784-64-64-64-10 with ReLU and log_softmax.",
                     MnistMLPParams, mnist_mlp_size, output="log_probs"),
        Architecture("lenet5", "LeNet-5 style CNN: conv(6,5)-pool-conv(16,5)-pool-fc120-fc84-fc.",
                     NoParams, lenet5_size, min_size=16),
        *[
            Architecture(n, f"torchvision {n}, random init, stem adapted to small images.", NoParams,
                         partial(resnet_size, *RESNET_BLOCKS[n]), min_size=8)
            for n in RESNET_BLOCKS
        ],
        *[
            Architecture(n, f"torchvision {n}, random init, max-pools dropped for small images.", NoParams,
                         partial(vgg_size, n == "vgg11_bn"), min_size=8)
            for n in ("vgg11", "vgg11_bn")
        ],
    ]
}


def misfit(arch: str, height: int, width: int) -> str | None:
    """Why `arch` cannot take images of this size, or None when it can."""
    entry = ARCHITECTURES[arch]
    if min(height, width) < entry.min_size:
        return (f"arch {arch!r} needs images of at least {entry.min_size} px a side; "
                f"these are {height}x{width}")
    return None


def network_size(arch: str, params: Params | dict[str, Any] | None, shape: InputShape) -> NetworkSize:
    """Parameters and per-sample activation bytes of models.build_model(arch, params, shape), without building it."""
    entry = ARCHITECTURES[arch]
    return entry.size(params if isinstance(params, Params) else entry.params.model_validate(params or {}), shape)
