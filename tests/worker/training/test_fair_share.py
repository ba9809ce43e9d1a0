"""Fair share: a free worker trains the fair choice of its queue's jobs, not the job its message names.

The rule (worker.leases.claims.fair_choice): the owner with the fewest running jobs, then the owner served least
recently (never served first), then that owner's oldest queued job. The choice query runs on PostgreSQL and
SQLite; the end-to-end test runs one real worker process.
"""

import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from app.core.db import new_session, session_scope
from app.core.queue import enqueue_training
from app.core.tables import Job, JobStatus, utcnow
from tests.processes import wait_for
from tests.worker.conftest import Workers, worker_processes
from worker.training.jobs import CLAIM_TRIES, Claim, ClaimContended, claim_next, fair_choice

T0 = utcnow() - timedelta(hours=1)


class Jobs:
    """Rows in a queue of this test's own, for owners of this test's own (the database is shared)."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.queue = f"fair-{self.tag}-cpu"

    def owner(self, name: str) -> str:
        return f"{name}-{self.tag}"

    def add(self, owner: str, *, minute: float = 0, queue: str | None = None, **fields: Any) -> str:
        job = Job(owner=self.owner(owner), spec={}, queue=queue or self.queue,
                  created_at=T0 + timedelta(minutes=minute), **fields)
        with session_scope() as session:
            session.add(job)
        return job.id

    def served(self, owner: str, *, minute: float, status: JobStatus = JobStatus.succeeded) -> str:
        """A job of `owner` started at T0 + minute (finished unless `status` says otherwise)."""
        return self.add(owner, minute=minute - 1, status=status, attempt=1,
                        started_at=T0 + timedelta(minutes=minute))

    def choice(self) -> str | None:
        with session_scope() as session:
            return session.scalar(fair_choice(self.queue))

    def claim(self, *, tries: int = CLAIM_TRIES) -> Claim | None:
        with session_scope() as session:
            return claim_next(session=session, queue=self.queue, lease_owner=f"w-{uuid.uuid4().hex}",
                              lease_seconds=60, tries=tries)


@pytest.fixture
def jobs(database: str) -> Jobs:
    return Jobs()


def test_the_owner_with_fewest_running_jobs_goes_first(jobs: Jobs) -> None:
    older = jobs.add("a", minute=0)
    jobs.served("a", minute=5, status=JobStatus.running)
    newer = jobs.add("b", minute=10)
    jobs.served("b", minute=20)  # served more recently than a, but has nothing running
    assert jobs.choice() == newer
    # Running jobs count whatever their queue.
    jobs.add("b", minute=30, queue=f"fair-{jobs.tag}-gpu", status=JobStatus.running, started_at=T0)
    jobs.add("b", minute=31, queue=f"fair-{jobs.tag}-gpu", status=JobStatus.running, started_at=T0)
    assert jobs.choice() == older


def test_ties_go_to_the_owner_served_least_recently_then_never_served_first(jobs: Jobs) -> None:
    jobs.served("a", minute=10)
    jobs.served("b", minute=5)
    a = jobs.add("a", minute=0)
    b = jobs.add("b", minute=1)
    assert jobs.choice() == b  # b's latest start (5) is older than a's (10), though a's job is older
    jobs.served("b", minute=15)
    assert jobs.choice() == a
    c = jobs.add("c", minute=2)  # never served: first, whatever the others' history
    assert jobs.choice() == c


def test_then_the_owners_oldest_queued_job(jobs: Jobs) -> None:
    jobs.add("a", minute=2)
    first = jobs.add("a", minute=1)
    jobs.add("b", minute=0, status=JobStatus.running, started_at=T0)  # b busy: a's turn
    jobs.add("b", minute=0.5)
    assert jobs.choice() == first
    with session_scope() as session:
        same_time = [Job(owner=jobs.owner("a"), spec={}, queue=jobs.queue, created_at=T0) for _ in range(2)]
        session.add_all(same_time)
    assert jobs.choice() == min(job.id for job in same_time)  # equal created_at: by id


@pytest.mark.parametrize("fields", [
    {"queue": "elsewhere"},
    {"cancel_requested": True},
    {"attempt": 3, "max_attempts": 3},
    {"status": JobStatus.running, "started_at": T0},
    {"status": JobStatus.succeeded},
], ids=["other-queue", "cancel-requested", "out-of-attempts", "running", "finished"])
def test_what_is_never_chosen(jobs: Jobs, fields: dict[str, Any]) -> None:
    excluded = jobs.add("a", minute=0, **fields)
    assert jobs.choice() is None and jobs.claim() is None
    eligible = jobs.add("b", minute=1)
    assert jobs.choice() == eligible
    claim = jobs.claim()
    assert claim is not None and claim.job_id == eligible and claim.queue == jobs.queue
    with new_session() as session:
        job = session.get(Job, excluded)
        assert job is not None and job.lease_owner is None


def test_claims_alternate_between_owners(jobs: Jobs) -> None:
    a = [jobs.add("a", minute=i) for i in range(3)]
    b = [jobs.add("b", minute=10 + i) for i in range(2)]
    order = []
    for _ in range(5):
        claim = jobs.claim()
        assert claim is not None and claim.attempt == 1
        order.append(claim.job_id)
        with session_scope() as session:  # it ran and ended: nothing of either owner is running
            session.execute(update(Job).where(Job.id == claim.job_id).values(status=JobStatus.succeeded))
    assert order == [a[0], b[0], a[1], b[1], a[2]]
    assert jobs.claim() is None


def test_a_claim_that_keeps_losing_says_so(jobs: Jobs) -> None:
    jobs.add("a")
    with pytest.raises(ClaimContended):
        jobs.claim(tries=0)
    assert jobs.claim() is not None


def test_simultaneous_claims_take_different_jobs(jobs: Jobs) -> None:
    ids = {jobs.add(owner, minute=i) for owner in ("a", "b") for i in range(3)}
    barrier = threading.Barrier(4)
    claimed: list[str] = []

    def claim_two() -> None:
        barrier.wait(timeout=10)
        for _ in range(2):
            claim = jobs.claim(tries=len(ids))  # a thread loses at most once per job the others claim
            if claim is not None:
                claimed.append(claim.job_id)

    threads = [threading.Thread(target=claim_two) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(claimed) == sorted(ids)  # each exactly once; two of the eight found nothing left
    with new_session() as session:
        rows = session.scalars(select(Job).where(Job.id.in_(ids))).all()
        assert all(r.status == JobStatus.running and r.attempt == 1 for r in rows)
        assert len({r.lease_owner for r in rows}) == 6


# --- one real worker process ---------------------------------------------------------------------------

TINY = {"dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"}, "epochs": 1, "batch_size": 32}


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, redis_url: str,
               tiny_data_root: Path) -> Iterator[Workers]:
    with worker_processes(tmp_path_factory.mktemp("fair"), postgres_url=postgres_url, redis_url=redis_url,
                          data_root=tiny_data_root) as workers:
        yield workers


def _started(workers: Workers, ids: list[str]) -> list[str]:
    with new_session() as session:
        rows: list[tuple[str, datetime]] = [
            (r.id, r.started_at) for r in session.scalars(select(Job).where(Job.id.in_(ids))) if r.started_at]
    return [job_id for job_id, _ in sorted(rows, key=lambda row: row[1])]


def test_a_second_owner_is_not_stuck_behind_a_backlog(one_worker: Workers) -> None:
    a, b = one_worker.owner("a"), one_worker.owner("b")
    backlog = [one_worker.submit({**TINY, "seed": i}, owner=a) for i in range(4)]
    late = one_worker.submit(TINY, owner=b)
    for job_id in [*backlog, late]:
        job = one_worker.wait_status(job_id, JobStatus.succeeded, JobStatus.failed, timeout=180)
        assert job.status == JobStatus.succeeded, job.error
    # One worker, one job at a time: b's job comes right after the job a had running, not after a's backlog.
    assert _started(one_worker, [*backlog, late]) == [backlog[0], late, *backlog[1:]]
    log = one_worker.workers[0].log()
    # Messages are tokens: the second message (a's) trained b's job.
    assert f"job {late} claimed by " in log and f"for the message of job {backlog[1]} " in log
    assert log.count(" claimed by ") >= 5 and "nothing to claim" not in log


def test_a_deleted_jobs_message_still_trains_a_job_of_its_queue(one_worker: Workers) -> None:
    waiting = one_worker.submit(TINY, owner=one_worker.owner("c"), send=False)  # its own message lost
    gone = uuid.uuid4().hex  # a job deleted after its message was sent
    enqueue_training(gone, one_worker.settings.queue_prefix + "cpu")
    job = one_worker.wait_status(waiting, JobStatus.succeeded, JobStatus.failed, timeout=120)
    assert job.status == JobStatus.succeeded, job.error
    wait_for(lambda: f"job {waiting} claimed by " in one_worker.workers[0].log(), timeout=10,
             what="the claim's log line")
    assert f"for the message of job {gone} in queue {one_worker.settings.queue_prefix}cpu" \
        in one_worker.workers[0].log()
    # A further token finds nothing to claim and is skipped.
    enqueue_training(uuid.uuid4().hex, one_worker.settings.queue_prefix + "cpu")
    wait_for(lambda: "nothing to claim in queue" in one_worker.workers[0].log(), timeout=30,
             what="the surplus token to be skipped")
