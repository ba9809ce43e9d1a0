"""The LeNet-5 style CNN of the PyTorch training tutorial (conv-pool-conv-pool-fc-fc-fc)."""

import torch
import torch.nn.functional as F
from torch import nn


class LeNet5(nn.Module):
    """The tutorial's GarmentClassifier, generalised to any channel count and image size >= 16."""

    def __init__(self, in_channels: int = 1, height: int = 28, width: int = 28, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        h, w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
        self.flat_features = 16 * h * w
        self.fc1 = nn.Linear(self.flat_features, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        out: torch.Tensor = self.fc3(x)
        return out
