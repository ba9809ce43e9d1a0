"""The tutorials' workloads on the real data (../shared/data), through the engine. Minutes, not seconds."""

from pathlib import Path

import pytest

from app.core.config import Settings
from bench.tutorial_loop import run_tutorial
from tests.worker.conftest import Recorder, spec
from worker.training.build import run_job

pytestmark = pytest.mark.slow


@pytest.fixture
def real(real_data_root: Path, tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state", data_root=real_data_root)


def test_fashion_mnist_tutorial_epoch_by_epoch(real: Settings, tmp_path: Path):
    seed = 0
    reference, ref_losses = run_tutorial(real.data_path, epochs=10, seed=seed)
    rec = Recorder()
    result = run_job(spec(epochs=10, seed=seed), tmp_path / "job", settings=real, hooks=rec)
    assert len(rec.losses) == len(ref_losses) == 9380
    for ours, (ref_loss, ref_acc) in zip(result.history, reference, strict=True):
        assert abs(ours.test_accuracy - ref_acc) <= 0.001
        assert abs(ours.test_loss - ref_loss) <= 0.005 * ref_loss
    assert max(abs(a - b) for a, b in zip(rec.losses, ref_losses, strict=True)) < 1e-4
    # The tutorial printed 71.0% after 10 epochs.
    assert result.test_accuracy == pytest.approx(0.710, abs=0.015)


def test_mnist_tutorial_reaches_its_accuracy(real: Settings, tmp_path: Path):
    # The final accuracy depends on the seed. Measured on this engine for seeds 0-4: 96.40, 96.51, 97.00,
    # 96.83, 96.98 % (mean 96.74 %; the tutorial printed 96.7 %). Seed 3 is the one nearest that mean.
    result = run_job(spec(dataset={"name": "mnist"}, model={"arch": "mnist-mlp"}, loss="nll",
                          optimizer={"name": "adam", "lr": 1e-3}, batch_size=10, shuffle=True, epochs=3,
                          seed=3),
                     tmp_path / "job", settings=real)
    assert result.test_accuracy is not None and result.test_accuracy >= 0.965  # tutorial: 0.967


def test_lenet5_on_fashion_mnist_with_validation(real: Settings, tmp_path: Path):
    rec = Recorder()
    result = run_job(spec(model={"arch": "lenet5"}, dataset={"name": "fashion-mnist", "val_fraction": 0.1},
                          optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9}, batch_size=64,
                          shuffle=True, epochs=10),
                     tmp_path / "job", settings=real, hooks=rec)
    assert [m.epoch for m in rec.epochs] == list(range(1, 11))
    assert all(m.val_loss is not None and m.val_accuracy is not None for m in result.history)
    assert result.test_accuracy is not None and result.test_accuracy >= 0.875
    val_losses = [m.val_loss for m in result.history]
    assert result.best_epoch == val_losses.index(min(val_losses)) + 1  # type: ignore[arg-type]
