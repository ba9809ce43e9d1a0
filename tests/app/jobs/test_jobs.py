"""Jobs over REST against the real PostgreSQL and Redis: submit (really enqueued), list, get, cancel, delete."""

import base64
import json
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select, update
from sqlalchemy.orm import ORMExecuteState, Session

from app.core.db import new_session, session_scope
from app.core.errors import Conflict
from app.core.loss_stream import LossRecord, LossStream
from app.core.queue import TRAIN_TASK
from app.core.redis_keys import cancel_key, stream_key
from app.core.tables import EpochMetric, Job, JobStatus, LossPoint, utcnow
from app.jobs import service as jobs
from tests.app.harness import DEAD_REDIS_URL, ApiEnv, add_job, api_client, cleanup, configure, write_weights

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
        with api_client(env) as client:
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


def test_broker_down_answers_503_and_leaves_nothing_behind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, migrated_postgres: str
):
    env = configure(monkeypatch, tmp_path, database_url=migrated_postgres, redis_url=DEAD_REDIS_URL)
    with api_client(env) as client:
        r = client.post("/jobs", json=TUTORIAL)
        assert r.status_code == 503
        detail = r.json()["detail"]
        assert detail.startswith("the job was not submitted: the job queue (Redis) is unreachable")
        assert "Nothing was recorded; submit it again" in detail
        assert job_count(env.owner) == 0
        assert client.get("/jobs").json() == {"data": [], "next_cursor": None}


