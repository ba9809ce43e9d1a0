"""GET /jobs/{id}/losses: the DB prefix and the Redis tail merge into one gapless series, paged by cursor."""

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from app.core import cursors
from app.core.db import session_scope
from app.core.loss_stream import LossRecord, LossStream
from app.core.migrate import upgrade_head
from app.core.tables import JobStatus, LossPoint, utcnow
from tests.app.harness import DEAD_REDIS_URL, ApiEnv, add_job, api_client, cleanup, configure

STEPS_PER_EPOCH = 40


def record(step: int) -> LossRecord:
    return LossRecord(step, step // STEPS_PER_EPOCH + 1, step % STEPS_PER_EPOCH, 2.3 - step / 1000, 1e9 + step)


@pytest.fixture
def stream(redis_url: str) -> Iterator[LossStream]:
    client = redis.Redis.from_url(redis_url)
    yield LossStream(client)
    client.close()


def persist(job_id: str, steps: range) -> None:
    """What the worker does at an epoch end: the steps so far into loss_points."""
    with session_scope() as session:
        session.add_all(LossPoint(job_id=job_id, **vars(record(s))) for s in steps)


def read_all(client: TestClient, job_id: str, *, limit: int, after: str | None = None) -> tuple[list[dict], str]:
    data: list[dict] = []
    for _ in range(1000):
        page = client.get(f"/jobs/{job_id}/losses", params={"limit": limit} | ({"after": after} if after else {}))
        assert page.status_code == 200, page.text
        body = page.json()
        data += body["data"]
        if not body["data"]:
            assert body["next_cursor"] == after or after is None
            return data, body["next_cursor"]
        after = body["next_cursor"]
    raise AssertionError("pages never ended")


def test_db_prefix_then_redis_tail_without_gaps_or_duplicates(client: TestClient, env: ApiEnv,
                                                              stream: LossStream):
    job_id = add_job(env, status=JobStatus.running)
    persist(job_id, range(0, 80))  # two epochs persisted
    stream.append(job_id, [record(s) for s in range(0, 107)])  # the stream overlaps the DB and runs ahead

    for limit in (1, 7, 40, 1000):
        data, cursor = read_all(client, job_id, limit=limit)
        assert [d["step"] for d in data] == list(range(107)), limit
        assert data[85] == {"step": 85, "epoch": 3, "batch": 5, "loss": pytest.approx(2.3 - 0.085), "t": 1e9 + 85}

    # Polling: new losses arrive; the last cursor picks up exactly those.
    stream.append(job_id, [record(s) for s in range(107, 120)])
    more, _ = read_all(client, job_id, limit=5, after=cursor)
    assert [d["step"] for d in more] == list(range(107, 120))


def test_after_the_stream_is_gone_the_db_answers(client: TestClient, env: ApiEnv, stream: LossStream):
    job_id = add_job(env, status=JobStatus.succeeded)
    persist(job_id, range(0, 120))
    stream.append(job_id, [record(s) for s in range(0, 120)])
    stream.delete(job_id)
    data, _ = read_all(client, job_id, limit=50)
    assert [d["step"] for d in data] == list(range(120))


def test_a_trimmed_stream_never_skips_steps(client: TestClient, env: ApiEnv, stream: LossStream):
    job_id = add_job(env, status=JobStatus.running)
    persist(job_id, range(0, 40))
    stream.append(job_id, [record(s) for s in range(60, 90)])  # 40..59 neither in the DB nor in Redis
    data, cursor = read_all(client, job_id, limit=1000)
    assert [d["step"] for d in data] == list(range(40))
    persist(job_id, range(40, 80))  # the next epoch end fills the gap
    rest, _ = read_all(client, job_id, limit=1000, after=cursor)
    assert [d["step"] for d in rest] == list(range(40, 90))


def test_empty_series_keeps_the_cursor(client: TestClient, env: ApiEnv):
    job_id = add_job(env, status=JobStatus.queued)
    first = client.get(f"/jobs/{job_id}/losses").json()
    assert first["data"] == [] and first["next_cursor"] == cursors.encode_step(-1)
    again = client.get(f"/jobs/{job_id}/losses", params={"after": first["next_cursor"]}).json()
    assert again == first


def test_bad_cursor_and_limits(client: TestClient, env: ApiEnv):
    job_id = add_job(env)
    for after in ("nonsense", cursors.encode_created("jobs", utcnow(), "x"), cursors.encode("losses", "7")):
        r = client.get(f"/jobs/{job_id}/losses", params={"after": after})
        assert r.status_code == 400 and "cursor" in r.json()["detail"]
    assert client.get(f"/jobs/{job_id}/losses", params={"limit": 0}).status_code == 422
    assert client.get(f"/jobs/{job_id}/losses", params={"limit": 10_001}).status_code == 422


@pytest.mark.parametrize("after", [
    cursors.encode("losses", 2**31), cursors.encode("losses", 2**63), cursors.encode("losses", 10**60),
    cursors.encode("losses", -2), cursors.encode("losses", 1.5), cursors.encode("losses", True),
    cursors.encode("losses", None), cursors.encode("losses", 1, 2),
    base64.urlsafe_b64encode(b"[" * 20_000).decode(),  # deeper than the recursion limit
    "A" * 201,  # longer than any cursor we hand out
])
def test_crafted_step_cursors_are_400(client: TestClient, env: ApiEnv, after: str):
    job_id = add_job(env)
    r = client.get(f"/jobs/{job_id}/losses", params={"after": after})
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith("cursor ")


def test_steps_beyond_32_bits_are_refused_before_the_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              redis_url: str):
    """SQLite cannot even bind an integer over 64 bits: such a cursor must not reach the query."""
    url = f"sqlite:///{tmp_path / 'state' / 'taas.db'}"
    upgrade_head(url)
    env = configure(monkeypatch, tmp_path, database_url=url, redis_url=redis_url)
    try:
        job_id = add_job(env, status=JobStatus.running)
        persist(job_id, range(0, 3))
        with api_client(env) as client:
            for step in (2**31, 2**63, 2**64):
                r = client.get(f"/jobs/{job_id}/losses", params={"after": cursors.encode_step(step)})
                assert r.status_code == 400, (step, r.text)
            largest = cursors.encode_step(2**31 - 1)
            r = client.get(f"/jobs/{job_id}/losses", params={"after": largest})
            assert r.status_code == 200 and r.json() == {"data": [], "next_cursor": largest}
    finally:
        cleanup(env, redis_url)


def test_redis_down_answers_from_the_db(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                        migrated_postgres: str, redis_url: str):
    env = configure(monkeypatch, tmp_path, database_url=migrated_postgres, redis_url=DEAD_REDIS_URL)
    try:
        job_id = add_job(env, status=JobStatus.running)
        persist(job_id, range(0, 30))
        with api_client(env) as client:
            r = client.get(f"/jobs/{job_id}/losses")
            assert r.status_code == 200
            assert [d["step"] for d in r.json()["data"]] == list(range(30))
            # Progress falls back to the DB as well.
            assert client.get(f"/jobs/{job_id}").status_code == 200
    finally:
        cleanup(env, redis_url)
