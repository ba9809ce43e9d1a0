import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from app.core.config import Settings, get_settings
from app.core.db import new_session, session_scope
from app.core.migrate import upgrade_head
from app.core.queue import enqueue_training, queue_name
from app.core.redis_keys import cancel_key, lease_key, stream_key
from app.core.tables import Job, JobStatus
from spec.job import JobSpec
from tests.app.harness import reset_caches
from tests.processes import Service, service_env, start_worker, wait_for
from worker.training.hooks import EpochMetrics, Hooks, LossChunk, RunInfo


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


def read_job(job_id: str) -> Job:
    with new_session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def wait_job_status(job_id: str, statuses: tuple[JobStatus, ...], *, timeout: float, logs: list[Service]) -> Job:
    """The job once it is in one of `statuses`; fails after `timeout` with its status and the workers' logs."""
    def reached() -> Job | None:
        job = read_job(job_id)
        return job if job.status in statuses else None

    try:
        return wait_for(reached, timeout=timeout, what=f"job {job_id} to be {'/'.join(statuses)}", interval=0.1)
    except AssertionError as e:
        shown = "\n".join(f"--- {w.name}:\n{w.log()[-3000:]}" for w in logs)
        raise AssertionError(f"{e}; job is {read_job(job_id).status}\n{shown}") from None


@dataclass
class Workers:
    """Real Celery worker processes, and this process's settings pointing at the same services and folders."""

    settings: Settings
    workers: list[Service]
    client: redis.Redis
    tag: str

    def owner(self, name: str) -> str:
        return f"test-{self.tag}-{name}"

    def submit(self, spec: dict[str, Any], *, owner: str, send: bool = True) -> str:
        """As POST /jobs stores and enqueues a job (commit, then send); without `send`, the row alone."""
        job_spec = JobSpec.model_validate(spec)
        job = Job(owner=owner, name=job_spec.name, status=JobStatus.queued, spec=job_spec.model_dump(mode="json"),
                  queue=queue_name("cpu", self.settings), max_attempts=job_spec.max_attempts)
        with session_scope() as session:
            session.add(job)
        if send:
            enqueue_training(job.id, job.queue)
        return job.id

    def job(self, job_id: str) -> Job:
        return read_job(job_id)

    def wait_status(self, job_id: str, *statuses: JobStatus, timeout: float) -> Job:
        return wait_job_status(job_id, statuses, timeout=timeout, logs=self.workers)


@contextmanager
def worker_processes(tmp: Path, *, postgres_url: str, redis_url: str, data_root: Path, count: int = 1,
                     **overrides: str) -> Iterator[Workers]:
    """`count` workers (one pool process each) on a throwaway queue prefix, ready; stopped and their Redis
    keys deleted afterwards."""
    upgrade_head(postgres_url)
    tag = uuid.uuid4().hex[:12]
    settings = {
        "database_url": postgres_url, "redis_url": redis_url, "state_dir": str(tmp / "state"),
        "artifacts_dir": str(tmp / "artifacts"), "data_root": str(data_root), "owner": f"test-{tag}",
        "queue_prefix": f"taas-test-{tag}-", "worker_queue": "cpu", "loss_flush_batches": "4", **overrides,
    }
    client = redis.Redis.from_url(redis_url)
    workers: list[Service] = []
    with pytest.MonkeyPatch.context() as mp:
        for key, value in settings.items():
            mp.setenv(f"TAAS_{key.upper()}", value)
        reset_caches()
        try:
            workers = [start_worker(f"worker{i}", service_env(settings), tmp / "logs") for i in range(1, count + 1)]
            for w in workers:
                wait_for(lambda w=w: " ready." in w.log() or not w.alive(), timeout=120, what=f"{w.name} ready")
                assert w.alive(), w.log()[-3000:]
            yield Workers(get_settings(), workers, client, tag)
        finally:
            for w in workers:
                w.stop()
            with new_session() as session:
                ids = list(session.scalars(select(Job.id).where(Job.owner.like(f"test-{tag}%"))))
            keys = list(client.scan_iter(match=f"*taas-test-{tag}-*", count=1000))
            keys += [k for i in ids for k in (stream_key(i), cancel_key(i), lease_key(i))]
            if keys:
                client.delete(*keys)
            client.close()
            reset_caches()
