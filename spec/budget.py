"""What a job costs in memory, from its spec and its dataset's shape alone (no torch): the network's
parameter count, the training state (weights, gradients, optimizer buffers) and the activations.

Parameter counts are exact: they follow models/ and torchvision layer by layer. Activation bytes are the
tensors autograd keeps for backward during one training-mode forward pass of the network on one sample,
each counted once however many operations keep it (an in-place ReLU keeps the tensor its BatchNorm or
Conv wrote, a Linear keeps the ReLU output before it), parameters and buffers excluded, the input image
included. Floats are float32 (4 bytes); max-pool indices are int64 (8 bytes); Dropout keeps a float
noise tensor (the CPU kernel; CUDA keeps a 1-byte mask, so this errs high). BatchNorm's per-channel
batch statistics and the loss's few values per class are left out. A step's peak is higher by the
gradients of the activations alive during backward and the kernels' workspaces: this is the part that
grows with the batch, the one a limit has to bound."""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from typing import Any

from spec.architectures import ARCHITECTURES, InputShape, MLPParams, MnistMLPParams
from spec.datasets import DatasetInfo
from spec.job import JobSpec
from spec.params import NoParams, Params

FLOAT_BYTES = 4
INDEX_BYTES = 8  # max-pool indices are int64


@dataclass(frozen=True)
class NetworkSize:
    """A network's parameter count and the activation bytes autograd keeps for one training sample."""

    params: int
    activation_bytes_per_sample: int


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


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def _conv(c_in: int, c_out: int, kernel: int, *, bias: bool = True) -> int:
    return c_in * c_out * kernel * kernel + (c_out if bias else 0)


def _batchnorm(channels: int) -> int:
    return 2 * channels  # weight and bias; running mean and variance are buffers


def _halved(side: int) -> int:
    """A side after a stride-2 conv or ResNet's padded 3x3 max-pool: ceil(side / 2)."""
    return (side - 1) // 2 + 1


def _mlp(p: MLPParams, s: InputShape) -> NetworkSize:
    widths = [s.features, *p.hidden]
    params = sum(_linear(a, b) for a, b in pairwise(widths)) + _linear(widths[-1], s.num_classes)
    # The input (first Linear) and each ReLU's output (the ReLU, then the next Linear or the Dropout);
    # a Dropout also keeps its noise, and its output for the next Linear.
    per_hidden = 3 if p.dropout > 0 else 1
    return NetworkSize(params, (s.features + per_hidden * sum(p.hidden)) * FLOAT_BYTES)


def _mnist_mlp(p: MnistMLPParams, s: InputShape) -> NetworkSize:
    h = p.hidden
    params = _linear(s.features, h) + 2 * _linear(h, h) + _linear(h, s.num_classes)
    # The input, three ReLU outputs, and the log-probabilities log_softmax keeps for its own backward.
    return NetworkSize(params, (s.features + 3 * h + s.num_classes) * FLOAT_BYTES)


def _lenet5(_: NoParams, s: InputShape) -> NetworkSize:
    floats, indices = s.features, 0
    h, w, c_in = s.height, s.width, s.channels
    params = 0
    for c in (6, 16):
        params += _conv(c_in, c, 5)
        h, w = h - 4, w - 4
        floats += c * h * w  # the ReLU's output (kept by the ReLU and the pool)
        h, w = h // 2, w // 2
        floats += c * h * w  # the pool's output, for the next layer
        indices += c * h * w
        c_in = c
    params += _linear(16 * h * w, 120) + _linear(120, 84) + _linear(84, s.num_classes)
    floats += 120 + 84
    return NetworkSize(params, floats * FLOAT_BYTES + indices * INDEX_BYTES)


