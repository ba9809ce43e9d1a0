"""The Fashion-MNIST tutorial's own code (../shared/seeds), kept verbatim apart from printing.

The baseline the engine is compared against, in the benchmark and in the equivalence test.
"""

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import ToTensor


class NeuralNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(28*28, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, 10),
        )

    def forward(self, x):
        x = self.flatten(x)
        logits = self.linear_relu_stack(x)
        return logits


def train_loop(dataloader, model, loss_fn, optimizer, losses):
    model.train()
    for batch, (X, y) in enumerate(dataloader):  # noqa: B007  (verbatim tutorial)
        pred = model(X)
        loss = loss_fn(pred, y)

        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

        losses.append(loss.item())  # the tutorial prints loss.item() every 100 batches


def test_loop(dataloader, model, loss_fn):
    model.eval()
    size = len(dataloader.dataset)
    num_batches = len(dataloader)
    test_loss, correct = 0.0, 0.0

    with torch.no_grad():
        for X, y in dataloader:
            pred = model(X)
            test_loss += loss_fn(pred, y).item()
            correct += (pred.argmax(1) == y).type(torch.float).sum().item()

    test_loss /= num_batches
    correct /= size
    return test_loss, correct


def tutorial_data(root: Path, batch_size: int = 64) -> tuple[DataLoader, DataLoader]:
    training_data = datasets.FashionMNIST(root=str(root), train=True, download=True, transform=ToTensor())
    test_data = datasets.FashionMNIST(root=str(root), train=False, download=True, transform=ToTensor())
    return DataLoader(training_data, batch_size=batch_size), DataLoader(test_data, batch_size=batch_size)


def run_tutorial(root: Path, *, epochs: int, seed: int, learning_rate: float = 1e-3, batch_size: int = 64,
                 on_epoch=None):
    """The tutorial with torch.manual_seed(seed) before the model is built; per-epoch (loss, acc) + losses."""
    train_dataloader, test_dataloader = tutorial_data(root, batch_size)
    torch.manual_seed(seed)
    model = NeuralNetwork()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    results: list[tuple[float, float]] = []
    losses: list[float] = []
    for t in range(epochs):
        train_loop(train_dataloader, model, loss_fn, optimizer, losses)
        results.append(test_loop(test_dataloader, model, loss_fn))
        if on_epoch is not None:
            on_epoch(t + 1)
    return results, losses
