"""Jobs over REST against the real PostgreSQL and Redis: submit (really enqueued), list, get, cancel, delete."""

import base64
import json
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db import session_scope
from app.loss_stream import LossRecord, LossStream, cancel_key, stream_key
from app.main import create_app
from app.queue import TRAIN_TASK
from app.tables import EpochMetric, Job, JobStatus, LossPoint, utcnow
from tests.app.harness import DEAD_REDIS_URL, ApiEnv, add_job, configure, write_weights

TUTORIAL = {"dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"}}


def queued_messages(redis_url: str, queue: str) -> list[tuple[str, list[object]]]:
    """(task name, args) of every message waiting in a broker queue (kombu's Redis list layout)."""
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.lrange(queue, 0, -1)
    finally:
        client.close()
    messages = [json.loads(m) for m in raw]
    return [(m["headers"]["task"], json.loads(base64.b64decode(m["body"]))[0]) for m in messages]


def job_count(owner: str) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(Job).where(Job.owner == owner)) or 0


# --- POST /jobs ----------------------------------------------------------------------------------

def test_submit_inserts_the_job_and_sends_it_to_the_broker(client: TestClient, env: ApiEnv, redis_url: str):
    r = client.post("/jobs", json={**TUTORIAL, "name": "fashion-mlp"})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued" and job["name"] == "fashion-mlp"
    assert job["spec"]["optimizer"] == {"name": "sgd", "lr": 0.001, "momentum": 0.0, "weight_decay": 0.0,
                                        "nesterov": False}
    assert job["spec"]["epochs"] == 10 and job["spec"]["batch_size"] == 64
    assert job["queue"] == env.queue("cpu")
    assert job["progress"] == {"epoch": 0, "step": 0, "total_steps": None}
    assert job["attempt"] == 0 and job["max_attempts"] == 3 and job["error"] is None
    assert job["result"] is None and job["finished_at"] is None

    assert queued_messages(redis_url, env.queue("cpu")) == [(TRAIN_TASK, [job["id"]])]
    assert client.get(f"/jobs/{job['id']}").json()["spec"] == job["spec"]


@pytest.mark.parametrize(("device", "base"), [("cuda", "gpu"), ("cuda:1", "gpu"), ("cpu", "cpu"),
                                              ("auto", "cpu")])
def test_queue_follows_the_device(client: TestClient, env: ApiEnv, redis_url: str, device: str, base: str):
    r = client.post("/jobs", json={**TUTORIAL, "device": device, "max_attempts": 5})
    assert r.status_code == 201
    assert r.json()["queue"] == env.queue(base) and r.json()["max_attempts"] == 5
    assert queued_messages(redis_url, env.queue(base)) == [(TRAIN_TASK, [r.json()["id"]])]


def test_device_auto_uses_the_default_queue(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            migrated_postgres: str, redis_url: str):
    from tests.app.harness import cleanup

    env = configure(monkeypatch, tmp_path, database_url=migrated_postgres, redis_url=redis_url,
                    DEFAULT_QUEUE="gpu")
    try:
        with TestClient(create_app()) as client:
            assert client.post("/jobs", json=TUTORIAL).json()["queue"] == env.queue("gpu")
    finally:
        cleanup(env, redis_url)


@pytest.mark.parametrize(("body", "field", "fragment"), [
    ({"model": {"arch": "alexnet9"}}, "model", "'mlp', 'mnist-mlp', 'lenet5'"),
    ({"optimizer": {"name": "lbfgs"}}, "optimizer", "'sgd', 'adam', 'adamw', 'rmsprop'"),
    ({"loss": "hinge"}, "loss", "'cross_entropy', 'nll', 'mse'"),
    ({"dataset": {"name": "cifar10"}}, "dataset", "'fashion-mnist' or 'mnist'"),
    ({"epochs": 0}, "epochs", "greater than or equal to 1"),
    ({"batch_size": 10**9}, "batch_size", "less than or equal to 65536"),
    ({"optimizer": {"name": "sgd", "lr": 100}}, "optimizer", "less than or equal to 10"),
    ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
    ({"model": {"arch": "mlp"}, "loss": "nll"}, "body", "expects log-probabilities"),
])
def test_bad_specs_answer_422_naming_the_field_and_leave_nothing(
    client: TestClient, env: ApiEnv, redis_url: str, body: dict, field: str, fragment: str
):
    r = client.post("/jobs", json=body)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert any(field in e["loc"] and fragment in e["msg"] for e in detail), detail
    assert job_count(env.owner) == 0
    assert queued_messages(redis_url, env.queue("cpu")) == []


