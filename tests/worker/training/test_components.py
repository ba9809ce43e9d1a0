"""Every optimizer, loss and scheduler in the registries trains on tiny data."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from app.core.config import Settings
from spec.training import LOSSES, OPTIMIZERS, SCHEDULERS
from tests.worker.conftest import spec
from worker.training.build import pick_device, run_job
from worker.training.optim import LOSS_BUILDERS


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizers(name: str, settings: Settings, tmp_path: Path):
    lr = {"sgd": 0.1, "rmsprop": 0.001}.get(name, 0.003)
    result = run_job(spec(optimizer={"name": name, "lr": lr}, epochs=3, shuffle=True), tmp_path / name,
                     settings=settings)
    assert result.history[-1].test_loss < result.history[0].test_loss


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_schedulers_change_the_learning_rate(name: str, settings: Settings, tmp_path: Path):
    params = {"step": {"step_size": 1, "gamma": 0.5}}.get(name, {})
    result = run_job(spec(scheduler={"name": name, **params}, epochs=3), tmp_path / name, settings=settings)
    lrs = [m.lr for m in result.history]
    assert len(set(lrs)) == 3
    if name == "step":
        assert lrs == pytest.approx([1e-3, 5e-4, 2.5e-4])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses(name: str, settings: Settings, tmp_path: Path):
    arch = "mnist-mlp" if name == "nll" else "mlp"
    result = run_job(spec(loss=name, model={"arch": arch}, dataset={"name": "mnist"},
                          optimizer={"name": "adam", "lr": 0.003}, epochs=3),
                     tmp_path / name, settings=settings)
    assert result.history[-1].test_accuracy > 0.5


def test_mse_uses_the_tutorials_one_hot_targets():
    output, y = torch.randn(4, 10), torch.tensor([3, 0, 9, 3])
    lambda_targets = torch.stack([torch.zeros(10, dtype=torch.float).scatter_(0, t, value=1) for t in y])
    assert torch.equal(LOSS_BUILDERS["mse"](None)(output, y), F.mse_loss(output, lambda_targets))


def test_cross_entropy_label_smoothing():
    output, y = torch.randn(4, 10), torch.tensor([3, 0, 9, 3])
    params = LOSSES["cross_entropy"].params(label_smoothing=0.1)
    assert torch.equal(LOSS_BUILDERS["cross_entropy"](params)(output, y),
                       F.cross_entropy(output, y, label_smoothing=0.1))


def test_device_choice():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in {"cuda", "mps", "cpu"}
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            pick_device("cuda")
