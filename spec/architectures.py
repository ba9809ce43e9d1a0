"""Architectures a JobSpec can name: typed params and what each network expects and returns.

The builders (torch) are in models/, keyed by the same names."""

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field

from spec.params import NoParams, Params

Width = Annotated[int, Field(ge=1, le=8192)]


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


class MLPParams(Params):
    hidden: list[Width] = Field(default=[512, 512], min_length=1, max_length=8)
    # Dropout after each hidden ReLU; 0 adds no layer, so the tutorial's state_dict keys are kept.
    dropout: float = Field(default=0.0, ge=0, lt=1)


class MnistMLPParams(Params):
    hidden: Width = 64


@dataclass(frozen=True)
class Architecture:
    name: str
    description: str
    params: type[Params]
    # What forward() returns: raw scores, or log-probabilities (which only the nll loss expects).
    output: Literal["logits", "log_probs"] = "logits"
    min_size: int = 1


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in [
        Architecture("mlp", "The Fashion-MNIST tutorial's MLP: Flatten, 784-512-512-10 with ReLU.", MLPParams),
        Architecture("mnist-mlp", "The MNIST tutorial's Net: 784-64-64-64-10 with ReLU and log_softmax.",
                     MnistMLPParams, output="log_probs"),
        Architecture("lenet5", "LeNet-5 style CNN: conv(6,5)-pool-conv(16,5)-pool-fc120-fc84-fc.",
                     NoParams, min_size=16),
        *[
            Architecture(n, f"torchvision {n}, random init, stem adapted to small images.", NoParams, min_size=8)
            for n in ("resnet18", "resnet34", "resnet50")
        ],
        *[
            Architecture(n, f"torchvision {n}, random init, max-pools dropped for small images.", NoParams,
                         min_size=8)
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
