"""Fencing: only the lease holder's writes land. A worker that lost its job (frozen past its lease, then
woken up) can neither move its epoch's files into place nor append to the job's loss stream."""

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select, text, update
from sqlalchemy.exc import OperationalError

from app.core import storage
from app.core.config import Settings
from app.core.db import get_engine, new_session, session_scope
from app.core.loss_stream import LossRecord, LossStream, StreamFenced
from app.core.redis_keys import lease_key, stream_key
from app.core.tables import EpochMetric, Job, JobStatus, LossPoint, utcnow
from app.jobs.service import read_losses
from tests.processes import Service, wait_for
from tests.worker.conftest import Workers, worker_processes
from tests.worker.leases.test_claims import add_job
from worker.training.attempts import ORPHAN_AFTER_SECONDS, remove_attempt_folders, sweep_attempt_folders
from worker.training.hooks import EpochMetrics, LossChunk, RunInfo
from worker.training.jobs import claim_job
from worker.training.reporter import Reporter

FILES = (storage.BEST, storage.LAST, storage.CHECKPOINT)


def take_over(job_id: str, lease_owner: str, client: redis.Redis) -> None:
    """What another worker does once our lease expired: claim the job and fence its stream."""
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    with session_scope() as session:
        assert claim_job(session=session, job_id=job_id, lease_owner=lease_owner, lease_seconds=60) is not None
        LossStream(client).fence(job_id, lease_owner)


def stage(reporter: Reporter, job_dir: Path, epoch: int, content: bytes) -> Path:
    """Write an epoch's three files where the engine would, for this reporter."""
    staged = reporter.staging_dir(job_dir, epoch)
    staged.mkdir(parents=True)
    for name in FILES:
        (staged / name).write_bytes(content + name.encode())
    return staged


def chunk(epoch: int, first_step: int, n: int = 4) -> LossChunk:
    return LossChunk(first_step, epoch, first_step, [1.0 / (first_step + i + 1) for i in range(n)],
                     [time.time()] * n)


def metrics(epoch: int) -> EpochMetrics:
    return EpochMetrics(epoch, 1.0, 0.9, 0.5, None, None, 1e-3, 0.1)


