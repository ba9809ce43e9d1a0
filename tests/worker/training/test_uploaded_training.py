"""Training on an uploaded dataset's store: every architecture adapts to its shape and classes, normalization
uses its statistics, augmentation stays seeded and resumable."""

from pathlib import Path

import pytest
import torch

from app.core.config import Settings
from app.core.storage import ARCHIVE, STORE, dataset_dir
from spec.architectures import ARCHITECTURES
from spec.datasets import IngestOptions
from tests.archives import SHAPES, class_folders, jpeg, shapes, zip_of
from tests.worker.conftest import Recorder, spec
from worker.ingest.archives import Limits
from worker.ingest.decode import ingest
from worker.ingest.store import read_store
from worker.training.build import build_training, run_job
from worker.training.datasets import DatasetUnavailable

DATASET_ID = "f" * 32


@pytest.fixture(scope="module")
def rgb_datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A datasets folder holding one ingested RGB dataset: coloured shapes, 32x32 JPEGs, 4 classes."""
    root = tmp_path_factory.mktemp("datasets")
    folder = dataset_dir(root, DATASET_ID)
    folder.mkdir()
    x, y = shapes(160, seed=0)
    (folder / ARCHIVE).write_bytes(zip_of(class_folders(x, y, SHAPES, encode=jpeg)))
    ingest(folder / ARCHIVE, folder, options=IngestOptions(test_fraction=0.25), max_pixels=1 << 20,
           max_store_bytes=1 << 30, limits=Limits(max_members=1000, max_uncompressed_bytes=1 << 26, max_ratio=100,
                                                  max_member_bytes=1 << 20))
    return root


@pytest.fixture
def rgb(rgb_datasets: Path, tiny_data_root: Path, tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state", data_root=tiny_data_root, datasets_dir=rgb_datasets)


def uploaded(**dataset: object) -> dict[str, object]:
    return {"id": DATASET_ID, **dataset}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_trains_on_rgb_32x32_with_4_classes(rgb: Settings, tmp_path: Path, arch: str):
    rec = Recorder()
    result = run_job(spec(dataset=uploaded(), model={"arch": arch}, epochs=1, batch_size=40), tmp_path / arch,
                     settings=rgb, hooks=rec)
    assert result.status == "completed" and len(rec.losses) == 3  # 120 training images
    assert rec.info is not None and rec.info.total_steps == 3


def test_normalize_uses_the_datasets_statistics(rgb: Settings):
    store = read_store(dataset_dir(rgb.datasets_path, DATASET_ID) / STORE)
    training = build_training(spec(dataset=uploaded(normalize=True), batch_size=16), data_root=rgb.data_path,
                              datasets_dir=rgb.datasets_path)
    x, y = next(training.test.epoch())
    mean = torch.tensor(store.info.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(store.info.std, dtype=torch.float32).view(3, 1, 1)
    assert torch.equal(x, (store.test_images[:16].float().div(255) - mean) / std)
    assert torch.equal(y, store.test_targets[:16])
    assert abs(float((store.train_images.float() / 255 - mean).div(std).mean())) < 1e-4


def test_augmentation_touches_training_batches_only_and_is_seeded(rgb: Settings):
    options = uploaded(augment={"random_crop": {"padding": 4}, "horizontal_flip": True})
    a = build_training(spec(dataset=options, batch_size=32), data_root=rgb.data_path, datasets_dir=rgb.datasets_path)
    b = build_training(spec(dataset=options, batch_size=32), data_root=rgb.data_path, datasets_dir=rgb.datasets_path)
    plain = build_training(spec(dataset=uploaded(), batch_size=32), data_root=rgb.data_path,
                           datasets_dir=rgb.datasets_path)
    xa, xb, xp = (next(t.train.epoch())[0] for t in (a, b, plain))
    assert torch.equal(xa, xb) and not torch.equal(xa, xp)
    assert torch.equal(next(a.test.epoch())[0], next(plain.test.epoch())[0])


def test_resume_is_exact_with_augmentation_on_uploaded_data(rgb: Settings, tmp_path: Path):
    job_spec = spec(dataset=uploaded(val_fraction=0.2, normalize=True,
                                     augment={"random_crop": {"padding": 2}, "horizontal_flip": True}),
                    model={"arch": "lenet5"}, shuffle=True, epochs=3, batch_size=16)
    full = Recorder()
    run_job(job_spec, tmp_path / "full", settings=rgb, hooks=full)
    first = Recorder(stop_after_batches=6 + 3)  # 96 training images: 6 batches an epoch
    run_job(job_spec, tmp_path / "cut", settings=rgb.model_copy(update={"loss_flush_batches": 1,
                                                                        "stop_check_batches": 1}), hooks=first)
    second = Recorder()
    run_job(job_spec, tmp_path / "cut", settings=rgb, hooks=second)
    assert first.losses[:6] + second.losses == full.losses


def test_a_missing_store_is_a_readable_error(rgb: Settings, tmp_path: Path):
    with pytest.raises(DatasetUnavailable, match=f"dataset {'0' * 32} has no decoded images.*deleted"):
        run_job(spec(dataset={"id": "0" * 32}), tmp_path / "j", settings=rgb)
