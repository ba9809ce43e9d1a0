"""fit / train_one_epoch / evaluate on tiny data: determinism, resume, checkpoints, hooks."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from app.core.config import Settings
from app.core.storage import BEST, CHECKPOINT, LAST
from bench.tutorial_loop import run_tutorial
from models import build_model
from spec.datasets import BUILTIN_DATASETS
from tests.worker.conftest import Recorder, spec
from worker.training.build import run_job
from worker.training.checkpoints import load_checkpoint
from worker.training.engine import TrainingDiverged

# Shuffling, a validation split, momentum, a per-batch scheduler and dropout: every piece of state
# that a resume must restore (dropout draws from the global torch RNG on every batch).
SHUFFLED = dict(shuffle=True, dataset={"name": "fashion-mnist", "val_fraction": 0.2},
                model={"arch": "mlp", "params": {"hidden": [64, 64], "dropout": 0.3}},
                optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
                scheduler={"name": "onecycle", "max_lr": 0.1}, epochs=3, batch_size=32)
# The same with normalization and seeded augmentation: a second RNG whose state a resume restores too.
AUGMENTED = {**SHUFFLED, "dataset": {"name": "fashion-mnist", "val_fraction": 0.2, "normalize": True,
                                     "augment": {"random_crop": {"padding": 3}, "horizontal_flip": True}}}


@pytest.mark.parametrize("variant", [SHUFFLED, AUGMENTED], ids=["shuffled", "augmented"])
def test_same_spec_and_seed_give_identical_losses(settings: Settings, tmp_path: Path, variant: dict):
    a, b, c = Recorder(), Recorder(), Recorder()
    run_job(spec(**variant), tmp_path / "a", settings=settings, hooks=a)
    run_job(spec(**variant), tmp_path / "b", settings=settings, hooks=b)
    run_job(spec(**{**variant, "seed": 1}), tmp_path / "c", settings=settings, hooks=c)
    assert a.losses == b.losses and len(a.losses) == 3 * 13
    assert a.losses != c.losses


@pytest.mark.parametrize("variant", [SHUFFLED, AUGMENTED], ids=["shuffled", "augmented"])
def test_memory_and_dataloader_paths_give_identical_losses(tiny_data_root: Path, tmp_path: Path, variant: dict):
    runs = {}
    for mode in ("memory", "loader"):
        rec = Recorder()
        s = Settings(state_dir=tmp_path / mode, data_root=tiny_data_root, data_mode=mode)
        result = run_job(spec(**variant), tmp_path / mode / "job", settings=s, hooks=rec)
        runs[mode] = (rec.losses, [(m.test_loss, m.test_accuracy, m.val_loss) for m in result.history])
    assert runs["memory"] == runs["loader"]


@pytest.mark.parametrize(("variant", "stop_epoch"), [(SHUFFLED, 1), (SHUFFLED, 2), (AUGMENTED, 1)],
                         ids=["shuffled-1", "shuffled-2", "augmented-1"])
def test_resume_from_checkpoint_reproduces_uninterrupted_run(settings: Settings, tmp_path: Path, variant: dict,
                                                             stop_epoch: int):
    full = Recorder()
    whole = run_job(spec(**variant), tmp_path / "full", settings=settings, hooks=full)

    # Interrupt mid-epoch (stop_epoch + 1): only the epoch-`stop_epoch` checkpoint survives.
    job = tmp_path / "interrupted"
    first = Recorder(stop_after_batches=13 * stop_epoch + 5)
    eager = settings.model_copy(update={"loss_flush_batches": 1, "stop_check_batches": 1})
    stopped = run_job(spec(**variant), job, settings=eager, hooks=first)
    assert stopped.status == "stopped"
    assert load_checkpoint(job / CHECKPOINT)["epoch"] == stop_epoch

    second = Recorder()
    resumed = run_job(spec(**variant), job, settings=settings, hooks=second)
    assert second.info is not None and second.info.start_epoch == stop_epoch + 1
    assert second.steps[0] == 13 * stop_epoch
    assert len(first.losses) == 13 * stop_epoch + 5
    assert first.losses[: 13 * stop_epoch] + second.losses == full.losses
    assert [m.test_loss for m in resumed.history] == [m.test_loss for m in whole.history]
    assert resumed.best_epoch == whole.best_epoch and resumed.steps == whole.steps == 39


def test_hooks_see_every_step_once_in_chunks(settings: Settings, tmp_path: Path):
    rec = Recorder()
    s = settings.model_copy(update={"loss_flush_batches": 5, "loss_flush_seconds": 60})
    result = run_job(spec(batch_size=20), tmp_path / "j", settings=s, hooks=rec)
    assert rec.steps == list(range(2 * 26)) == list(range(result.steps))
    assert all(len(c.losses) <= 5 for c in rec.chunks)
    assert [(c.epoch, c.first_batch) for c in rec.chunks][:2] == [(1, 0), (1, 5)]
    assert rec.chunks[-1].epoch == 2 and all(len(c.times) == len(c.losses) for c in rec.chunks)
    assert [m.epoch for m in rec.epochs] == [1, 2]
    assert rec.epochs[0].train_loss == pytest.approx(sum(rec.losses[:26]) / 26)


def test_stop_is_checked_every_few_batches(settings: Settings, tmp_path: Path):
    rec = Recorder(stop_after_batches=1)
    s = settings.model_copy(update={"loss_flush_batches": 1, "stop_check_batches": 3})
    result = run_job(spec(batch_size=8), tmp_path / "j", settings=s, hooks=rec)
    assert result.status == "stopped" and len(rec.losses) == 3
    assert not (tmp_path / "j" / CHECKPOINT).exists()


def test_stop_is_checked_in_epochs_shorter_than_the_check_interval(settings: Settings, tmp_path: Path):
    rec = Recorder(stop_after_batches=1)
    s = settings.model_copy(update={"loss_flush_batches": 1, "stop_check_batches": 6})
    result = run_job(spec(batch_size=128, epochs=5), tmp_path / "j", settings=s, hooks=rec)  # 4 per epoch
    assert result.status == "stopped" and len(rec.losses) == 6  # in epoch 2, not after all 20 batches
    assert [m.epoch for m in rec.epochs] == [1]


class _WeightsPerEpoch(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.last: list[dict[str, torch.Tensor]] = []

    def on_epoch(self, metrics, checkpoint_dir: Path) -> None:  # type: ignore[no-untyped-def]
        super().on_epoch(metrics, checkpoint_dir)
        self.last.append(load_file(str(checkpoint_dir / LAST)))


def test_checkpoint_and_weights(settings: Settings, tmp_path: Path):
    job = tmp_path / "j"
    rec = _WeightsPerEpoch()
    result = run_job(spec(**SHUFFLED), job, settings=settings, hooks=rec)
    ckpt = load_checkpoint(job / CHECKPOINT)  # weights_only=True: no arbitrary unpickling
    assert ckpt["epoch"] == 3 and ckpt["step"] == 39
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "rng", "best_loss", "best_epoch", "history"}
    val_losses = [m.val_loss for m in result.history]
    assert result.best_loss == min(val_losses)  # best by validation loss when there is a split
    assert result.best_epoch == val_losses.index(min(val_losses)) + 1
    model = build_model("mlp", SHUFFLED["model"]["params"], BUILTIN_DATASETS["fashion-mnist"].info.input_shape())  # type: ignore
    model.load_state_dict(load_file(str(job / LAST)))
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in model.state_dict().items())
    best = load_file(str(job / BEST))
    assert result.best_epoch is not None
    expected = rec.last[result.best_epoch - 1]
    assert all(torch.equal(best[k], expected[k]) for k in expected)
    assert result.best_epoch == 3 or not all(torch.equal(best[k], rec.last[-1][k]) for k in best)


def test_best_by_test_loss_without_validation(settings: Settings, tmp_path: Path):
    result = run_job(spec(epochs=3, optimizer={"name": "sgd", "lr": 0.1}), tmp_path / "j", settings=settings)
    assert all(m.val_loss is None and m.val_accuracy is None for m in result.history)
    assert result.best_loss == min(m.test_loss for m in result.history)


def test_learns_the_tiny_data(settings: Settings, tmp_path: Path):
    result = run_job(spec(epochs=5, shuffle=True, optimizer={"name": "adam", "lr": 0.003}),
                     tmp_path / "j", settings=settings)
    assert result.test_accuracy is not None and result.test_accuracy >= 0.9
    assert result.history[-1].test_loss < result.history[0].test_loss


def test_equals_tutorial_loop_on_tiny_data(settings: Settings, tmp_path: Path):
    """The real-data version of this check is slow-marked in test_reference_workloads.py."""
    reference, ref_losses = run_tutorial(settings.data_path, epochs=2, seed=5)
    rec = Recorder()
    result = run_job(spec(seed=5), tmp_path / "j", settings=settings, hooks=rec)
    assert rec.losses == ref_losses
    assert [(m.test_loss, m.test_accuracy) for m in result.history] == reference


def test_divergence_fails_with_a_readable_reason(settings: Settings, tmp_path: Path):
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf) at step \d+ .*lower learning rate"):
        run_job(spec(optimizer={"name": "sgd", "lr": 10, "momentum": 0.99}, loss="mse", epochs=3),
                tmp_path / "j", settings=settings)


def test_on_epoch_comes_before_the_checkpoint(settings: Settings, tmp_path: Path):
    """A crash inside on_epoch (before the checkpoint) replays that epoch on resume: nothing is lost."""

    class Crash(Recorder):
        def on_epoch(self, metrics, checkpoint_dir: Path) -> None:  # type: ignore[no-untyped-def]
            super().on_epoch(metrics, checkpoint_dir)
            if metrics.epoch == 2:
                raise RuntimeError("worker died")

    crash = Crash()
    with pytest.raises(RuntimeError, match="worker died"):
        run_job(spec(epochs=3), tmp_path / "j", settings=settings, hooks=crash)
    assert load_checkpoint(tmp_path / "j" / CHECKPOINT)["epoch"] == 1
    again = Recorder()
    run_job(spec(epochs=3), tmp_path / "j", settings=settings, hooks=again)
    assert [m.epoch for m in again.epochs] == [2, 3]
    assert again.epochs[0] == crash.epochs[1].__class__(**{**crash.epochs[1].__dict__,
                                                          "seconds": again.epochs[0].seconds})