def _resnet(blocks: tuple[int, int, int, int], bottleneck: bool, _: NoParams, s: InputShape) -> NetworkSize:
    """models.vision.resnet: below 64 px a 3x3 stride-1 stem without max-pool, else the ImageNet stem."""
    expansion = 4 if bottleneck else 1
    h, w = s.height, s.width
    floats, indices = s.features, 0
    small = min(h, w) < 64
    params = _conv(s.channels, 64, 3 if small else 7, bias=False) + _batchnorm(64)
    if not small:
        h, w = _halved(h), _halved(w)
    floats += 2 * 64 * h * w  # conv output (kept by BatchNorm), BatchNorm output (by the in-place ReLU)
    if not small:
        h, w = _halved(h), _halved(w)
        floats += 64 * h * w
        indices += 64 * h * w
    c_in = 64
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            c_out = planes * expansion
            h_out, w_out = (_halved(h), _halved(w)) if stride == 2 else (h, w)
            # Every conv-BatchNorm pair keeps two tensors of the conv's output size: the conv's output
            # (for BatchNorm) and BatchNorm's output, which the ReLU overwrites in place and keeps.
            if bottleneck:
                params += (_conv(c_in, planes, 1, bias=False) + _conv(planes, planes, 3, bias=False)
                           + _conv(planes, c_out, 1, bias=False)
                           + 2 * _batchnorm(planes) + _batchnorm(c_out))
                floats += 2 * planes * h * w + 2 * planes * h_out * w_out + 2 * c_out * h_out * w_out
            else:
                params += _conv(c_in, planes, 3, bias=False) + _conv(planes, planes, 3, bias=False)
                params += 2 * _batchnorm(planes)
                floats += 4 * planes * h_out * w_out
            if stride != 1 or c_in != c_out:
                # The 1x1 downsample's output, kept by its BatchNorm (whose output is only added).
                params += _conv(c_in, c_out, 1, bias=False) + _batchnorm(c_out)
                floats += c_out * h_out * w_out
            c_in, h, w = c_out, h_out, w_out
    params += _linear(512 * expansion, s.num_classes)
    floats += 512 * expansion  # the pooled features, kept by fc
    return NetworkSize(params, floats * FLOAT_BYTES + indices * INDEX_BYTES)


VGG11_LAYERS: list[int | None] = [64, None, 128, None, 256, 256, None, 512, 512, None, 512, 512, None]  # None: pool


def _vgg(batch_norm: bool, _: NoParams, s: InputShape) -> NetworkSize:
    """models.vision.vgg: torchvision's configuration "A", keeping a max-pool only while the smaller side
    can be halved; the adaptive pool then always feeds the classifier 512 x 7 x 7 features."""
    h, w, size = s.height, s.width, min(s.height, s.width)
    floats, indices, params, c_in = s.features, 0, 0, s.channels
    for c in VGG11_LAYERS:
        if c is None:
            if size // 2 < 1:
                continue
            size, h, w = size // 2, h // 2, w // 2
            floats += c_in * h * w  # the pool's output, for the next conv
            indices += c_in * h * w
        else:
            params += _conv(c_in, c, 3) + (_batchnorm(c) if batch_norm else 0)
            # The ReLU is in place: without BatchNorm it keeps the conv's own output.
            floats += (2 if batch_norm else 1) * c * h * w
            c_in = c
    params += _linear(512 * 7 * 7, 4096) + _linear(4096, 4096) + _linear(4096, s.num_classes)
    # The pooled features (first Linear), then per hidden layer the ReLU output, the Dropout noise and output.
    floats += 512 * 7 * 7 + 2 * 3 * 4096
    return NetworkSize(params, floats * FLOAT_BYTES + indices * INDEX_BYTES)


ESTIMATORS: dict[str, Callable[[Any, InputShape], NetworkSize]] = {
    "mlp": _mlp,
    "mnist-mlp": _mnist_mlp,
    "lenet5": _lenet5,
    "resnet18": partial(_resnet, (2, 2, 2, 2), False),
    "resnet34": partial(_resnet, (3, 4, 6, 3), False),
    "resnet50": partial(_resnet, (3, 4, 6, 3), True),
    "vgg11": partial(_vgg, False),
    "vgg11_bn": partial(_vgg, True),
}


def network_size(arch: str, params: Params | dict[str, Any] | None, shape: InputShape) -> NetworkSize:
    """Parameters and per-sample activation bytes of models.build_model(arch, params, shape), without building it."""
    p = params if isinstance(params, Params) else ARCHITECTURES[arch].params.model_validate(params or {})
    return ESTIMATORS[arch](p, shape)


# How many parameter-sized tensors each optimizer keeps (torch.optim's per-parameter state), from its params.
OPTIMIZER_BUFFERS: dict[str, Callable[[Any], int]] = {
    "sgd": lambda p: int(p.momentum > 0),  # momentum_buffer
    "adam": lambda p: 2 + int(p.amsgrad),  # exp_avg, exp_avg_sq (, max_exp_avg_sq)
    "adamw": lambda p: 2 + int(p.amsgrad),
    "rmsprop": lambda p: 1 + int(p.momentum > 0) + int(p.centered),  # square_avg (, momentum_buffer, grad_avg)
}


def job_footprint(spec: JobSpec, info: DatasetInfo) -> Footprint:
    """The memory `spec` needs to train on a dataset described by `info` (float32 throughout)."""
    size = network_size(spec.model.arch, spec.model_params, info.input_shape())
    weight_bytes = size.params * FLOAT_BYTES
    return Footprint(
        params=size.params,
        weight_bytes=weight_bytes,
        training_state_bytes=weight_bytes * (2 + OPTIMIZER_BUFFERS[spec.optimizer.name](spec.optimizer)),
        activation_bytes=spec.batch_size * size.activation_bytes_per_sample,
    )
