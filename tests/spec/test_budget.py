"""spec.budget against the real networks: every registered architecture built with torch, its size (parameter
count exact, activations as autograd keeps them) checked against spec.architectures' estimate; every optimizer's
buffers against what torch keeps."""

from typing import Any

import pytest
import torch
from torch import nn

from models import build_model
from models.registry import BUILDERS
from spec.architectures import ARCHITECTURES, misfit, network_size
from spec.budget import job_footprint
from spec.datasets import BUILTIN_DATASETS, DatasetInfo, ImageShape
from spec.job import JobSpec
from spec.networks.layers import InputShape
from spec.training import OPTIMIZERS
from worker.training.optim import OPTIMIZER_BUILDERS

FASHION = BUILTIN_DATASETS["fashion-mnist"].info

SHAPES = [
    InputShape(1, 28, 28, 10),
    InputShape(3, 32, 32, 4),
    InputShape(3, 64, 48, 100),
    InputShape(1, 16, 16, 2),  # lenet5's smallest
    InputShape(3, 8, 8, 2),  # the torchvision networks' smallest
    InputShape(3, 9, 130, 5),
    InputShape(1, 70, 64, 3),  # ResNet's ImageNet stem, on one channel
    InputShape(3, 224, 300, 1000),
]
# Every registered architecture with its default params, and some with others, on every shape it accepts: an
# architecture added to spec.architectures is checked here without a line more.
NETWORKS: list[tuple[str, dict[str, Any] | None]] = [
    *[(arch, None) for arch in ARCHITECTURES],
    ("mlp", {"hidden": [7]}),
    ("mlp", {"hidden": [100, 30, 1, 8192], "dropout": 0.2}),
    ("mlp", {"hidden": [5] * 8, "dropout": 0.5}),
    ("mnist-mlp", {"hidden": 1}),
    ("mnist-mlp", {"hidden": 300}),
]
CASES = [
    pytest.param(arch, params, s, id=f"{arch}{params or ''}-{s.channels}x{s.height}x{s.width}/{s.num_classes}")
    for arch, params in NETWORKS
    for s in SHAPES
    if misfit(arch, s.height, s.width) is None
]


def build_unfilled(arch: str, params: dict[str, Any] | None, shape: InputShape) -> nn.Module:
    """The real network with uninitialized weights: what it keeps does not depend on their values, and
    skipping the initialization keeps VGG's 129M parameters from costing seconds per build."""
    with torch.device("meta"):
        model = build_model(arch, params, shape)
    return model.to_empty(device="cpu")


def kept_for_backward(model: nn.Module, shape: InputShape, batch: int = 2) -> float:
    """Bytes per sample of the tensors autograd saves during one training-mode forward pass: every tensor
    handed to saved_tensors_hooks, counted once per storage, parameters and buffers excluded.

    Batch 2, because BatchNorm refuses to train on one value per channel (ResNet's last maps are 1x1)."""
    model.train()
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.rand(batch, shape.channels, shape.height, shape.width)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(kept.values()) / batch


def test_every_architecture_and_optimizer_has_a_builder() -> None:
    # Their estimates are part of their entries (spec.architectures, spec.training): none can lack one.
    assert set(BUILDERS) == set(ARCHITECTURES)
    assert set(OPTIMIZER_BUILDERS) == set(OPTIMIZERS)


@pytest.mark.parametrize(("arch", "params", "shape"), CASES)
def test_parameter_count_is_exact(arch: str, params: dict[str, Any] | None, shape: InputShape) -> None:
    with torch.device("meta"):
        model = build_model(arch, params, shape)
    assert network_size(arch, params, shape).params == sum(p.numel() for p in model.parameters())


# The measurement builds and runs real networks: a shape of each kind per architecture, not every one.
ACTIVATION_SHAPES = [InputShape(1, 28, 28, 10), InputShape(3, 9, 40, 5), InputShape(1, 70, 64, 3)]
ACTIVATION_CASES = [
    pytest.param(arch, params, s, id=f"{arch}{params or ''}-{s.channels}x{s.height}x{s.width}")
    for arch, params in [("mlp", None), ("mlp", {"hidden": [100, 30, 7], "dropout": 0.2}),
                         ("mnist-mlp", {"hidden": 33}), *[(a, None) for a in ARCHITECTURES if "mlp" not in a]]
    for s in [*ACTIVATION_SHAPES, InputShape(3, 16, 16, 2), InputShape(3, 8, 8, 2)]
    if misfit(arch, s.height, s.width) is None
]


