"""torchvision's VGG-11 as models.vision builds it for small images."""

from spec.networks.layers import FLOAT_BYTES, INDEX_BYTES, InputShape, NetworkSize, batchnorm, conv, linear
from spec.params import NoParams

VGG11_LAYERS: list[int | None] = [64, None, 128, None, 256, 256, None, 512, 512, None, 512, 512, None]  # None: pool


def vgg_size(batch_norm: bool, _: NoParams, s: InputShape) -> NetworkSize:
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
            params += conv(c_in, c, 3) + (batchnorm(c) if batch_norm else 0)
            # The ReLU is in place: without BatchNorm it keeps the conv's own output.
            floats += (2 if batch_norm else 1) * c * h * w
            c_in = c
    params += linear(512 * 7 * 7, 4096) + linear(4096, 4096) + linear(4096, s.num_classes)
    # The pooled features (first Linear), then per hidden layer the ReLU output, the Dropout noise and output.
    floats += 512 * 7 * 7 + 2 * 3 * 4096
    return NetworkSize(params, floats * FLOAT_BYTES + indices * INDEX_BYTES)