def test_not_json_answers_422(client: TestClient, env: ApiEnv):
    r = client.post("/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert job_count(env.owner) == 0


def test_broker_down_answers_503_and_the_job_is_failed_not_queued(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, migrated_postgres: str
):
    env = configure(monkeypatch, tmp_path, database_url=migrated_postgres, redis_url=DEAD_REDIS_URL)
    with TestClient(create_app()) as client:
        r = client.post("/jobs", json=TUTORIAL)
        assert job_count(env.owner) == 1
        assert r.status_code == 503
        assert "queue" in r.json()["detail"] and "submit it again" in r.json()["detail"]
        [job] = client.get("/jobs").json()["data"]
        assert job["status"] == "failed" and job["finished_at"] is not None
        assert "never started" in job["error"]


# --- GET /jobs, GET /jobs/{id} ---------------------------------------------------------------------

def test_list_pages_newest_first_without_gaps_or_repeats(client: TestClient, env: ApiEnv):
    t0 = utcnow()
    # Two pairs share a created_at: the id breaks the tie.
    times = [t0, t0, t0 + timedelta(seconds=1), t0 + timedelta(seconds=2), t0 + timedelta(seconds=2),
             t0 + timedelta(seconds=3), t0 + timedelta(seconds=4)]
    ids = [add_job(env, status=JobStatus.queued if i % 2 else JobStatus.succeeded, created_at=t)
           for i, t in enumerate(times)]
    add_job(env, owner="someone-else")
    expected = [i for _, i in sorted(zip(times, ids, strict=True), reverse=True)]

    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params: dict[str, str | int] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get("/jobs", params=params).json()
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected

    queued = client.get("/jobs", params={"status": "queued"}).json()
    assert [j["id"] for j in queued["data"]] == [i for i in expected if ids.index(i) % 2]
    assert queued["next_cursor"] is None


def test_list_rejects_a_bad_status_and_a_bad_cursor(client: TestClient):
    r = client.get("/jobs", params={"status": "done"})
    assert r.status_code == 422 and "queued" in r.text
    for cursor in ("garbage!", base64.urlsafe_b64encode(b'["losses", 3]').decode(), "W10"):
        r = client.get("/jobs", params={"cursor": cursor})
        assert r.status_code == 400 and "cursor" in r.json()["detail"], cursor
    assert client.get("/jobs", params={"limit": 0}).status_code == 422


def test_unknown_and_foreign_jobs_are_not_found(client: TestClient, env: ApiEnv):
    foreign = add_job(env, owner="someone-else")
    for job_id in ("nope", foreign):
        for method, path in [("GET", ""), ("GET", "/losses"), ("GET", "/metrics"), ("POST", "/cancel"),
                             ("DELETE", ""), ("GET", "/weights")]:
            r = client.request(method, f"/jobs/{job_id}{path}")
            assert r.status_code == 404, (method, path)
            assert r.json() == {"detail": f"no job {job_id!r}"}
    with session_scope() as session:
        assert session.get(Job, foreign) is not None


def test_running_job_progress_follows_the_loss_stream(client: TestClient, env: ApiEnv, redis_url: str):
    job_id = add_job(env, status=JobStatus.running, epoch=1, step=100, total_steps=1000, attempt=1,
                     started_at=utcnow())
    stream = LossStream(redis.Redis.from_url(redis_url))
    try:
        stream.append(job_id, [LossRecord(s, 2, s - 100, 1.0, 0.0) for s in range(100, 130)])
        job = client.get(f"/jobs/{job_id}").json()
        assert job["status"] == "running"
        assert job["progress"] == {"epoch": 1, "step": 130, "total_steps": 1000}
        assert job["attempt"] == 1 and job["started_at"] is not None
    finally:
        stream.client.close()


def test_metrics_come_from_epoch_metrics(client: TestClient, env: ApiEnv):
    job_id = add_job(env, result={"test_accuracy": 0.7, "best_epoch": 2})
    with session_scope() as session:
        for epoch in (2, 1):
            session.add(EpochMetric(job_id=job_id, epoch=epoch, train_loss=1.0 / epoch, test_loss=1.1 / epoch,
                                    test_accuracy=0.3 * epoch, val_loss=None, val_accuracy=None,
                                    lr=0.001, seconds=3.5))
    data = client.get(f"/jobs/{job_id}/metrics").json()["data"]
    assert [m["epoch"] for m in data] == [1, 2]
    assert data[1] == {"epoch": 2, "train_loss": 0.5, "test_loss": 0.55, "test_accuracy": 0.6,
                       "val_loss": None, "val_accuracy": None, "seconds": 3.5, "lr": 0.001}
    assert client.get(f"/jobs/{job_id}").json()["result"] == {"test_accuracy": 0.7, "best_epoch": 2}


# --- cancel ----------------------------------------------------------------------------------------

def test_cancel_a_queued_job_at_once(client: TestClient, env: ApiEnv):
    job_id = client.post("/jobs", json=TUTORIAL).json()["id"]
    r = client.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled" and r.json()["finished_at"] is not None


def test_cancel_a_running_job_sets_the_flags(client: TestClient, env: ApiEnv, redis_url: str):
    job_id = add_job(env, status=JobStatus.running, started_at=utcnow())
    r = client.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 202
    assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True
    flags = redis.Redis.from_url(redis_url)
    try:
        assert flags.get(cancel_key(job_id)) == b"1"
        assert 0 < flags.ttl(cancel_key(job_id))
    finally:
        flags.close()
    with session_scope() as session:
        assert session.get(Job, job_id).cancel_requested is True  # type: ignore[union-attr]


@pytest.mark.parametrize("status", [JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled])
def test_cancel_a_finished_job_is_a_conflict(client: TestClient, env: ApiEnv, status: JobStatus):
    job_id = add_job(env, status=status)
    r = client.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 409
    assert r.json()["detail"] == (f"job {job_id} is already {status}: only queued or running jobs can be "
                                  "cancelled")


# --- delete ----------------------------------------------------------------------------------------

def test_delete_removes_rows_stream_and_artifacts(client: TestClient, env: ApiEnv, redis_url: str):
    job_id = add_job(env)
    weights = write_weights(env, job_id)
    with session_scope() as session:
        session.add(LossPoint(job_id=job_id, step=0, epoch=1, batch=0, loss=2.3, t=0.0))
        session.add(EpochMetric(job_id=job_id, epoch=1, train_loss=1, test_loss=1, test_accuracy=0.5,
                                val_loss=None, val_accuracy=None, lr=None, seconds=1))
    rc = redis.Redis.from_url(redis_url)
    try:
        LossStream(rc).append(job_id, [LossRecord(0, 1, 0, 2.3, 0.0)])
        rc.set(cancel_key(job_id), "1")

        r = client.delete(f"/jobs/{job_id}")
        assert r.status_code == 204 and r.content == b""
        assert rc.exists(stream_key(job_id), cancel_key(job_id)) == 0
    finally:
        rc.close()
    assert not weights.parent.exists()
    with session_scope() as session:
        assert session.get(Job, job_id) is None
        assert session.scalar(select(func.count()).select_from(LossPoint).where(LossPoint.job_id == job_id)) == 0
        assert session.scalar(select(func.count()).select_from(EpochMetric)
                              .where(EpochMetric.job_id == job_id)) == 0
    assert client.get(f"/jobs/{job_id}").status_code == 404


def test_delete_a_queued_job(client: TestClient, env: ApiEnv):
    job_id = client.post("/jobs", json=TUTORIAL).json()["id"]
    assert client.delete(f"/jobs/{job_id}").status_code == 204
    assert client.get(f"/jobs/{job_id}").status_code == 404


def test_delete_a_running_job_is_a_conflict(client: TestClient, env: ApiEnv):
    job_id = add_job(env, status=JobStatus.running)
    weights = write_weights(env, job_id, which="last")
    r = client.delete(f"/jobs/{job_id}")
    assert r.status_code == 409 and "cancel it first" in r.json()["detail"]
    assert weights.exists()
    assert client.get(f"/jobs/{job_id}").json()["status"] == "running"


# --- weights ---------------------------------------------------------------------------------------

def test_weights_download_and_not_yet_written(client: TestClient, env: ApiEnv):
    job_id = add_job(env)
    best = write_weights(env, job_id)
    r = client.get(f"/jobs/{job_id}/weights")
    assert r.status_code == 200 and r.content == best.read_bytes()
    assert r.headers["content-type"] == "application/octet-stream"
    assert f'filename="{job_id}-best.safetensors"' in r.headers["content-disposition"]

    r = client.get(f"/jobs/{job_id}/weights", params={"which": "last"})
    assert r.status_code == 404 and "no last weights yet" in r.json()["detail"]
    assert client.get(f"/jobs/{job_id}/weights", params={"which": "worst"}).status_code == 422
