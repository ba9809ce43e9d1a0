"""Heartbeat and Reporter edge cases: a lease that cannot be renewed, metrics a dead attempt never wrote."""

import threading
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from app.core.config import Settings
from app.core.db import session_scope
from app.core.tables import EpochMetric
from tests.app.harness import reset_caches
from tests.worker.leases.test_claims import add_job, claim
from worker.training.heartbeat import Heartbeat
from worker.training.hooks import EpochMetrics, RunInfo
from worker.training.reporter import Reporter

DEAD_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"


def test_a_lease_that_cannot_be_renewed_is_given_up(database: str, redis_url: str,
                                                     monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    job_id = add_job()
    assert claim(job_id, "w") is not None
    monkeypatch.setenv("TAAS_DATABASE_URL", DEAD_POSTGRES)  # this worker alone is cut off from the DB
    reset_caches()
    settings = Settings(state_dir=tmp_path, lease_seconds=5, heartbeat_seconds=0.5)
    client = redis.Redis.from_url(redis_url)
    started = time.monotonic()
    with Heartbeat(job_id=job_id, lease_owner="w", client=client, settings=settings) as beat:
        assert beat.stop.wait(timeout=15), "the heartbeat kept a lease it could not renew"
    elapsed = time.monotonic() - started
    assert beat.lease_lost and not beat.cancelled
    assert 4.5 <= elapsed < 10  # lease_seconds - heartbeat_seconds, plus a renewal period and a timeout
    client.close()


def test_resume_restores_metrics_the_dead_attempt_never_wrote(database: str, redis_url: str,
                                                              tmp_path: Path) -> None:
    job_id = add_job()
    assert claim(job_id, "w") is not None
    history = tuple(EpochMetrics(e, 1.0 / e, 0.9 / e, 0.5 + e / 10, None, None, 1e-3, 1.0) for e in (1, 2))
    client = redis.Redis.from_url(redis_url)
    settings = Settings(state_dir=tmp_path)
    with Reporter(job_id=job_id, lease_owner="w", client=client, settings=settings,
                  stop=threading.Event()) as reporter:
        reporter.on_start(RunInfo("cpu", 5, 10, start_epoch=3, start_step=20, history=history))
        reporter.close(persist_tail=False)
    with session_scope() as session:
        rows = session.scalars(select(EpochMetric).where(EpochMetric.job_id == job_id)
                               .order_by(EpochMetric.epoch)).all()
        assert [(r.epoch, r.test_accuracy) for r in rows] == [(1, 0.6), (2, 0.7)]
    client.close()