def test_a_body_over_request_max_bytes_is_413_and_leaves_nothing(client: TestClient, env: ApiEnv,
                                                                 redis_url: str):
    limit = env.settings.request_max_bytes
    assert limit == 64 * 1024
    body = json.dumps({**TUTORIAL, "name": "x" * (1 << 20)}).encode()  # 1 MiB of JSON
    r = client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["detail"] == f"request body is {len(body)} bytes; at most {limit} bytes are accepted by /jobs"
    # Without a Content-Length (chunked), it is counted while read.
    chunks = iter([body[i:i + 8192] for i in range(0, len(body), 8192)])
    r = client.post("/jobs", content=chunks, headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and f"at most {limit} bytes" in r.json()["detail"]
    assert job_count(env.owner) == 0
    assert queued_messages(redis_url, env.queue("cpu")) == []
    # Other routes have the same limit, even those that read no body.
    assert client.post(f"/jobs/{'x' * 32}/cancel", content=body).status_code == 413


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


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_list_rejects_a_bad_status_and_a_bad_cursor(client: TestClient):
    r = client.get("/jobs", params={"status": "done"})
    assert r.status_code == 422 and "queued" in r.text
    for cursor in ("garbage!", base64.urlsafe_b64encode(b'["losses", 3]').decode(), "W10"):
        r = client.get("/jobs", params={"cursor": cursor})
        assert r.status_code == 400 and "cursor" in r.json()["detail"], cursor
    assert client.get("/jobs", params={"limit": 0}).status_code == 422


@pytest.mark.parametrize("cursor", [
    b64(b"[" * 20_000),  # JSON nested deeper than the recursion limit
    b64(json.dumps(["jobs", "2024-01-01T00:00:00+00:00", "x" * 200]).encode()),  # longer than ours
    b64(json.dumps(["jobs", "9999-12-31T23:59:59-14:00", "x"]).encode()),  # past year 9999 in UTC
    b64(json.dumps(["jobs", "0001-01-01T00:00:00+14:00", "x"]).encode()),  # before year 1 in UTC
    b64(json.dumps(["jobs", "2024-01-01T00:00:00", "x"]).encode()),  # naive
    b64(json.dumps(["jobs", 20240101, "x"]).encode()),
    b64(json.dumps(["jobs", "2024-01-01T00:00:00+00:00", 7]).encode()),
    b64(b'["jobs", "\xff\xfe"]'), b64(b"\xff\xfe\xfd"),  # not UTF-8
    "\u00e9t\u00e9",  # not ASCII
])
def test_crafted_job_cursors_are_400(client: TestClient, cursor: str):
    r = client.get("/jobs", params={"cursor": cursor})
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith("cursor ")


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


def flip_before_first_write(session: Session, job_id: str, status: JobStatus) -> None:
    """Another writer (a worker) changes the job's status after `session` read it, just before its first
    UPDATE or DELETE: the race between a request's read and its write, made deterministic."""
    flipped = False

    def flip(state: ORMExecuteState) -> None:
        nonlocal flipped
        if (state.is_update or state.is_delete) and not flipped:
            flipped = True
            with session_scope() as other:
                other.execute(update(Job).where(Job.id == job_id).values(status=status))

    event.listen(session, "do_orm_execute", flip)


def cancel_flag(redis_url: str, job_id: str) -> bytes | None:
    client = redis.Redis.from_url(redis_url)
    try:
        return client.get(cancel_key(job_id))  # type: ignore[return-value]
    finally:
        client.close()


@pytest.mark.parametrize("finished", [JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled])
def test_cancel_of_a_running_job_that_finishes_meanwhile_is_a_conflict(env: ApiEnv, redis_url: str,
                                                                       finished: JobStatus):
    job_id = add_job(env, status=JobStatus.running, started_at=utcnow())
    rc = redis.Redis.from_url(redis_url)
    with new_session() as session:
        flip_before_first_write(session, job_id, finished)
        with pytest.raises(Conflict) as caught:
            jobs.cancel_job(session=session, client=rc, owner=env.owner, job_id=job_id)
    rc.close()
    assert caught.value.detail == (f"job {job_id} is already {finished}: only queued or running jobs can be "
                                   "cancelled")
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == finished and job.cancel_requested is False
    assert cancel_flag(redis_url, job_id) is None


def test_cancel_of_a_queued_job_claimed_meanwhile_flags_it_as_running(env: ApiEnv, redis_url: str):
    job_id = add_job(env, status=JobStatus.queued)
    rc = redis.Redis.from_url(redis_url)
    with new_session() as session:
        flip_before_first_write(session, job_id, JobStatus.running)
        job = jobs.cancel_job(session=session, client=rc, owner=env.owner, job_id=job_id)
    rc.close()
    assert job.status == JobStatus.running and job.cancel_requested is True
    assert cancel_flag(redis_url, job_id) == b"1"


def test_cancel_of_a_queued_job_finished_meanwhile_is_a_conflict(env: ApiEnv, redis_url: str):
    job_id = add_job(env, status=JobStatus.queued)
    rc = redis.Redis.from_url(redis_url)
    with new_session() as session:
        flip_before_first_write(session, job_id, JobStatus.failed)
        with pytest.raises(Conflict, match="is already failed"):
            jobs.cancel_job(session=session, client=rc, owner=env.owner, job_id=job_id)
    rc.close()
    with session_scope() as session:
        assert session.get(Job, job_id).status == JobStatus.failed  # type: ignore[union-attr]


@pytest.mark.parametrize("status", [JobStatus.queued, JobStatus.succeeded])
def test_delete_of_a_job_that_starts_running_meanwhile_is_a_conflict(env: ApiEnv, redis_url: str,
                                                                     status: JobStatus):
    job_id = add_job(env, status=status)
    weights = write_weights(env, job_id)
    rc = redis.Redis.from_url(redis_url)
    with new_session() as session:
        flip_before_first_write(session, job_id, JobStatus.running)
        with pytest.raises(Conflict) as caught:
            jobs.delete_job(session=session, client=rc, owner=env.owner, job_id=job_id,
                            artifacts=env.settings.artifacts_path)
    rc.close()
    assert caught.value.detail == f"job {job_id} is running now: cancel it first, then delete it"
    assert weights.exists()
    with session_scope() as session:
        assert session.get(Job, job_id).status == JobStatus.running  # type: ignore[union-attr]


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

    assert r.headers["content-length"] == str(len(r.content))
    r = client.get(f"/jobs/{job_id}/weights", params={"which": "last"})
    assert r.status_code == 404 and "no last weights" in r.json()["detail"]
    assert client.get(f"/jobs/{job_id}/weights", params={"which": "worst"}).status_code == 422


def test_weights_gone_is_404_and_an_opened_file_outlives_its_deletion(client: TestClient, env: ApiEnv):
    job_id = add_job(env)
    best = write_weights(env, job_id)
    content = best.read_bytes()
    with session_scope() as session:
        job = jobs.get_job(session=session, owner=env.owner, job_id=job_id)
        opened = jobs.open_weights(job=job, which="best", artifacts=env.settings.artifacts_path)
    # The job is deleted while its download is being served: the response is still whole.
    best.unlink()
    with opened:
        assert opened.read() == content
    r = client.get(f"/jobs/{job_id}/weights")
    assert r.status_code == 404
    assert r.json()["detail"].startswith(f"job {job_id} has no best weights (status succeeded)")


def test_a_row_locked_by_a_frozen_worker_is_a_503_not_a_hang(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              migrated_postgres: str, redis_url: str):
    env = configure(monkeypatch, tmp_path, database_url=migrated_postgres, redis_url=redis_url,
                    DB_POOL_TIMEOUT_SECONDS="1")
    try:
        job_id = add_job(env, status=JobStatus.running)
        # A worker frozen inside its epoch's transaction holds the job's row lock (worker.leases.claims.holds_lease).
        with new_session() as worker, worker.begin():
            worker.execute(select(Job.id).where(Job.id == job_id).with_for_update())
            with api_client(env) as client:
                r = client.post(f"/jobs/{job_id}/cancel")
                assert r.status_code == 503 and r.headers["retry-after"], r.text
                assert "being written" in r.json()["detail"]
                assert client.get(f"/jobs/{job_id}").status_code == 200  # reads never wait for it
        with api_client(env) as client:
            assert client.post(f"/jobs/{job_id}/cancel").status_code == 202
    finally:
        cleanup(env, redis_url)
