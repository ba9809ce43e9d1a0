"""TensorBoard event files, read back with TensorBoard's own EventAccumulator: every step once with the
reported values, per-epoch metrics, the spec as hparams; after a resume, each step once with the new
attempt's values, whether the earlier attempt closed its file or was killed."""

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from app.core import storage
from app.core.db import new_session
from app.core.redis_keys import stream_key
from app.core.tables import EpochMetric, JobStatus, LossPoint
from tests.processes import wait_for
from tests.worker.conftest import Workers, worker_processes
from tests.worker.training.test_fencing import holder
from worker.training.hooks import EpochMetrics, LossChunk, RunInfo
from worker.training.tensorboard import BATCH_LOSS, EPOCH_TAGS, TensorBoardWriter, flat_hparams

# Every series whole: the accumulator samples 10,000 scalars per tag by default.
EVERYTHING = {event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0}


def load(folder: Path) -> event_accumulator.EventAccumulator:
    """What TensorBoard loads from the run `folder` (its files in name order, purges applied)."""
    accumulator = event_accumulator.EventAccumulator(str(folder), size_guidance=EVERYTHING)
    accumulator.Reload()
    return accumulator


def steps_on_disk(folder: Path, tag: str) -> list[list[int]]:
    """Per event file, in name order, the steps it holds for `tag` (no purge applied)."""
    return [[event.step for event in EventFileLoader(str(path)).Load()
             if any(value.tag == tag for value in event.summary.value)]
            for path in sorted(folder.glob(f"{storage.EVENT_FILE_PREFIX}*"))]


def scalars(accumulator: event_accumulator.EventAccumulator, tag: str) -> list[tuple[int, float, float]]:
    return [(e.step, e.value, e.wall_time) for e in accumulator.Scalars(tag)]


def session_start(accumulator: event_accumulator.EventAccumulator) -> dict[str, Any]:
    content = accumulator.PluginTagToContent(hparams_metadata.PLUGIN_NAME)[hparams_metadata.SESSION_START_INFO_TAG]
    info = hparams_metadata.parse_session_start_info_plugin_data(content)
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in info.hparams.items()}


def session_status(accumulator: event_accumulator.EventAccumulator) -> int | None:
    contents = accumulator.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    if hparams_metadata.SESSION_END_INFO_TAG not in contents:
        return None
    return hparams_metadata.parse_session_end_info_plugin_data(
        contents[hparams_metadata.SESSION_END_INFO_TAG]).status


def f32(x: float) -> float:
    """As TensorBoard stores a scalar (simple_value is a float32)."""
    import numpy as np

    return float(np.float32(x))


# --- the writer alone --------------------------------------------------------------------------------

SPEC = {"name": "tb", "dataset": {"name": "fashion-mnist", "val_fraction": 0.25, "augment": {"random_crop": None}},
        "model": {"arch": "mlp", "params": {"hidden": [16, 16]}}, "epochs": 3, "shuffle": False, "scheduler": None}
STEPS_PER_EPOCH = 8


def feed_epoch(writer: TensorBoardWriter, epoch: int, offset: float, *, upto: int = STEPS_PER_EPOCH) -> list[float]:
    """The losses of `epoch`'s first `upto` batches, in two chunks, as the engine hands them over."""
    first = (epoch - 1) * STEPS_PER_EPOCH
    losses = [offset + 1.0 / (first + i + 1) for i in range(upto)]
    for start in range(0, upto, 4):
        part = losses[start:start + 4]
        writer.on_losses(LossChunk(first + start, epoch, start, part, [time.time()] * len(part)))
    return losses


def metrics(epoch: int, offset: float) -> EpochMetrics:
    return EpochMetrics(epoch, offset + 2.0 / epoch, offset + 1.5 / epoch, 0.5 + epoch / 10, 1.4 / epoch,
                        0.4 + epoch / 10, 0.1 / 2 ** epoch, 0.5)


