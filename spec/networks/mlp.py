"""The tutorials' MLPs: Flatten, Linear layers with ReLU (and optional Dropout); the MNIST one ends in log_softmax."""

from itertools import pairwise
from typing import Annotated

from pydantic import Field

from spec.networks.layers import FLOAT_BYTES, InputShape, NetworkSize, linear
from spec.params import Params

Width = Annotated[int, Field(ge=1, le=8192)]


class MLPParams(Params):
    hidden: list[Width] = Field(default=[512, 512], min_length=1, max_length=8)
    # Dropout after each hidden ReLU; 0 adds no layer, so the tutorial's state_dict keys are kept.
    dropout: float = Field(default=0.0, ge=0, lt=1)


class MnistMLPParams(Params):
    hidden: Width = 64


def mlp_size(p: MLPParams, s: InputShape) -> NetworkSize:
    widths = [s.features, *p.hidden]
    params = sum(linear(a, b) for a, b in pairwise(widths)) + linear(widths[-1], s.num_classes)
    # The input (first Linear) and each ReLU's output (the ReLU, then the next Linear or the Dropout);
    # a Dropout also keeps its noise, and its output for the next Linear.
    per_hidden = 3 if p.dropout > 0 else 1
    return NetworkSize(params, (s.features + per_hidden * sum(p.hidden)) * FLOAT_BYTES)


def mnist_mlp_size(p: MnistMLPParams, s: InputShape) -> NetworkSize:
    h = p.hidden
    params = linear(s.features, h) + 2 * linear(h, h) + linear(h, s.num_classes)
    # The input, three ReLU outputs, and the log-probabilities log_softmax keeps for its own backward.
    return NetworkSize(params, (s.features + 3 * h + s.num_classes) * FLOAT_BYTES)
