"""GET /jobs/{id}/tensorboard: the job's event files as a tar.gz that TensorBoard reads once unpacked; 404
before there are any, and for another owner's job; nothing outside the job's folder is ever served."""

import io
import tarfile
import time
from pathlib import Path

from fastapi.testclient import TestClient
from tensorboard.backend.event_processing import event_accumulator

from app.core import storage
from app.core.tables import JobStatus
from tests.app.harness import ApiEnv, add_job, api_client
from worker.training.hooks import EpochMetrics, LossChunk, RunInfo
from worker.training.tensorboard import BATCH_LOSS, TensorBoardWriter

SPEC = {"dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"}}


def write_events(log_dir: Path, losses: list[float]) -> None:
    """One epoch of `losses`, as a worker writes them."""
    with TensorBoardWriter(log_dir, spec=SPEC) as writer:
        writer.on_start(RunInfo("cpu", 1, len(losses), start_epoch=1, start_step=0))
        writer.on_losses(LossChunk(0, 1, 0, losses, [time.time()] * len(losses)))
        writer.on_epoch(EpochMetrics(1, 1.0, 0.9, 0.5, None, None, 1e-3, 0.1), log_dir)
    assert not writer.failed


def test_the_archive_unpacks_to_a_run_tensorboard_reads(client: TestClient, env: ApiEnv, tmp_path: Path):
    job_id = add_job(env, status=JobStatus.running)
    r = client.get(f"/jobs/{job_id}/tensorboard")
    assert r.status_code == 404 and r.json()["detail"].startswith(f"job {job_id} has no TensorBoard event files")

    log_dir = storage.tensorboard_dir(storage.job_dir(env.settings.artifacts_path, job_id))
    losses = [2.0, 1.5, 1.25, 1.0, 0.75]
    write_events(log_dir, losses)
    # A link among the event files, to a file outside the job's folder: never followed.
    secret = tmp_path / "secret"
    secret.write_bytes(b"not yours")
    (log_dir / f"{storage.EVENT_FILE_PREFIX}9999999999.elsewhere").symlink_to(secret)
    (log_dir / "notes.txt").write_text("not an event file")

    r = client.get(f"/jobs/{job_id}/tensorboard")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/gzip"
    assert r.headers["content-disposition"] == f'attachment; filename="{job_id}-tensorboard.tar.gz"'
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [f"{job_id}/{p.name}" for p in storage.event_files(log_dir.parent)]
        assert len(members) == 1 and members[0].isfile() and members[0].size > 0
        tar.extractall(tmp_path / "unpacked", filter="data")
    accumulator = event_accumulator.EventAccumulator(str(tmp_path / "unpacked" / job_id))
    accumulator.Reload()
    assert [(e.step, e.value) for e in accumulator.Scalars(BATCH_LOSS)] == list(enumerate(losses))
    assert b"not yours" not in r.content


def test_another_owners_job_and_a_linked_folder_are_not_found(client: TestClient, env: ApiEnv, tmp_path: Path):
    job_id = add_job(env)
    write_events(storage.tensorboard_dir(storage.job_dir(env.settings.artifacts_path, job_id)), [1.0, 0.5])
    assert client.get(f"/jobs/{job_id}/tensorboard").status_code == 200
    with api_client(env, owner=f"{env.owner}-other") as other:
        theirs, nobodys = other.get(f"/jobs/{job_id}/tensorboard"), other.get(f"/jobs/{'0' * 32}/tensorboard")
    assert theirs.status_code == nobodys.status_code == 404
    assert theirs.text.replace(job_id, "ID") == nobodys.text.replace("0" * 32, "ID")

    # A job whose TensorBoard folder is a link (to another folder of event files): nothing is served.
    linked = add_job(env)
    elsewhere = tmp_path / "elsewhere"
    write_events(elsewhere, [1.0])
    job_folder = storage.job_dir(env.settings.artifacts_path, linked)
    job_folder.mkdir(parents=True)
    storage.tensorboard_dir(job_folder).symlink_to(elsewhere, target_is_directory=True)
    assert client.get(f"/jobs/{linked}/tensorboard").status_code == 404