def test_events_read_back_and_a_resume_loads_each_step_once_with_its_new_values(tmp_path: Path) -> None:
    log_dir = storage.tensorboard_dir(tmp_path / "job")
    # Attempt 1: epoch 1 (checkpointed), then 6 batches of epoch 2, and it ends.
    with TensorBoardWriter(log_dir, spec=SPEC) as first:
        first.on_start(RunInfo("cpu", 3, STEPS_PER_EPOCH, start_epoch=1, start_step=0))
        epoch1 = feed_epoch(first, 1, 0.0)
        first.on_epoch(metrics(1, 0.0), tmp_path)
        feed_epoch(first, 2, 0.0, upto=6)
    # Attempt 2 resumes from the epoch-1 checkpoint; its replayed values differ, to be told apart.
    with TensorBoardWriter(log_dir, spec=SPEC) as second:
        second.on_start(RunInfo("cpu", 3, STEPS_PER_EPOCH, start_epoch=2, start_step=STEPS_PER_EPOCH,
                                history=(metrics(1, 0.0),)))
        epoch2 = feed_epoch(second, 2, 10.0)
        second.on_epoch(metrics(2, 10.0), tmp_path)
        epoch3 = feed_epoch(second, 3, 10.0)
        second.on_epoch(metrics(3, 10.0), tmp_path)
    assert not first.failed and not second.failed

    # On disk, the replayed steps are there twice: attempt 1's file still holds steps 8..13.
    assert steps_on_disk(log_dir, BATCH_LOSS) == [list(range(14)), list(range(8, 24))]
    accumulator = load(log_dir)
    batch = scalars(accumulator, BATCH_LOSS)
    assert [s for s, _, _ in batch] == list(range(3 * STEPS_PER_EPOCH))
    assert [v for _, v, _ in batch] == [f32(x) for x in epoch1 + epoch2 + epoch3]
    last_steps = [STEPS_PER_EPOCH * e - 1 for e in (1, 2, 3)]
    offsets = (0.0, 10.0, 10.0)
    for field, tag in EPOCH_TAGS.items():
        assert [(s, v) for s, v, _ in scalars(accumulator, tag)] == [
            (s, f32(getattr(metrics(e, o), field))) for e, s, o in zip((1, 2, 3), last_steps, offsets, strict=True)]
    assert session_start(accumulator) == flat_hparams(SPEC)
    assert session_status(accumulator) == api_pb2.STATUS_SUCCESS


def test_hparams_are_the_flattened_spec() -> None:
    assert flat_hparams(SPEC) == {
        "name": "tb", "dataset.name": "fashion-mnist", "dataset.val_fraction": 0.25, "model.arch": "mlp",
        "model.params.hidden": "[16, 16]", "epochs": 3, "shuffle": "false"}


def test_a_fenced_writer_stops_and_a_failing_one_does_not_fail_training(tmp_path: Path) -> None:
    lost = False
    log_dir = tmp_path / "fenced"
    with TensorBoardWriter(log_dir, spec=SPEC, fenced=lambda: lost) as writer:
        writer.on_start(RunInfo("cpu", 3, STEPS_PER_EPOCH, start_epoch=1, start_step=0))
        feed_epoch(writer, 1, 0.0)
        writer.on_epoch(metrics(1, 0.0), tmp_path)  # flushed: epoch 1 is on disk
        lost = True
        feed_epoch(writer, 2, 0.0)
        writer.on_epoch(metrics(2, 0.0), tmp_path)  # returns at once: nothing more is written
    assert [s for s, _, _ in scalars(load(log_dir), BATCH_LOSS)] == list(range(STEPS_PER_EPOCH))
    assert not writer.failed

    blocked = tmp_path / "a-file"
    blocked.write_bytes(b"")  # no folder can be made under it
    with TensorBoardWriter(blocked / "tensorboard", spec=SPEC) as broken:
        broken.on_start(RunInfo("cpu", 3, STEPS_PER_EPOCH, start_epoch=1, start_step=0))
        feed_epoch(broken, 1, 0.0)
        broken.on_epoch(metrics(1, 0.0), tmp_path)
    assert broken.failed


# --- through the worker --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, redis_url: str,
            tiny_data_root: Path) -> Iterator[Workers]:
    """Two workers with a short lease, so that one's job is taken over soon after it is killed."""
    with worker_processes(tmp_path_factory.mktemp("tensorboard"), postgres_url=postgres_url, redis_url=redis_url,
                          data_root=tiny_data_root, count=2, lease_seconds="5", heartbeat_seconds="0.5",
                          reap_interval_seconds="1") as started:
        yield started


def recorded(job_id: str) -> tuple[list[LossPoint], list[EpochMetric]]:
    with new_session() as session:
        losses = list(session.scalars(select(LossPoint).where(LossPoint.job_id == job_id).order_by(LossPoint.step)))
        epochs = list(session.scalars(select(EpochMetric).where(EpochMetric.job_id == job_id)
                                      .order_by(EpochMetric.epoch)))
    return losses, epochs


