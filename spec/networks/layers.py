"""What every network's size is made of: the input's shape, and the parameters and activations of its layers.

Floats are float32 (4 bytes); max-pool indices are int64 (8 bytes). Activation bytes are the tensors autograd keeps
for backward during one training-mode forward pass on one sample, each counted once however many operations keep it
(an in-place ReLU keeps the tensor its BatchNorm or Conv wrote, a Linear keeps the ReLU output before it), parameters
and buffers excluded, the input image included. Dropout keeps a float noise tensor (the CPU kernel; CUDA keeps a
1-byte mask, so this errs high). BatchNorm's per-channel batch statistics and the loss's few values per class are
left out. A step's peak is higher by the gradients of the activations alive during backward and the kernels'
workspaces: this is the part that grows with the batch, the one a limit has to bound."""

from dataclasses import dataclass

FLOAT_BYTES = 4
INDEX_BYTES = 8  # max-pool indices are int64


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
class NetworkSize:
    """A network's parameter count and the activation bytes autograd keeps for one training sample."""

    params: int
    activation_bytes_per_sample: int


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def conv(c_in: int, c_out: int, kernel: int, *, bias: bool = True) -> int:
    return c_in * c_out * kernel * kernel + (c_out if bias else 0)


def batchnorm(channels: int) -> int:
    return 2 * channels  # weight and bias; running mean and variance are buffers


def halved(side: int) -> int:
    """A side after a stride-2 conv or ResNet's padded 3x3 max-pool: ceil(side / 2)."""
    return (side - 1) // 2 + 1
