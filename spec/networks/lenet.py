"""LeNet-5 style: conv(6,5)-pool-conv(16,5)-pool-fc120-fc84-fc."""

from spec.networks.layers import FLOAT_BYTES, INDEX_BYTES, InputShape, NetworkSize, conv, linear
from spec.params import NoParams


def lenet5_size(_: NoParams, s: InputShape) -> NetworkSize:
    floats, indices = s.features, 0
    h, w, c_in = s.height, s.width, s.channels
    params = 0
    for c in (6, 16):
        params += conv(c_in, c, 5)
        h, w = h - 4, w - 4
        floats += c * h * w  # the ReLU's output (kept by the ReLU and the pool)
        h, w = h // 2, w // 2
        floats += c * h * w  # the pool's output, for the next layer
        indices += c * h * w
        c_in = c
    params += linear(16 * h * w, 120) + linear(120, 84) + linear(84, s.num_classes)
    floats += 120 + 84
    return NetworkSize(params, floats * FLOAT_BYTES + indices * INDEX_BYTES)
