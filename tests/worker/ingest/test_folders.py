"""What ingests leave on the shared disk: orphaned upload folders (swept after an hour), what a dead attempt left."""

import os
import time
import uuid
from pathlib import Path

from tests.worker.leases.test_claims import add_dataset
from worker.ingest.folders import remove_scratch, sweep_orphan_folders


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
    for name in (".archive.0123.tar", ".store.safetensors.abc.tmp", "archive", "store.safetensors"):
        (tmp_path / name).write_bytes(b"x")
    remove_scratch(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive", "store.safetensors"]
