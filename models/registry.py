"""Architecture builders, keyed by the names of spec.architectures: params + input shape -> network."""

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from models.lenet import LeNet5
from models.mlp import Net, NeuralNetwork
from models.vision import resnet, vgg
from spec.architectures import ARCHITECTURES, RESNET_BLOCKS
from spec.networks.layers import InputShape
from spec.networks.mlp import MLPParams, MnistMLPParams
from spec.params import NoParams, Params


def _mlp(p: MLPParams, s: InputShape) -> nn.Module:
    return NeuralNetwork(s.features, list(p.hidden), s.num_classes, p.dropout)


def _mnist_mlp(p: MnistMLPParams, s: InputShape) -> nn.Module:
    return Net(s.features, p.hidden, s.num_classes)


def _lenet5(_: NoParams, s: InputShape) -> nn.Module:
    return LeNet5(s.channels, s.height, s.width, s.num_classes)


def _torchvision(family: Callable[..., nn.Module], name: str, _: NoParams, s: InputShape) -> nn.Module:
    return family(name, s.channels, s.height, s.width, s.num_classes)


BUILDERS: dict[str, Callable[[Any, InputShape], nn.Module]] = {
    "mlp": _mlp,
    "mnist-mlp": _mnist_mlp,
    "lenet5": _lenet5,
    **{n: partial(_torchvision, resnet, n) for n in RESNET_BLOCKS},
    **{n: partial(_torchvision, vgg, n) for n in ("vgg11", "vgg11_bn")},
}
if set(BUILDERS) != set(ARCHITECTURES):
    raise RuntimeError(f"builders {sorted(BUILDERS)} do not match spec.architectures {sorted(ARCHITECTURES)}")


def build_model(arch: str, params: Params | dict[str, Any] | None, shape: InputShape) -> nn.Module:
    """Build a network for data of `shape`; params are validated against the architecture's model."""
    p = params if isinstance(params, Params) else ARCHITECTURES[arch].params.model_validate(params or {})
    return BUILDERS[arch](p, shape)