@contextmanager
def reporting(job_id: str, lease_owner: str, client: redis.Redis, settings: Settings) -> Iterator[Reporter]:
    with Reporter(job_id=job_id, lease_owner=lease_owner, client=client, settings=settings,
                  stop=threading.Event()) as reporter:
        reporter.on_start(RunInfo("cpu", 3, 4, start_epoch=1, start_step=0))
        yield reporter


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_a_reporter_whose_lease_was_taken_commits_no_files(database: str, client: redis.Redis,
                                                           tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    job_id = add_job()
    job_dir = tmp_path / "artifacts" / job_id
    with session_scope() as session:
        assert claim_job(session=session, job_id=job_id, lease_owner="old", lease_seconds=60) is not None
    try:
        with reporting(job_id, "old", client, settings) as old:
            # The holder's epoch lands: files moved in, staged folder gone, metrics and losses recorded.
            old.on_losses(chunk(1, 0))
            stage(old, job_dir, 1, b"old epoch 1 ")
            old.on_epoch(metrics(1), old.staging_dir(job_dir, 1))
            wait_for(lambda: (job_dir / storage.CHECKPOINT).exists(), timeout=10, what="epoch 1 committed")
            committed = {name: (job_dir / name).read_bytes() for name in FILES}
            assert committed[storage.LAST] == b"old epoch 1 " + storage.LAST.encode()

            take_over(job_id, "new", client)
            old.on_losses(chunk(2, 4))
            stage(old, job_dir, 2, b"old epoch 2 ")
            old.on_epoch(metrics(2), old.staging_dir(job_dir, 2))
            old.close()
            assert old.lease_lost and old.should_stop()
        assert {name: (job_dir / name).read_bytes() for name in FILES} == committed
        assert not storage.attempt_dirs(job_dir)  # its staged files deleted, the attempt folder too
        with new_session() as session:
            assert list(session.scalars(select(EpochMetric.epoch).where(EpochMetric.job_id == job_id))) == [1]
            assert list(session.scalars(select(LossPoint.step).where(LossPoint.job_id == job_id)
                                        .order_by(LossPoint.step))) == [0, 1, 2, 3]
            job = session.get(Job, job_id)
            assert job is not None and (job.lease_owner, job.epoch, job.step) == ("new", 1, 4)
        assert [r.step for r in LossStream(client).read(job_id, after=-1, limit=100)] == [0, 1, 2, 3]
    finally:
        LossStream(client).delete(job_id)


def test_stream_appends_need_the_lease_key(client: redis.Redis) -> None:
    job_id = os.urandom(16).hex()
    stream = LossStream(client)
    records = [LossRecord(s, 1, s, 0.5, 0.0) for s in range(3)]
    try:
        with pytest.raises(StreamFenced) as missing:
            stream.append_fenced(job_id, records, lease_owner="new")
        assert missing.value.missing and not client.exists(stream_key(job_id))
        stream.fence(job_id, "new")
        assert 0 < client.ttl(lease_key(job_id)) <= 24 * 3600
        with pytest.raises(StreamFenced) as stale:
            stream.append_fenced(job_id, records, lease_owner="old")
        assert not stale.value.missing and not client.exists(stream_key(job_id))
        assert stream.append_fenced(job_id, records[:2], lease_owner="new") == 2
        assert stream.append_fenced(job_id, records, lease_owner="new") == 1  # steps 0 and 1: duplicates
        assert [r.step for r in stream.read(job_id, after=-1, limit=10)] == [0, 1, 2]
        stream.delete(job_id)
        assert not client.exists(stream_key(job_id), lease_key(job_id))
    finally:
        stream.delete(job_id)


def test_a_stale_reporter_is_refused_by_the_stream_and_a_holder_sets_a_lost_key_again(
        database: str, client: redis.Redis, tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    job_id = add_job()
    with session_scope() as session:
        assert claim_job(session=session, job_id=job_id, lease_owner="old", lease_seconds=60) is not None
    try:
        with reporting(job_id, "old", client, settings) as old:
            # No key (Redis flushed, or down at the claim): the holder proves its lease and writes.
            assert not client.exists(lease_key(job_id))
            old.on_losses(chunk(1, 0))
            wait_for(lambda: client.xlen(stream_key(job_id)) == 4, timeout=10, what="the holder's losses")
            assert client.get(lease_key(job_id)) == b"old"

            take_over(job_id, "new", client)
            client.delete(lease_key(job_id))  # Redis lost the new owner's key: that lets no stale worker in
            old.on_losses(chunk(1, 4))
            wait_for(lambda: old.lease_lost, timeout=10, what="the stale reporter to find it lost the lease")
            assert old.should_stop()
            old.on_losses(chunk(1, 8))
            old.close(persist_tail=False)
        assert [r.step for r in LossStream(client).read(job_id, after=-1, limit=100)] == [0, 1, 2, 3]
        assert not client.exists(lease_key(job_id))
    finally:
        LossStream(client).delete(job_id)


def test_attempt_folders_no_claim_holds_are_swept(database: str, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    running, finished, gone = add_job(), add_job(status=JobStatus.failed), os.urandom(16).hex()
    with session_scope() as session:
        assert claim_job(session=session, job_id=running, lease_owner="host:1:live", lease_seconds=60)
    folders = {
        "live": storage.attempt_dir(artifacts / running, "host:1:live"),  # its claim holds the job: kept
        "dead": storage.attempt_dir(artifacts / running, "host:2:dead"),
        "failed": storage.attempt_dir(artifacts / finished, "host:3:dead"),
        "gone": storage.attempt_dir(artifacts / gone, "host:4:dead"),
        "recent": storage.attempt_dir(artifacts / finished, "host:5:dead"),  # may still be written: kept
    }
    old = time.time() - 2 * ORPHAN_AFTER_SECONDS
    for name, folder in folders.items():
        staged = storage.staged_epoch_dir(folder, 1)
        staged.mkdir(parents=True)
        (staged / storage.CHECKPOINT).write_bytes(b"x")
        if name != "recent":
            for path in (staged / storage.CHECKPOINT, staged, folder):
                os.utime(path, (old, old))
    (artifacts / finished / storage.LAST).write_bytes(b"committed")

    removed = sweep_attempt_folders(artifacts)
    assert sorted(removed) == sorted(f"{folders[n].parent.name}/{folders[n].name}" for n in ("dead", "failed", "gone"))
    assert [p.exists() for p in folders.values()] == [True, False, False, False, True]
    assert (artifacts / finished / storage.LAST).read_bytes() == b"committed"
    # What the reaper does for a job it failed or cancelled: every attempt folder goes, nothing else.
    assert remove_attempt_folders(artifacts / finished) == [folders["recent"].name]
    assert not storage.attempt_dirs(artifacts / finished) and (artifacts / finished / storage.LAST).exists()


# --- end to end: real workers, one frozen past its lease ----------------------------------------------

# Many short epochs (16 batches of a small network), and a stop flag polled only every million batches:
# never, here. So the frozen worker, once woken, trains on to the end and tries to write every epoch left:
# the fences alone must keep its writes out, not its noticing the lost lease and stopping.
SLOW = {"dataset": {"name": "fashion-mnist"}, "model": {"arch": "mnist-mlp"}, "loss": "nll", "epochs": 150,
        "batch_size": 32}
STEPS = SLOW["epochs"] * 512 // SLOW["batch_size"]


@pytest.fixture
def two_workers(tmp_path: Path, postgres_url: str, redis_url: str, tiny_data_root: Path) -> Iterator[Workers]:
    with worker_processes(tmp_path, postgres_url=postgres_url, redis_url=redis_url, data_root=tiny_data_root,
                          count=2, lease_seconds="5", heartbeat_seconds="1", reap_interval_seconds="1",
                          stop_check_batches="1000000") as workers:
        yield workers


def holder(workers: Workers, job: Job) -> Service:
    """The worker whose pool process holds the job's lease ("host:pid:nonce")."""
    assert job.lease_owner is not None
    group = os.getpgid(int(job.lease_owner.split(":")[1]))
    return next(w for w in workers.workers if w.process.pid == group)


def row_locked(job_id: str) -> bool:
    """Whether some transaction holds the job's row lock (a worker frozen inside one would block the reap)."""
    with get_engine().connect() as conn:
        try:
            conn.execute(text("SELECT id FROM jobs WHERE id = :id FOR UPDATE NOWAIT"), {"id": job_id})
            return False
        except OperationalError:
            return True
        finally:
            conn.rollback()


def freeze_outside_a_transaction(worker: Service, job_id: str) -> None:
    for _ in range(50):
        os.killpg(worker.process.pid, signal.SIGSTOP)
        if not row_locked(job_id):
            return
        os.killpg(worker.process.pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the worker kept the job's row locked")


def snapshot(workers: Workers, job_id: str) -> dict[str, Any]:
    """Everything a client can read of the job, and its files."""
    job_dir = storage.job_dir(workers.settings.artifacts_path, job_id)
    with new_session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        losses = read_losses(session=session, client=workers.client, job_id=job_id, after=-1, limit=100_000)
        return {
            "files": {name: (job_dir / name).read_bytes() for name in FILES},
            "job": (job.status, job.attempt, job.epoch, job.step, job.result, job.finished_at, job.error),
            "metrics": [(m.epoch, m.train_loss, m.test_loss, m.test_accuracy, m.seconds) for m in session.scalars(
                select(EpochMetric).where(EpochMetric.job_id == job_id).order_by(EpochMetric.epoch))],
            "loss_points": [(p.step, p.epoch, p.batch, p.loss, p.t) for p in session.scalars(
                select(LossPoint).where(LossPoint.job_id == job_id).order_by(LossPoint.step))],
            "losses": losses,
            "stream": LossStream(workers.client).read(job_id, after=-1, limit=100_000),
        }


def test_a_worker_frozen_past_its_lease_writes_nothing_after_waking(two_workers: Workers) -> None:
    job_id = two_workers.submit(SLOW, owner=two_workers.owner("a"))

    def trained_two_epochs() -> Job | None:
        job = two_workers.job(job_id)
        return job if job.status == JobStatus.running and job.epoch >= 2 else None

    job = wait_for(trained_two_epochs, timeout=120, what="the job to commit two epochs", interval=0.02)
    frozen = holder(two_workers, job)
    assert two_workers.client.get(lease_key(job_id)) == job.lease_owner.encode()  # fenced at the claim
    freeze_outside_a_transaction(frozen, job_id)
    try:
        done = two_workers.wait_status(job_id, JobStatus.succeeded, JobStatus.failed, timeout=180)
        assert done.status == JobStatus.succeeded, done.error
        assert done.attempt == 2 and done.lease_owner is None
        other = next(w for w in two_workers.workers if w is not frozen)
        assert f"job {job_id} claimed by " in other.log()
        assert f"job {job_id}: resuming at epoch " in other.log()
        before = snapshot(two_workers, job_id)
    finally:
        os.killpg(frozen.process.pid, signal.SIGCONT)

    # Woken up, it finds out and stops: its task ends without recording anything.
    def gave_up() -> bool:
        log = frozen.log()
        return (f"job {job_id}: lease lost; another worker owns it now" in log
                or f"job {job_id}: lease lost before the end" in log)

    wait_for(gave_up, timeout=60, what="the frozen worker to give the job up")
    time.sleep(1)  # anything it still had in flight
    after = snapshot(two_workers, job_id)
    assert after["files"] == before["files"]
    assert after["job"] == before["job"] and after["job"][0] == JobStatus.succeeded
    assert after["metrics"] == before["metrics"]
    assert [m[0] for m in after["metrics"]] == list(range(1, SLOW["epochs"] + 1))
    assert after["loss_points"] == before["loss_points"]
    assert [p[0] for p in after["loss_points"]] == list(range(STEPS))
    assert after["losses"] == before["losses"] and [r.step for r in after["losses"]] == list(range(STEPS))
    assert after["stream"] == before["stream"] and [r.step for r in after["stream"]] == list(range(STEPS))
    assert not storage.attempt_dirs(storage.job_dir(two_workers.settings.artifacts_path, job_id))
    assert frozen.alive()
    # It did try, and was refused. Which refusal depends on where the freeze caught it: an epoch's files staged
    # and discarded, the epoch's tail not recorded, pending losses refused by the stream, or (frozen while
    # saving) its staging folder gone, removed by the new holder when it claimed the job.
    log = frozen.log()
    assert f"job {job_id}: lease lost" in log
    refusals = ("files discarded", "lease lost; not recording epoch", "the loss stream refused")
    staging = storage.attempt_dir(Path("."), job.lease_owner).name
    assert any(refusal in log for refusal in refusals) or ("FileNotFoundError" in log and staging in log), log[-4000:]
