"""Leases in the jobs row, on PostgreSQL and on SQLite (the embedded mode)."""

import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from app.core.db import session_scope
from app.core.tables import Job, JobStatus, utcnow
from worker.leases.claims import (
    Claim,
    claim_job,
    finish_job,
    holds_lease,
    reap_expired,
    release_job,
    renew_lease,
    unqueue,
)

LEASE = 30.0


def add_job(**fields: Any) -> str:
    job = Job(owner=f"test-{uuid.uuid4().hex[:8]}", spec={}, queue="cpu", **fields)
    with session_scope() as session:
        session.add(job)
    return job.id


def load(job_id: str) -> Job:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def claim(job_id: str, owner: str) -> Claim | None:
    with session_scope() as session:
        return claim_job(session=session, job_id=job_id, lease_owner=owner, lease_seconds=LEASE)


def expire(job_id: str) -> None:
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def test_of_two_simultaneous_claims_one_wins(database: str) -> None:
    job_id = add_job()
    barrier = threading.Barrier(2)
    results: dict[str, Claim | None] = {}

    def contend(owner: str) -> None:
        barrier.wait(timeout=10)
        results[owner] = claim(job_id, owner)

    threads = [threading.Thread(target=contend, args=(owner,)) for owner in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    winners = [owner for owner, won in results.items() if won is not None]
    assert len(results) == 2 and len(winners) == 1
    job = load(job_id)
    assert (job.status, job.lease_owner, job.attempt) == (JobStatus.running, winners[0], 1)
    assert job.started_at is not None and job.lease_expires_at is not None
    assert job.lease_expires_at > utcnow() + timedelta(seconds=LEASE - 5)


def test_an_expired_lease_can_be_taken_over(database: str) -> None:
    job_id = add_job()
    first = claim(job_id, "a")
    assert first is not None and first.attempt == 1
    assert claim(job_id, "b") is None
    started = load(job_id).started_at
    expire(job_id)
    second = claim(job_id, "b")
    assert second is not None and second.attempt == 2
    job = load(job_id)
    assert job.lease_owner == "b" and job.started_at == started
    with session_scope() as session:
        assert renew_lease(session=session, job_id=job_id, lease_owner="a", lease_seconds=LEASE).held is False
        assert not holds_lease(session=session, job_id=job_id, lease_owner="a")
        assert not finish_job(session=session, job_id=job_id, lease_owner="a", status=JobStatus.failed, error="x")
        state = renew_lease(session=session, job_id=job_id, lease_owner="b", lease_seconds=LEASE)
    assert state.held is True and state.cancel_requested is False
    assert load(job_id).status == JobStatus.running


@pytest.mark.parametrize("fields", [
    {"attempt": 3, "max_attempts": 3},
    {"cancel_requested": True},
    {"status": JobStatus.succeeded},
    {"status": JobStatus.cancelled},
], ids=["out-of-attempts", "cancel-requested", "succeeded", "cancelled"])
def test_what_cannot_be_claimed(database: str, fields: dict[str, Any]) -> None:
    job_id = add_job(**fields)
    assert claim(job_id, "a") is None
    assert load(job_id).lease_owner is None


def test_finish_records_and_releases(database: str) -> None:
    job_id = add_job()
    assert claim(job_id, "a") is not None
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
        assert renew_lease(session=session, job_id=job_id, lease_owner="a", lease_seconds=LEASE).cancel_requested
        assert finish_job(session=session, job_id=job_id, lease_owner="a", status=JobStatus.succeeded,
                          result={"test_accuracy": 0.5})
    job = load(job_id)
    assert job.status == JobStatus.succeeded and job.result == {"test_accuracy": 0.5}
    assert job.lease_owner is None and job.lease_expires_at is None and job.finished_at is not None
    with session_scope() as session:
        assert not finish_job(session=session, job_id=job_id, lease_owner="a", status=JobStatus.failed)


def test_the_reaper_requeues_fails_and_cancels_expired_jobs(database: str) -> None:
    requeue, exhausted, cancelled, alive = (add_job(max_attempts=m) for m in (3, 1, 3, 3))
    for job_id in (requeue, exhausted, cancelled, alive):
        assert claim(job_id, f"dead-{job_id}") is not None
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == cancelled).values(cancel_requested=True))
    for job_id in (requeue, exhausted, cancelled):
        expire(job_id)

    with session_scope() as session:
        reaped = reap_expired(session=session)
    assert (requeue, "cpu") in reaped.requeued and exhausted in reaped.failed and cancelled in reaped.cancelled
    assert alive not in [j for j, _ in reaped.requeued] + reaped.failed + reaped.cancelled
    assert (load(requeue).status, load(requeue).lease_owner, load(requeue).attempt) == (JobStatus.queued, None, 1)
    assert load(exhausted).status == JobStatus.failed
    assert (load(exhausted).error or "").startswith("worker lost: the worker running attempt 1 of 1")
    assert load(cancelled).status == JobStatus.cancelled and load(cancelled).finished_at is not None
    assert load(alive).status == JobStatus.running
    with session_scope() as session:
        again = reap_expired(session=session)
    assert not ({requeue, exhausted, cancelled} & ({j for j, _ in again.requeued} | set(again.failed)
                                                   | set(again.cancelled)))

    # A requeue whose message could not be sent goes back to "expired", for the next reap.
    with session_scope() as session:
        assert unqueue(session=session, job_id=requeue)
    with session_scope() as session:
        assert (requeue, "cpu") in reap_expired(session=session).requeued
    assert claim(requeue, "b") is not None and load(requeue).attempt == 2


