from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.migrate import upgrade_head
from spec.job import JobSpec
from tests.app.harness import reset_caches
from worker.hooks import EpochMetrics, Hooks, LossChunk, RunInfo


class Recorder(Hooks):
    """Keeps everything the engine reports; optionally asks it to stop after `stop_after_batches`."""

    def __init__(self, stop_after_batches: int | None = None):
        self.chunks: list[LossChunk] = []
        self.epochs: list[EpochMetrics] = []
        self.info: RunInfo | None = None
        self.stop_after_batches = stop_after_batches
        self.polls = 0

    def on_start(self, info: RunInfo) -> None:
        self.info = info

    def on_losses(self, chunk: LossChunk) -> None:
        self.chunks.append(chunk)

    def on_epoch(self, metrics: EpochMetrics, checkpoint_dir: Path) -> None:
        self.epochs.append(metrics)

    def should_stop(self) -> bool:
        self.polls += 1
        return self.stop_after_batches is not None and len(self.losses) >= self.stop_after_batches

    @property
    def losses(self) -> list[float]:
        return [v for c in self.chunks for v in c.losses]

    @property
    def steps(self) -> list[int]:
        return [c.first_step + i for c in self.chunks for i in range(len(c.losses))]


@pytest.fixture(params=["postgres", "sqlite"])
def database(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """An empty, migrated database (PostgreSQL, then SQLite) that the settings point at."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'taas.db'}"
    upgrade_head(url)
    monkeypatch.setenv("TAAS_DATABASE_URL", url)
    reset_caches()
    yield url
    reset_caches()


@pytest.fixture
def settings(tiny_data_root: Path, tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state", data_root=tiny_data_root)


def spec(**overrides: Any) -> JobSpec:
    base: dict[str, Any] = {"dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"}, "epochs": 2}
    base.update(overrides)
    return JobSpec.model_validate(base)
