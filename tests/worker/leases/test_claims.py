"""The lease machinery (worker.leases) on both pipelines' tables, training jobs and dataset ingests, on PostgreSQL
and on SQLite (the embedded mode): one claim wins, an expired lease is taken over, the reaper requeues, fails and
resends, a shutdown hands the row back, the keeper notices a lost lease. Then what only jobs have: cancels."""

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from app.core.db import session_scope
from app.core.tables import Dataset, DatasetStatus, Job, JobStatus, utcnow
from worker.ingest.lease import DATASETS, MAX_INGEST_ATTEMPTS
from worker.leases.claims import claim as claim_row
from worker.leases.claims import finish, hand_back, holds, reap, renew, unqueue
from worker.leases.keeper import LeaseKeeper
from worker.leases.kind import LeasedKind
from worker.training.jobs import JOBS, Claim, cancel_requested, claim_job

LEASE = 30.0


def add_job(**fields: Any) -> str:
    job = Job(owner=f"test-{uuid.uuid4().hex[:8]}", spec={}, queue="cpu", **fields)
    with session_scope() as session:
        session.add(job)
    return job.id


def add_dataset(**fields: Any) -> str:
    dataset = Dataset(owner=f"test-{uuid.uuid4().hex[:8]}", name="d", options={"seed": 1}, archive_bytes=10,
                      **fields)
    with session_scope() as session:
        session.add(dataset)
    return dataset.id


def claim(job_id: str, owner: str) -> Claim | None:
    with session_scope() as session:
        return claim_job(session=session, job_id=job_id, lease_owner=owner, lease_seconds=LEASE)


@dataclass(frozen=True)
class Table:
    """A leased kind with what the tests need of it: add a row, read it back, what "ended" looks like."""

    kind: LeasedKind
    add: Callable[..., str]
    waiting_status: str
    claimed_status: str
    max_attempts_field: dict[str, Any]  # a row with one attempt left
    finished: dict[str, Any]  # values of a recorded outcome

    def load(self, object_id: str) -> Any:
        with session_scope() as session:
            row = session.get(self.kind.entity, object_id)
            assert row is not None
            return row

    def claim(self, object_id: str, owner: str) -> bool:
        with session_scope() as session:
            return claim_row(self.kind, session=session, object_id=object_id, lease_owner=owner, lease_seconds=LEASE)

    def expire(self, object_id: str) -> None:
        with session_scope() as session:
            session.execute(update(self.kind.entity).where(self.kind.entity.id == object_id)
                            .values(lease_expires_at=utcnow() - timedelta(seconds=1)))


JOB_TABLE = Table(JOBS, add_job, JobStatus.queued, JobStatus.running, {"max_attempts": 1},
                  {"status": JobStatus.succeeded, "result": {"test_accuracy": 0.5}})
DATASET_TABLE = Table(DATASETS, add_dataset, DatasetStatus.processing, DatasetStatus.processing,
                      {"attempt": MAX_INGEST_ATTEMPTS - 1}, {"status": DatasetStatus.failed, "error": "bad"})


@pytest.fixture(params=[JOB_TABLE, DATASET_TABLE], ids=["jobs", "datasets"])
def table(request: pytest.FixtureRequest, database: str) -> Table:
    found: Table = request.param
    return found


