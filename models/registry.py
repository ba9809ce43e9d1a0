"""Architecture registry: name -> typed params + builder. Input shape and classes come from the dataset."""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from torch import nn

from models.lenet import LeNet5
from models.mlp import MLPParams, MnistMLPParams, Net, NeuralNetwork
from models.params import NoParams, Params
from models.vision import resnet, vgg


@dataclass(frozen=True)
class InputShape:
    """What a dataset feeds a network: channels x height x width images in num_classes classes."""

    channels: int
    height: int
    width: int
    num_classes: int

    @property
    def features(self) -> int:
        return self.channels * self.height * self.width


@dataclass(frozen=True)
class Architecture:
    name: str
    description: str
    params: type[Params]
    build: Callable[[Any, InputShape], nn.Module]
    # What forward() returns: raw scores, or log-probabilities (which only the nll loss expects).
    output: Literal["logits", "log_probs"] = "logits"
    min_size: int = 1


def _mlp(p: MLPParams, s: InputShape) -> nn.Module:
    return NeuralNetwork(s.features, list(p.hidden), s.num_classes, p.dropout)


def _mnist_mlp(p: MnistMLPParams, s: InputShape) -> nn.Module:
    return Net(s.features, p.hidden, s.num_classes)


def _lenet5(_: NoParams, s: InputShape) -> nn.Module:
    return LeNet5(s.channels, s.height, s.width, s.num_classes)


def _torchvision(family: Callable[..., nn.Module], name: str, _: NoParams, s: InputShape) -> nn.Module:
    return family(name, s.channels, s.height, s.width, s.num_classes)


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in [
        Architecture("mlp", "The Fashion-MNIST tutorial's MLP: Flatten, 784-512-512-10 with ReLU.",
                     MLPParams, _mlp),
        Architecture("mnist-mlp", "The MNIST tutorial's Net: 784-64-64-64-10 with ReLU and log_softmax.",
                     MnistMLPParams, _mnist_mlp, output="log_probs"),
        Architecture("lenet5", "LeNet-5 style CNN: conv(6,5)-pool-conv(16,5)-pool-fc120-fc84-fc.",
                     NoParams, _lenet5, min_size=16),
        *[
            Architecture(n, f"torchvision {n}, random init, stem adapted to small images.",
                         NoParams, partial(_torchvision, resnet, n), min_size=8)
            for n in ("resnet18", "resnet34", "resnet50")
        ],
        *[
            Architecture(n, f"torchvision {n}, random init, max-pools dropped for small images.",
                         NoParams, partial(_torchvision, vgg, n), min_size=8)
            for n in ("vgg11", "vgg11_bn")
        ],
    ]
}


def build_model(arch: str, params: Params | dict[str, Any] | None, shape: InputShape) -> nn.Module:
    """Build a network for data of `shape`; params are validated against the architecture's model."""
    entry = ARCHITECTURES[arch]
    p = params if isinstance(params, Params) else entry.params.model_validate(params or {})
    return entry.build(p, shape)
