"""torchvision's ResNets as models.vision builds them for small images."""

from spec.networks.layers import FLOAT_BYTES, INDEX_BYTES, InputShape, NetworkSize, batchnorm, conv, halved, linear
from spec.params import NoParams


def resnet_size(blocks: tuple[int, int, int, int], bottleneck: bool, _: NoParams, s: InputShape) -> NetworkSize:
    """models.vision.resnet: below 64 px a 3x3 stride-1 stem without max-pool, else the ImageNet stem."""
    expansion = 4 if bottleneck else 1
    h, w = s.height, s.width
    floats, indices = s.features, 0
    small = min(h, w) < 64
    params = conv(s.channels, 64, 3 if small else 7, bias=False) + batchnorm(64)
    if not small:
        h, w = halved(h), halved(w)
    floats += 2 * 64 * h * w  # conv output (kept by BatchNorm), BatchNorm output (by the in-place ReLU)
    if not small:
        h, w = halved(h), halved(w)
        floats += 64 * h * w
        indices += 64 * h * w
    c_in = 64
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            c_out = planes * expansion
            h_out, w_out = (halved(h), halved(w)) if stride == 2 else (h, w)
            # Every conv-BatchNorm pair keeps two tensors of the conv's output size: the conv's output
            # (for BatchNorm) and BatchNorm's output, which the ReLU overwrites in place and keeps.
            if bottleneck:
                params += (conv(c_in, planes, 1, bias=False) + conv(planes, planes, 3, bias=False)
                           + conv(planes, c_out, 1, bias=False)
                           + 2 * batchnorm(planes) + batchnorm(c_out))
                floats += 2 * planes * h * w + 2 * planes * h_out * w_out + 2 * c_out * h_out * w_out
            else:
                params += conv(c_in, planes, 3, bias=False) + conv(planes, planes, 3, bias=False)
                params += 2 * batchnorm(planes)
                floats += 4 * planes * h_out * w_out
            if stride != 1 or c_in != c_out:
                # The 1x1 downsample's output, kept by its BatchNorm (whose output is only added).
                params += conv(c_in, c_out, 1, bias=False) + batchnorm(c_out)
                floats += c_out * h_out * w_out
            c_in, h, w = c_out, h_out, w_out
    params += linear(512 * expansion, s.num_classes)
    floats += 512 * expansion  # the pooled features, kept by fc
    return NetworkSize(params, floats * FLOAT_BYTES + indices * INDEX_BYTES)