def test_release_hands_the_job_back_without_counting_the_attempt(database: str) -> None:
    job_id, cancelling = add_job(), add_job()
    assert claim(job_id, "a") is not None and claim(cancelling, "a") is not None
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == cancelling).values(cancel_requested=True))
        assert release_job(session=session, job_id=job_id, lease_owner="a") == JobStatus.queued
        assert release_job(session=session, job_id=cancelling, lease_owner="a") == JobStatus.cancelled
        assert release_job(session=session, job_id=job_id, lease_owner="a") is None
    assert (load(job_id).status, load(job_id).attempt, load(job_id).lease_owner) == (JobStatus.queued, 0, None)
    assert load(cancelling).status == JobStatus.cancelled
    assert claim(job_id, "b") is not None


def _resent(reaped: Any, *mine: str) -> list[str]:
    # The PostgreSQL database is shared by the session's tests: look at this test's jobs only.
    return [job_id for job_id, _ in reaped.resent if job_id in mine]


def test_reaper_resends_a_queued_job_whose_message_was_lost(database: str) -> None:
    stale = add_job(enqueued_at=utcnow() - timedelta(hours=1))
    fresh = add_job()
    running = add_job()
    assert claim(running, "w") is not None
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == running).values(enqueued_at=utcnow() - timedelta(hours=1)))
    mine = (stale, fresh, running)
    with session_scope() as session:
        assert _resent(reap_expired(session=session, resend_after_seconds=600), *mine) == [stale]
    assert load(stale).status == JobStatus.queued and load(stale).enqueued_at > utcnow() - timedelta(minutes=1)
    with session_scope() as session:  # sent again just now: not again at the next reap
        assert _resent(reap_expired(session=session, resend_after_seconds=600), *mine) == []
    with session_scope() as session:  # without the option the reaper leaves queued jobs alone
        session.execute(update(Job).where(Job.id == fresh).values(enqueued_at=utcnow() - timedelta(hours=1)))
    with session_scope() as session:
        assert _resent(reap_expired(session=session), *mine) == []
    with session_scope() as session:
        session.execute(update(Job).where(Job.id.in_(mine)).values(status=JobStatus.cancelled))


def test_a_requeued_job_is_not_resent_at_once(database: str) -> None:
    job_id = add_job(enqueued_at=utcnow() - timedelta(hours=1))
    assert claim(job_id, "dead") is not None
    expire(job_id)
    with session_scope() as session:
        reaped = reap_expired(session=session, resend_after_seconds=600)
    assert job_id in [j for j, _ in reaped.requeued] and _resent(reaped, job_id) == []
    with session_scope() as session:
        assert _resent(reap_expired(session=session, resend_after_seconds=600), job_id) == []