@pytest.mark.parametrize(("arch", "params", "shape"), ACTIVATION_CASES)
def test_activations_are_what_autograd_keeps(arch: str, params: dict[str, Any] | None, shape: InputShape) -> None:
    estimate = network_size(arch, params, shape).activation_bytes_per_sample
    measured = kept_for_backward(build_unfilled(arch, params, shape), shape)
    assert estimate == pytest.approx(measured, rel=0.25)


@pytest.mark.parametrize("optimizer", [
    {"name": "sgd"}, {"name": "sgd", "momentum": 0.9, "nesterov": True},
    {"name": "adam"}, {"name": "adam", "amsgrad": True}, {"name": "adamw"},
    {"name": "rmsprop"}, {"name": "rmsprop", "momentum": 0.5}, {"name": "rmsprop", "momentum": 0.5, "centered": True},
])
def test_optimizer_buffers_are_what_torch_keeps(optimizer: dict[str, Any]) -> None:
    spec = JobSpec.model_validate({"optimizer": optimizer})
    model = build_model("mlp", {"hidden": [3]}, InputShape(1, 2, 2, 2))
    opt = OPTIMIZER_BUILDERS[spec.optimizer.name](model.parameters(), spec.optimizer)
    model(torch.rand(4, 1, 2, 2)).sum().backward()
    opt.step()
    # Per-parameter buffers; Adam's scalar step counters are not.
    kept = sum(t.numel() for state in opt.state.values() for key, t in state.items() if key != "step")
    params = sum(p.numel() for p in model.parameters())
    assert kept == OPTIMIZERS[spec.optimizer.name].buffers(spec.optimizer) * params


def test_tutorial_job_footprint() -> None:
    f = job_footprint(JobSpec(), FASHION)  # mlp 784-512-512-10, batch 64, SGD without momentum
    assert f.params == 669_706
    assert f.weight_bytes == 4 * 669_706
    assert f.training_state_bytes == 2 * f.weight_bytes
    # The 28x28 input, and two 512-wide ReLU outputs, per sample.
    assert f.activation_bytes == 64 * 4 * (784 + 512 + 512)
    assert f.total_bytes == f.training_state_bytes + f.activation_bytes


def test_adam_keeps_two_buffers_per_parameter() -> None:
    spec = JobSpec.model_validate({"model": {"arch": "resnet18"}, "optimizer": {"name": "adam"}})
    f = job_footprint(spec, FASHION)
    assert f.training_state_bytes == 4 * f.weight_bytes


def test_widest_mlp_has_476m_parameters() -> None:
    spec = JobSpec.model_validate({"model": {"arch": "mlp", "params": {"hidden": [8192] * 8}}})
    f = job_footprint(spec, FASHION)
    assert f.params == 784 * 8192 + 8192 + 7 * (8192 * 8192 + 8192) + 8192 * 10 + 10 == 476_332_042
    assert f.weight_bytes == 4 * f.params  # 1.9 GB (1.77 GiB) per weights file


def test_resnet50_at_the_largest_batch_needs_terabytes() -> None:
    spec = JobSpec.model_validate({"model": {"arch": "resnet50"}, "batch_size": 65_536})
    f = job_footprint(spec, FASHION)
    # About 19.8 MB per 28x28 sample: the small-image stem keeps 28x28x256 maps through layer1.
    assert 1.2e12 < f.activation_bytes < 1.4e12
    assert f.activation_bytes == 65_536 * network_size("resnet50", None, InputShape(1, 28, 28, 10)) \
        .activation_bytes_per_sample


def test_footprint_follows_the_dataset() -> None:
    spec = JobSpec.model_validate({"model": {"arch": "vgg11_bn"}, "batch_size": 8})
    rgb = DatasetInfo(classes=[f"c{i}" for i in range(1000)], shape=ImageShape(channels=3, height=64, width=96),
                      mean=[0.5] * 3, std=[0.25] * 3)
    small, large = job_footprint(spec, FASHION), job_footprint(spec, rgb)
    assert large.params - small.params == (1000 - 10) * 4097 + 2 * 64 * 9
    assert large.activation_bytes > 4 * small.activation_bytes
