"""The ingest's lease carries its progress, and tells the ingest to stop once the dataset is gone (the machinery
itself is tested for both pipelines in tests/worker/leases)."""

from app.core.db import session_scope
from app.core.tables import Dataset
from tests.worker.leases.test_claims import DATASET_TABLE, LEASE, add_dataset
from worker.ingest.lease import IngestLease, claim_ingest


def test_a_claim_reads_the_upload_and_the_lease_carries_progress_until_the_dataset_is_deleted(database: str):
    dataset_id = add_dataset()
    with session_scope() as session:
        taken = claim_ingest(session=session, dataset_id=dataset_id, lease_owner="w1", lease_seconds=LEASE)
    assert taken is not None and taken.attempt == 1 and taken.options == {"seed": 1}
    with IngestLease(taken, lease_seconds=LEASE, every=0.05) as lease:
        assert lease.progress(3, 10)
        for _ in range(100):
            if DATASET_TABLE.load(dataset_id).images_done == 3:
                break
            lease.lost.wait(0.05)
        assert (DATASET_TABLE.load(dataset_id).images_done, DATASET_TABLE.load(dataset_id).images_total) == (3, 10)
        with session_scope() as session:
            session.delete(session.get(Dataset, dataset_id))
        assert lease.lost.wait(5)
        assert not lease.progress(4, 10)
