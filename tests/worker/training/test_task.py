"""The Celery task end to end: a real worker process, the real PostgreSQL and Redis, tiny data."""

import math
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import delete, select, update

from app.core.config import Settings, get_settings
from app.core.db import new_session, session_scope
from app.core.loss_stream import LossRecord, LossStream
from app.core.migrate import upgrade_head
from app.core.queue import enqueue_training, queue_name
from app.core.redis_keys import cancel_key, lease_key, stream_key
from app.core.storage import attempt_dir, attempt_dirs, staged_epoch_dir
from app.core.tables import Artifact, EpochMetric, Job, JobStatus, LossPoint, utcnow
from app.jobs.service import cancel_job, create_job
from spec.job import JobSpec
from tests.app.harness import reset_caches
from tests.processes import Service, service_env, start_worker, wait_for
from tests.worker.conftest import read_job, wait_job_status
from worker.training.build import run_job
from worker.training.hooks import EpochMetrics, Hooks, LossChunk, RunInfo
from worker.training.records import records_of
from worker.training.reporter import Reporter

TINY = {"dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"}, "epochs": 2, "batch_size": 8}
STEPS_PER_EPOCH = 512 // 8


@dataclass
class Stack:
    settings: Settings
    worker: Service
    client: redis.Redis

    def submit(self, spec: dict[str, Any]) -> str:
        with new_session() as session:
            job = create_job(session=session, owner=self.settings.owner, spec=JobSpec.model_validate(spec),
                             settings=self.settings)
            return job.id

    def job(self, job_id: str) -> Job:
        return read_job(job_id)

    def wait_status(self, job_id: str, *statuses: JobStatus, timeout: float) -> Job:
        return wait_job_status(job_id, statuses, timeout=timeout, logs=[self.worker])

    def db_losses(self, job_id: str) -> list[LossPoint]:
        with new_session() as session:
            return list(session.scalars(select(LossPoint).where(LossPoint.job_id == job_id)
                                        .order_by(LossPoint.step)))

    def stream_losses(self, job_id: str) -> list[LossRecord]:
        return LossStream(self.client).read(job_id, after=-1, limit=1_000_000)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, redis_url: str,
          tiny_data_root: Path) -> Iterator[Stack]:
    """One worker process (two pool processes) on a throwaway queue; the data root lacks MNIST on purpose."""
    upgrade_head(postgres_url)
    tmp = tmp_path_factory.mktemp("tasks")
    data_root = tmp / "data"
    shutil.copytree(tiny_data_root / "FashionMNIST", data_root / "FashionMNIST")
    tag = uuid.uuid4().hex[:12]
    settings = {
        "database_url": postgres_url, "redis_url": redis_url, "state_dir": str(tmp / "state"),
        "artifacts_dir": str(tmp / "artifacts"), "data_root": str(data_root), "owner": f"test-{tag}",
        "queue_prefix": f"taas-test-{tag}-", "worker_queue": "cpu,gpu",
        "lease_seconds": "5", "heartbeat_seconds": "0.5", "reap_interval_seconds": "1",
        "cancel_poll_seconds": "0.05", "loss_flush_batches": "4",
    }
    client = redis.Redis.from_url(redis_url)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in settings.items():
            mp.setenv(f"TAAS_{key.upper()}", value)
        reset_caches()
        worker = start_worker("worker", service_env(settings), tmp / "logs", concurrency=2)
        try:
            yield Stack(get_settings(), worker, client)
        finally:
            worker.stop()
            with new_session() as session:
                ids = list(session.scalars(select(Job.id).where(Job.owner == f"test-{tag}")))
            keys = list(client.scan_iter(match=f"*taas-test-{tag}-*", count=1000))
            keys += [k for i in ids for k in (stream_key(i), cancel_key(i), lease_key(i))]
            if keys:
                client.delete(*keys)
            client.close()
            reset_caches()


