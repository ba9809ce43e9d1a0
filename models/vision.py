"""torchvision classification architectures, built without pretrained weights and adapted to the data."""

from collections.abc import Callable

import torchvision
from torch import nn


def resnet(name: str, in_channels: int, height: int, width: int, num_classes: int) -> nn.Module:
    """A torchvision ResNet whose stem keeps small images (< 64 px) from shrinking to nothing."""
    build: Callable[..., torchvision.models.ResNet] = getattr(torchvision.models, name)
    model = build(weights=None, num_classes=num_classes)
    if min(height, width) < 64:
        # The ImageNet stem (7x7 stride 2 + max-pool) divides 28 px by 4 before the first block;
        # small-image ResNets use a 3x3 stride-1 stem without the pool instead.
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def vgg(name: str, in_channels: int, height: int, width: int, num_classes: int) -> nn.Module:
    """A torchvision VGG that drops the max-pools a small image cannot afford (28 px allows four)."""
    build: Callable[..., torchvision.models.VGG] = getattr(torchvision.models, name)
    model = build(weights=None, num_classes=num_classes)
    layers = list(model.features)
    if in_channels != 3:
        first = layers[0]
        assert isinstance(first, nn.Conv2d)
        layers[0] = nn.Conv2d(in_channels, first.out_channels, kernel_size=3, padding=1)
    size = min(height, width)
    kept: list[nn.Module] = []
    for layer in layers:
        if isinstance(layer, nn.MaxPool2d):
            if size // 2 < 1:
                continue
            size //= 2
        kept.append(layer)
    model.features = nn.Sequential(*kept)
    return model