def assert_events_match_the_database(log_dir: Path, job_id: str, steps_per_epoch: int) -> None:
    """TensorBoard loads each step once, with the loss and time the database has (the reporter's), and each
    epoch's metrics at its last step."""
    losses, epochs = recorded(job_id)
    accumulator = load(log_dir)
    assert scalars(accumulator, BATCH_LOSS) == [(p.step, f32(p.loss), pytest.approx(p.t, abs=1e-6)) for p in losses]
    for field, tag in EPOCH_TAGS.items():
        expected = [(m.epoch * steps_per_epoch - 1, f32(getattr(m, field))) for m in epochs
                    if getattr(m, field) is not None]
        loaded = scalars(accumulator, tag) if tag in accumulator.Tags()["scalars"] else []
        assert [(s, v) for s, v, _ in loaded] == expected, tag


VALIDATED = {"dataset": {"name": "fashion-mnist", "val_fraction": 0.25}, "model": {"arch": "mlp"}, "epochs": 2,
             "batch_size": 32, "scheduler": {"name": "step", "step_size": 1, "gamma": 0.5}}


def test_a_job_writes_every_step_and_epoch_and_its_spec(workers: Workers) -> None:
    job_id = workers.submit(VALIDATED, owner=workers.owner("a"))
    job = workers.wait_status(job_id, JobStatus.succeeded, JobStatus.failed, timeout=120)
    assert job.status == JobStatus.succeeded, job.error
    assert job.total_steps == job.step == 2 * 12  # 384 training images (a quarter validates), 32 a batch

    log_dir = storage.tensorboard_dir(storage.job_dir(workers.settings.artifacts_path, job_id))
    assert len(storage.event_files(log_dir.parent)) == 1
    assert_events_match_the_database(log_dir, job_id, 12)
    accumulator = load(log_dir)
    assert [s for s, _, _ in scalars(accumulator, BATCH_LOSS)] == list(range(24))
    assert [v for _, v, _ in scalars(accumulator, "lr")] == [f32(1e-3), f32(5e-4)]
    assert len(scalars(accumulator, "accuracy/val")) == 2
    hparams = session_start(accumulator)
    assert hparams == flat_hparams(job.spec)
    assert (hparams["model.arch"], hparams["epochs"], hparams["scheduler.name"], hparams["shuffle"]) == (
        "mlp", 2, "step", "false")
    assert session_status(accumulator) == api_pb2.STATUS_SUCCESS


KILLED = {"dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"}, "epochs": 3, "batch_size": 2}
KILLED_STEPS_PER_EPOCH = 512 // 2


def test_a_job_whose_worker_is_killed_resumes_with_each_step_once(workers: Workers) -> None:
    job_id = workers.submit(KILLED, owner=workers.owner("b"))
    log_dir = storage.tensorboard_dir(storage.job_dir(workers.settings.artifacts_path, job_id))

    def into_an_epoch_past_a_checkpoint() -> Any:
        job = workers.job(job_id)
        assert job.status in (JobStatus.queued, JobStatus.running), f"the job ended before the kill: {job.status}"
        if job.status != JobStatus.running or not job.epoch or job.epoch >= KILLED["epochs"]:
            return None
        live = workers.client.xlen(stream_key(job_id))
        return job if live >= job.epoch * KILLED_STEPS_PER_EPOCH + 16 else None

    job = wait_for(into_an_epoch_past_a_checkpoint, timeout=120, what="the job to train past a checkpoint",
                   interval=0.02)
    killed = holder(workers, job)
    os.killpg(killed.process.pid, signal.SIGKILL)  # no close, no flush, no hand-back
    killed_at = time.time()
    killed.process.wait(10)

    done = workers.wait_status(job_id, JobStatus.succeeded, JobStatus.failed, timeout=120)
    assert done.status == JobStatus.succeeded, done.error
    assert done.attempt == 2
    other = next(w for w in workers.workers if w is not killed)
    resumed = re.search(rf"job {job_id}: resuming at epoch (\d+), step (\d+)", other.log())
    assert resumed is not None, other.log()[-3000:]
    start_step = int(resumed.group(2))
    assert start_step == (int(resumed.group(1)) - 1) * KILLED_STEPS_PER_EPOCH > 0

    total = KILLED["epochs"] * KILLED_STEPS_PER_EPOCH
    on_disk = steps_on_disk(log_dir, BATCH_LOSS)
    assert len(on_disk) == 2  # one file per attempt
    assert on_disk[0][:start_step] == list(range(start_step))  # everything the checkpoint covers
    assert on_disk[1] == list(range(start_step, total))
    # Loaded: each step once; the replayed ones with the resumed attempt's times (the database's).
    assert_events_match_the_database(log_dir, job_id, KILLED_STEPS_PER_EPOCH)
    batch = scalars(load(log_dir), BATCH_LOSS)
    assert [s for s, _, _ in batch] == list(range(total))
    assert all(t > killed_at for s, _, t in batch if s >= start_step)
    assert all(t < killed_at for s, _, t in batch if s < start_step)