def test_job_succeeds_with_every_loss_once(stack: Stack) -> None:
    job_id = stack.submit(TINY)
    job = stack.wait_status(job_id, JobStatus.succeeded, JobStatus.failed, timeout=120)
    assert job.status == JobStatus.succeeded, job.error
    total = 2 * STEPS_PER_EPOCH
    assert (job.attempt, job.epoch, job.step, job.total_steps, job.device) == (1, 2, total, total, "cpu")
    assert job.lease_owner is None and job.finished_at is not None and job.error is None

    db = stack.db_losses(job_id)
    stream = stack.stream_losses(job_id)
    assert [p.step for p in db] == list(range(total))
    assert [r.step for r in stream] == list(range(total))
    assert [(p.step, p.epoch, p.batch, p.loss, p.t) for p in db] == [
        (r.step, r.epoch, r.batch, r.loss, r.t) for r in stream]
    assert db[STEPS_PER_EPOCH].epoch == 2 and db[STEPS_PER_EPOCH].batch == 0

    assert job.result is not None
    result = job.result
    assert result["epochs"] == 2 and result["steps"] == total and result["device"] == "cpu"
    assert 0.0 <= result["test_accuracy"] <= 1.0 and result["best_epoch"] in (1, 2)
    assert result["val_loss"] is None and result["test_loss"] > 0
    with new_session() as session:
        metrics = list(session.scalars(select(EpochMetric).where(EpochMetric.job_id == job_id)
                                       .order_by(EpochMetric.epoch)))
        artifacts = {a.kind: a for a in session.scalars(select(Artifact).where(Artifact.job_id == job_id))}
    assert [m.epoch for m in metrics] == [1, 2]
    assert metrics[-1].test_accuracy == result["test_accuracy"]
    assert set(artifacts) == {"best", "last", "checkpoint"}
    for kind, artifact in artifacts.items():
        assert Path(artifact.path).stat().st_size == artifact.size_bytes > 0, kind
    # No server paths in what the API answers: the weights are served by GET /jobs/{id}/weights.
    assert "weights" not in result
    assert not [v for v in result.values() if isinstance(v, (str, dict, list)) and "/" in str(v)], result
    assert not stack.client.exists(cancel_key(job_id), lease_key(job_id))
    # The epochs were staged per attempt and committed: nothing staged is left behind.
    assert not attempt_dirs(stack.settings.artifacts_path / job_id)


def test_duplicate_delivery_trains_once(stack: Stack) -> None:
    job_id = stack.submit(TINY)
    # The same message again: both deliveries run at once (two pool processes); one wins the claim.
    enqueue_training(job_id, queue_name("cpu", stack.settings))
    job = stack.wait_status(job_id, JobStatus.succeeded, JobStatus.failed, timeout=60)
    assert job.status == JobStatus.succeeded, job.error
    assert job.attempt == 1
    wait_for(lambda: f"message of job {job_id}: nothing to claim" in stack.worker.log(), timeout=30,
             what="the second delivery to be skipped")
    assert stack.worker.log().count(f"job {job_id} claimed") == 1
    assert [p.step for p in stack.db_losses(job_id)] == list(range(2 * STEPS_PER_EPOCH))


def test_cancel_stops_a_running_job(stack: Stack) -> None:
    job_id = stack.submit({**TINY, "epochs": 200, "batch_size": 1})
    wait_for(lambda: len(stack.stream_losses(job_id)) >= 40, timeout=60, what="the job to train")
    with new_session() as session:
        cancel_job(session=session, client=stack.client, owner=stack.settings.owner, job_id=job_id)
    asked = time.time()
    job = stack.wait_status(job_id, JobStatus.cancelled, JobStatus.succeeded, JobStatus.failed, timeout=15)
    assert job.status == JobStatus.cancelled and job.error is None
    assert job.finished_at is not None and job.finished_at.timestamp() - asked < 5
    assert job.total_steps is not None and 40 <= job.step < job.total_steps
    db = stack.db_losses(job_id)
    # Everything it trained is persisted, contiguous, even the unfinished epoch.
    assert [p.step for p in db] == list(range(job.step))
    assert db[-1].t - asked < 1.0, "trained on for more than a second after the cancel request"
    assert not stack.client.exists(cancel_key(job_id))


