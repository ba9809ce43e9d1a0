"""Ingest leases in the datasets row and the reaper's part for uploads, on PostgreSQL and SQLite; orphaned
upload folders."""

import os
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update

from app.core.db import session_scope
from app.core.tables import Dataset, DatasetStatus, utcnow
from worker.ingest.lease import (
    MAX_INGEST_ATTEMPTS,
    IngestClaim,
    IngestLease,
    claim_ingest,
    finish_ingest,
    reap_ingests,
    release_ingest,
    renew_ingest,
)
from worker.training.attempts import sweep_orphan_folders

LEASE = 30.0


def add_dataset(**fields: Any) -> str:
    dataset = Dataset(owner=f"test-{uuid.uuid4().hex[:8]}", name="d", options={"seed": 1}, archive_bytes=10,
                      **fields)
    with session_scope() as session:
        session.add(dataset)
    return dataset.id


def load(dataset_id: str) -> Dataset:
    with session_scope() as session:
        dataset = session.get(Dataset, dataset_id)
        assert dataset is not None
        return dataset


def claim(dataset_id: str, owner: str) -> IngestClaim | None:
    with session_scope() as session:
        return claim_ingest(session=session, dataset_id=dataset_id, lease_owner=owner, lease_seconds=LEASE)


def expire(dataset_id: str) -> None:
    with session_scope() as session:
        session.execute(update(Dataset).where(Dataset.id == dataset_id)
                        .values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def test_one_claim_wins_and_the_lease_carries_progress(database: str):
    dataset_id = add_dataset()
    first = claim(dataset_id, "w1")
    assert first is not None and first.attempt == 1 and first.options == {"seed": 1}
    assert claim(dataset_id, "w2") is None
    with session_scope() as session:
        assert renew_ingest(session=session, dataset_id=dataset_id, lease_owner="w1", lease_seconds=LEASE,
                            done=5, total=9)
        assert not renew_ingest(session=session, dataset_id=dataset_id, lease_owner="w2", lease_seconds=LEASE,
                                done=1, total=9)
    assert (load(dataset_id).images_done, load(dataset_id).images_total) == (5, 9)
    with session_scope() as session:
        assert not finish_ingest(session=session, dataset_id=dataset_id, lease_owner="w2",
                                 values={"status": DatasetStatus.ready})
        assert finish_ingest(session=session, dataset_id=dataset_id, lease_owner="w1",
                             values={"status": DatasetStatus.failed, "error": "bad"})
    done = load(dataset_id)
    assert (done.status, done.error, done.lease_owner) == ("failed", "bad", None) and done.ready_at is not None
    assert claim(dataset_id, "w3") is None  # finished: never claimed again


def test_an_expired_lease_is_reclaimed_and_a_shutdown_gives_the_attempt_back(database: str):
    dataset_id = add_dataset()
    assert claim(dataset_id, "w1") is not None
    expire(dataset_id)
    second = claim(dataset_id, "w2")
    assert second is not None and second.attempt == 2
    with session_scope() as session:
        assert not release_ingest(session=session, dataset_id=dataset_id, lease_owner="w1")
        assert release_ingest(session=session, dataset_id=dataset_id, lease_owner="w2")
    released = load(dataset_id)
    assert (released.attempt, released.lease_owner, released.status) == (1, None, "processing")


def test_the_reaper_resends_lost_and_orphaned_ingests_and_fails_the_hopeless(database: str):
    lost = add_dataset(enqueued_at=utcnow() - timedelta(seconds=700))
    fresh = add_dataset()
    dead = add_dataset()
    assert claim(dead, "w1") is not None
    expire(dead)
    hopeless = add_dataset(attempt=MAX_INGEST_ATTEMPTS - 1)
    assert claim(hopeless, "w1") is not None
    expire(hopeless)
    with session_scope() as session:
        reaped = reap_ingests(session=session, resend_after_seconds=600)
    assert sorted(reaped.resent) == sorted([lost, dead]) and reaped.failed == [hopeless]
    assert load(dead).lease_owner is None and load(fresh).enqueued_at is not None
    failed = load(hopeless)
    assert failed.status == "failed" and "interrupted 3 times" in (failed.error or "")
    with session_scope() as session:  # a second reaper finds nothing left to do
        again = reap_ingests(session=session, resend_after_seconds=600)
    assert again.resent == [] and again.failed == []


def test_the_lease_thread_notices_a_deleted_dataset(database: str):
    dataset_id = add_dataset()
    taken = claim(dataset_id, "w1")
    assert taken is not None
    with IngestLease(taken, lease_seconds=LEASE, every=0.05) as lease:
        assert lease.progress(3, 10)
        with session_scope() as session:
            session.delete(session.get(Dataset, dataset_id))
        assert lease.lost.wait(5)
        assert not lease.progress(4, 10)


def test_orphaned_upload_folders_are_swept_after_an_hour(database: str, tmp_path: Path):
    root = tmp_path / "datasets"
    known = add_dataset()
    orphan, recent, other = uuid.uuid4().hex, uuid.uuid4().hex, "not-a-dataset"
    for name in (known, orphan, recent, other):
        (root / name).mkdir(parents=True)
        (root / name / "archive").write_bytes(b"x")
    hour_ago = time.time() - 3700
    for name in (known, orphan, other):
        for path in (root / name / "archive", root / name):
            os.utime(path, (hour_ago, hour_ago))
    assert sweep_orphan_folders(root) == [orphan]
    assert sorted(p.name for p in root.iterdir()) == sorted([known, recent, other])


def test_a_new_attempt_removes_what_a_dead_one_left(tmp_path: Path):
    from worker.ingest.task import remove_scratch

    for name in (".archive.0123.tar", ".store.safetensors.abc.tmp", "archive", "store.safetensors"):
        (tmp_path / name).write_bytes(b"x")
    remove_scratch(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive", "store.safetensors"]