def test_of_two_simultaneous_claims_one_wins(table: Table) -> None:
    object_id = table.add()
    barrier = threading.Barrier(2)
    results: dict[str, bool] = {}

    def contend(owner: str) -> None:
        barrier.wait(timeout=10)
        results[owner] = table.claim(object_id, owner)

    threads = [threading.Thread(target=contend, args=(owner,)) for owner in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    winners = [owner for owner, won in results.items() if won]
    assert len(results) == 2 and len(winners) == 1
    row = table.load(object_id)
    assert (row.status, row.lease_owner, row.attempt) == (table.claimed_status, winners[0], 1)
    assert row.lease_expires_at is not None and row.lease_expires_at > utcnow() + timedelta(seconds=LEASE - 5)
    if table is JOB_TABLE:
        assert row.started_at is not None


def test_an_expired_lease_can_be_taken_over(table: Table) -> None:
    object_id = table.add()
    assert table.claim(object_id, "a") and table.load(object_id).attempt == 1
    assert not table.claim(object_id, "b")
    started = getattr(table.load(object_id), "started_at", None)
    table.expire(object_id)
    assert table.claim(object_id, "b")
    row = table.load(object_id)
    assert row.lease_owner == "b" and row.attempt == 2
    assert getattr(row, "started_at", None) == started  # a job keeps the time its first attempt started
    kind = table.kind
    with session_scope() as session:
        assert not renew(kind, session=session, object_id=object_id, lease_owner="a", lease_seconds=LEASE)
        assert not holds(kind, session=session, object_id=object_id, lease_owner="a")
        assert not finish(kind, session=session, object_id=object_id, lease_owner="a", values=table.finished)
        assert hand_back(kind, session=session, object_id=object_id, lease_owner="a") is None
        assert renew(kind, session=session, object_id=object_id, lease_owner="b", lease_seconds=LEASE)
        assert holds(kind, session=session, object_id=object_id, lease_owner="b")
    assert table.load(object_id).status == table.claimed_status


def test_a_renewal_writes_its_values_and_finish_records_and_releases(table: Table) -> None:
    object_id = table.add()
    assert table.claim(object_id, "w1")
    assert not table.claim(object_id, "w2")
    kind = table.kind
    progress = {"images_done": 5, "images_total": 9} if table is DATASET_TABLE else {"step": 5, "total_steps": 9}
    with session_scope() as session:
        assert renew(kind, session=session, object_id=object_id, lease_owner="w1", lease_seconds=LEASE,
                     values=progress)
        assert not renew(kind, session=session, object_id=object_id, lease_owner="w2", lease_seconds=LEASE,
                         values={name: 1 for name in progress})
    assert {name: getattr(table.load(object_id), name) for name in progress} == progress
    with session_scope() as session:
        assert not finish(kind, session=session, object_id=object_id, lease_owner="w2", values=table.finished)
        assert finish(kind, session=session, object_id=object_id, lease_owner="w1", values=table.finished)
    done = table.load(object_id)
    assert {name: getattr(done, name) for name in table.finished} == table.finished
    assert done.lease_owner is None and done.lease_expires_at is None
    assert (done.finished_at if table is JOB_TABLE else done.ready_at) is not None
    with session_scope() as session:
        assert not finish(kind, session=session, object_id=object_id, lease_owner="w1", values=table.finished)
    assert not table.claim(object_id, "w3")  # finished: never claimed again


def test_the_reaper_requeues_and_fails_expired_rows_and_a_failed_send_is_reaped_again(table: Table) -> None:
    requeue, exhausted, alive = table.add(), table.add(**table.max_attempts_field), table.add()
    for object_id in (requeue, exhausted, alive):
        assert table.claim(object_id, f"dead-{object_id}")
    for object_id in (requeue, exhausted):
        table.expire(object_id)
    with session_scope() as session:
        reaped = reap(table.kind, session=session)
    requeued = [i for i, _ in reaped.requeued]
    assert requeue in requeued and exhausted in reaped.failed
    assert alive not in requeued + reaped.failed + reaped.cancelled
    again = table.load(requeue)
    assert (again.status, again.lease_owner, again.lease_expires_at, again.attempt) == \
        (table.waiting_status, None, None, 1)
    failed = table.load(exhausted)
    assert failed.status == "failed" and failed.lease_owner is None
    if table is JOB_TABLE:
        assert (failed.error or "").startswith("worker lost: the worker running attempt 1 of 1")
        assert (requeue, "cpu") in reaped.requeued and failed.finished_at is not None
    else:
        assert "interrupted 3 times" in (failed.error or "") and failed.ready_at is not None
    assert table.load(alive).status == table.claimed_status and table.load(alive).lease_owner is not None
    with session_scope() as session:  # a second reaper finds nothing left to do
        second = reap(table.kind, session=session)
    assert not ({requeue, exhausted} & ({i for i, _ in second.requeued} | set(second.failed)))

    # A requeue whose message could not be sent goes back to "expired", for the next reap.
    with session_scope() as session:
        assert unqueue(table.kind, session=session, object_id=requeue)
    with session_scope() as session:
        assert requeue in [i for i, _ in reap(table.kind, session=session).requeued]
    assert table.claim(requeue, "b") and table.load(requeue).attempt == 2


def test_a_hand_back_does_not_count_the_attempt(table: Table) -> None:
    object_id = table.add()
    assert table.claim(object_id, "w1")
    table.expire(object_id)
    assert table.claim(object_id, "w2") and table.load(object_id).attempt == 2
    with session_scope() as session:
        assert hand_back(table.kind, session=session, object_id=object_id, lease_owner="w1") is None
        assert hand_back(table.kind, session=session, object_id=object_id, lease_owner="w2") == "requeued"
        assert hand_back(table.kind, session=session, object_id=object_id, lease_owner="w2") is None
    released = table.load(object_id)
    assert (released.attempt, released.lease_owner, released.status) == (1, None, table.waiting_status)
    assert table.claim(object_id, "w3")


def _resent(reaped: Any, *mine: str) -> list[str]:
    # The PostgreSQL database is shared by the session's tests: look at this test's rows only.
    return [object_id for object_id, _ in reaped.resent if object_id in mine]


def test_the_reaper_resends_a_waiting_row_whose_message_was_lost(table: Table) -> None:
    kind = table.kind
    stale = table.add(enqueued_at=utcnow() - timedelta(hours=1))
    fresh = table.add()
    claimed = table.add()
    assert table.claim(claimed, "w")
    with session_scope() as session:
        session.execute(update(kind.entity).where(kind.entity.id == claimed)
                        .values(enqueued_at=utcnow() - timedelta(hours=1)))
    mine = (stale, fresh, claimed)
    with session_scope() as session:
        assert _resent(reap(kind, session=session, resend_after_seconds=600), *mine) == [stale]
    assert table.load(stale).status == table.waiting_status
    assert table.load(stale).enqueued_at > utcnow() - timedelta(minutes=1)
    with session_scope() as session:  # sent again just now: not again at the next reap
        assert _resent(reap(kind, session=session, resend_after_seconds=600), *mine) == []
    with session_scope() as session:  # without the option the reaper leaves waiting rows alone
        session.execute(update(kind.entity).where(kind.entity.id == fresh)
                        .values(enqueued_at=utcnow() - timedelta(hours=1)))
    with session_scope() as session:
        assert _resent(reap(kind, session=session), *mine) == []
    with session_scope() as session:
        session.execute(update(kind.entity).where(kind.entity.id.in_(mine)).values(status="failed"))


def test_a_requeued_row_is_not_resent_at_once(table: Table) -> None:
    object_id = table.add(enqueued_at=utcnow() - timedelta(hours=1))
    assert table.claim(object_id, "dead")
    table.expire(object_id)
    with session_scope() as session:
        reaped = reap(table.kind, session=session, resend_after_seconds=600)
    assert object_id in [i for i, _ in reaped.requeued] and _resent(reaped, object_id) == []
    with session_scope() as session:
        assert _resent(reap(table.kind, session=session, resend_after_seconds=600), object_id) == []


def test_the_keeper_notices_a_deleted_row(table: Table) -> None:
    object_id = table.add()
    assert table.claim(object_id, "w1")
    with LeaseKeeper(table.kind, object_id, "w1", lease_seconds=LEASE, every=0.05) as keeper:
        assert not keeper.lost.wait(0.2) and not keeper.stop.is_set()
        with session_scope() as session:
            session.delete(session.get(table.kind.entity, object_id))
        assert keeper.lost.wait(5) and keeper.stop.is_set() and keeper.lease_lost


# What only training jobs have: cancels, and the rows a claim refuses for them.

@pytest.mark.parametrize("fields", [
    {"attempt": 3, "max_attempts": 3},
    {"cancel_requested": True},
    {"status": JobStatus.succeeded},
    {"status": JobStatus.cancelled},
], ids=["out-of-attempts", "cancel-requested", "succeeded", "cancelled"])
def test_what_job_cannot_be_claimed(database: str, fields: dict[str, Any]) -> None:
    job_id = add_job(**fields)
    assert claim(job_id, "a") is None
    assert JOB_TABLE.load(job_id).lease_owner is None


@pytest.mark.parametrize("fields", [
    {"attempt": MAX_INGEST_ATTEMPTS},
    {"status": DatasetStatus.ready},
    {"status": DatasetStatus.failed},
], ids=["out-of-attempts", "ready", "failed"])
def test_what_dataset_cannot_be_claimed(database: str, fields: dict[str, Any]) -> None:
    dataset_id = add_dataset(**fields)
    assert not DATASET_TABLE.claim(dataset_id, "a")
    assert DATASET_TABLE.load(dataset_id).lease_owner is None


def test_a_claim_reads_the_job_and_its_cancel_request(database: str) -> None:
    job_id = add_job(max_attempts=4)
    claimed = claim(job_id, "a")
    assert claimed is not None and (claimed.job_id, claimed.lease_owner, claimed.attempt) == (job_id, "a", 1)
    assert (claimed.max_attempts, claimed.queue, claimed.spec) == (4, "cpu", {})
    with session_scope() as session:
        assert not cancel_requested(session, job_id)
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
        assert renew(JOBS, session=session, object_id=job_id, lease_owner="a", lease_seconds=LEASE)
        assert cancel_requested(session, job_id)


def test_the_reaper_ends_an_expired_job_whose_cancel_was_requested(database: str) -> None:
    cancelled = add_job()
    assert claim(cancelled, "dead") is not None
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == cancelled).values(cancel_requested=True))
    JOB_TABLE.expire(cancelled)
    with session_scope() as session:
        reaped = reap(JOBS, session=session)
    assert cancelled in reaped.cancelled and cancelled not in [j for j, _ in reaped.requeued] + reaped.failed
    ended = JOB_TABLE.load(cancelled)
    assert ended.status == JobStatus.cancelled and ended.finished_at is not None and ended.lease_owner is None


def test_a_hand_back_ends_a_job_whose_cancel_was_requested(database: str) -> None:
    job_id, cancelling = add_job(), add_job()
    assert claim(job_id, "a") is not None and claim(cancelling, "a") is not None
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == cancelling).values(cancel_requested=True))
        assert hand_back(JOBS, session=session, object_id=job_id, lease_owner="a") == "requeued"
        assert hand_back(JOBS, session=session, object_id=cancelling, lease_owner="a") == "cancelled"
        assert hand_back(JOBS, session=session, object_id=job_id, lease_owner="a") is None
    assert (JOB_TABLE.load(job_id).status, JOB_TABLE.load(job_id).attempt, JOB_TABLE.load(job_id).lease_owner) == \
        (JobStatus.queued, 0, None)
    assert JOB_TABLE.load(cancelling).status == JobStatus.cancelled
    assert claim(job_id, "b") is not None