def test_missing_dataset_fails_with_a_readable_reason(stack: Stack) -> None:
    job_id = stack.submit({**TINY, "dataset": {"name": "mnist"}})
    job = stack.wait_status(job_id, JobStatus.failed, JobStatus.succeeded, timeout=30)
    assert job.status == JobStatus.failed
    assert job.error is not None
    assert job.error.startswith("dataset 'mnist' not found under <data> (expected MNIST/raw/")
    assert "TAAS_DATA_DOWNLOAD" in job.error and "Traceback" not in job.error
    assert str(stack.settings.data_path) not in job.error  # no server path in an answer
    assert f"job {job_id} failed: dataset 'mnist' not found" in stack.worker.log()
    assert job.attempt == 1 and job.lease_owner is None


def test_a_diverging_job_fails_with_a_readable_reason(stack: Stack) -> None:
    job_id = stack.submit({**TINY, "optimizer": {"name": "sgd", "lr": 10}, "loss": "mse"})
    job = stack.wait_status(job_id, JobStatus.failed, JobStatus.succeeded, timeout=30)
    assert job.status == JobStatus.failed and job.error is not None
    assert re.fullmatch(r"training diverged: the loss became (nan|inf|-inf) at step (\d+) \(epoch 1, batch \d+\); "
                        r"try a lower learning rate", job.error), job.error
    # The losses before the divergence are kept, contiguous, and all finite.
    losses = stack.db_losses(job_id)
    assert [p.step for p in losses] == list(range(len(losses)))
    assert all(math.isfinite(p.loss) for p in losses)


class Crash(Exception):
    pass


class DiesInSecondEpoch(Hooks):
    """The service's reporter, then a crash a few chunks into epoch 2 (after the epoch-1 checkpoint)."""

    def __init__(self, reporter: Reporter):
        self.reporter = reporter
        self.stale: list[LossRecord] = []

    def on_start(self, info: RunInfo) -> None:
        self.reporter.on_start(info)

    def on_losses(self, chunk: LossChunk) -> None:
        self.reporter.on_losses(chunk)
        if chunk.epoch == 2:
            self.stale += records_of(chunk)
            if len(self.stale) >= 12:
                raise Crash

    def on_epoch(self, metrics: EpochMetrics, checkpoint_dir: Path) -> None:
        self.reporter.on_epoch(metrics, checkpoint_dir)


