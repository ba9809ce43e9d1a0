"""The two multilayer perceptrons of the tutorials."""

import torch
import torch.nn.functional as F
from torch import nn


class NeuralNetwork(nn.Module):
    """The Fashion-MNIST tutorial's model; layers are created in its order so a seed gives its weights."""

    def __init__(self, in_features: int = 28 * 28, hidden: list[int] | None = None, num_classes: int = 10,
                 dropout: float = 0.0):
        super().__init__()
        widths = [in_features, *(hidden if hidden is not None else [512, 512])]
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:], strict=False):
            layers += [nn.Linear(a, b), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(widths[-1], num_classes))
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        logits: torch.Tensor = self.linear_relu_stack(x)
        return logits


class Net(nn.Module):
    """The MNIST tutorial's model: three hidden layers and a log_softmax output (train it with nll)."""

    def __init__(self, in_features: int = 28 * 28, hidden: int = 64, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, hidden)
        self.fc4 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # the tutorial's X.view(-1, 784)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = F.relu(self.fc3(x))
        x = self.fc4(x)
        return F.log_softmax(x, dim=1)