def test_expired_lease_is_resumed_without_gaps_or_duplicates(stack: Stack) -> None:
    spec = JobSpec.model_validate(TINY)
    dead_owner = "dead-host:1:0000"
    job = Job(owner=stack.settings.owner, spec=spec.model_dump(mode="json"), queue=queue_name("cpu", stack.settings),
              status=JobStatus.running, attempt=1, max_attempts=3, lease_owner=dead_owner,
              lease_expires_at=utcnow() + timedelta(minutes=5), started_at=utcnow())
    with session_scope() as session:
        session.add(job)
    job_id = job.id

    # Attempt 1, in this process: checkpoints epoch 1, streams part of epoch 2, then dies.
    with Reporter(job_id=job_id, lease_owner=dead_owner, client=stack.client, settings=stack.settings,
                  stop=threading.Event()) as reporter:
        dying = DiesInSecondEpoch(reporter)
        with pytest.raises(Crash):
            run_job(spec, stack.settings.artifacts_path / job_id, settings=stack.settings, hooks=dying)
        reporter.close(persist_tail=False)
    died = time.time()
    original = {r.step: r for r in stack.stream_losses(job_id)}
    assert max(original) >= STEPS_PER_EPOCH + 11
    # ...and, as if it died before its last database write, the database lacks the end of epoch 1 and
    # epoch 1's metrics (written after the checkpoint was saved).
    with session_scope() as session:
        session.execute(delete(LossPoint).where(LossPoint.job_id == job_id, LossPoint.step >= 40))
        session.execute(delete(EpochMetric).where(EpochMetric.job_id == job_id))
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    # It had staged epoch 2's files too, never committed (garbage here): they must not break the resume.
    leftover = staged_epoch_dir(attempt_dir(stack.settings.artifacts_path / job_id, dead_owner), 2)
    leftover.mkdir(parents=True)
    (leftover / "checkpoint.pt").write_bytes(b"not a checkpoint")

    # The worker's reaper requeues it; attempt 2 resumes from the checkpoint.
    job = stack.wait_status(job_id, JobStatus.succeeded, JobStatus.failed, timeout=60)
    assert job.status == JobStatus.succeeded, job.error
    assert job.attempt == 2 and job.step == 2 * STEPS_PER_EPOCH

    total = 2 * STEPS_PER_EPOCH
    db = stack.db_losses(job_id)
    stream = stack.stream_losses(job_id)
    assert [p.step for p in db] == list(range(total))
    assert [r.step for r in stream] == list(range(total))
    assert stack.client.xlen(stream_key(job_id)) == total
    # Epoch 1 is the first attempt's (backfilled from the stream); epoch 2 was replayed and written fresh,
    # with the same values (the checkpoint restored every RNG).
    for p in db[:STEPS_PER_EPOCH]:
        assert (p.loss, p.t) == (original[p.step].loss, original[p.step].t)
    for r in stream[STEPS_PER_EPOCH:]:
        assert r.t > died
    for stale in dying.stale:
        assert stream[stale.step].loss == pytest.approx(stale.loss, rel=1e-6, abs=1e-7)
    with new_session() as session:
        epochs = list(session.scalars(select(EpochMetric.epoch).where(EpochMetric.job_id == job_id)
                                      .order_by(EpochMetric.epoch)))
    assert epochs == [1, 2]
    assert f"job {job_id}: resuming at epoch 2, step {STEPS_PER_EPOCH}" in stack.worker.log()
    assert not attempt_dirs(stack.settings.artifacts_path / job_id)
    assert f"job {job_id}: removing {leftover.parent.name} left by an earlier attempt" in stack.worker.log()


def test_failure_messages_keep_no_server_path(tmp_path: Path) -> None:
    from worker.training.task import scrub_paths

    state = tmp_path / "srv" / "taas"
    settings = Settings(state_dir=state, artifacts_dir=state / "artifacts", datasets_dir=state / "datasets",
                        data_root=tmp_path / "shared" / "data")
    job = state / "artifacts" / ("a" * 32)
    messages = {
        f"FileNotFoundError: [Errno 2] No such file or directory: '{job}/checkpoint.pt'":
            f"FileNotFoundError: [Errno 2] No such file or directory: '<artifacts>/{'a' * 32}/checkpoint.pt'",
        f"dataset 'mnist' not found under {tmp_path / 'shared' / 'data'} (expected MNIST/raw/ in torchvision's "
        "layout)": "dataset 'mnist' not found under <data> (expected MNIST/raw/ in torchvision's layout)",
        f"PermissionError: {state}/taas.db is read-only.": "PermissionError: <state>/taas.db is read-only.",
        f"OSError: {state}2/other": "OSError: <path>",  # a sibling of a configured folder is not inside it
        "RuntimeError: cannot import /usr/lib/python3/dist-packages/x.py (see /opt/y)":
            "RuntimeError: cannot import <path> (see <path>)",
        r"OSError: C:\Users\taas\data\x.bin missing": "OSError: <path> missing",
        # Not paths: ratios, units, fractions of a name, URLs' paths, relative paths the user gave.
        "step 3/10 at 2.5 it/s, loss/accuracy, redis://127.0.0.1:6379/0, FashionMNIST/raw/ missing":
            "step 3/10 at 2.5 it/s, loss/accuracy, redis://127.0.0.1:6379/0, FashionMNIST/raw/ missing",
    }
    for message, scrubbed in messages.items():
        assert scrub_paths(message, settings) == scrubbed
    # The relative default (.taas) is scrubbed in its resolved, absolute spelling.
    relative = Settings(state_dir=Path(".taas"), artifacts_dir=Path(".taas/artifacts"),
                        datasets_dir=Path(".taas/datasets"), data_root=Path(".taas/data"))
    assert scrub_paths(f"x: {Path('.taas').resolve()}/artifacts/j", relative) == "x: <artifacts>/j"
