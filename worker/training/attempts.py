"""Dataset folders without a dataset row: an upload whose API process died mid-stream, or a folder a
deletion could not finish removing. The reaper removes them once nothing has touched them for an hour.

Likewise a job's attempt folders (app.core.storage.attempt_dir) whose claim no longer holds the job: a worker
that died with an epoch staged. The next claim of the job removes them; these sweeps catch the jobs that
are not claimed again (failed or cancelled by the reaper, or a worker killed after it was fenced off).
"""

import logging
import re
import shutil
import time
from pathlib import Path

from sqlalchemy import select

from app.core.db import session_scope
from app.core.storage import ATTEMPT_PREFIX, attempt_dirs, attempt_token
from app.core.tables import Dataset, Job

log = logging.getLogger(__name__)

ORPHAN_AFTER_SECONDS = 3600
DATASET_ID = JOB_ID = re.compile(r"[0-9a-f]{32}")
# Job ids per query of sweep_attempt_folders.
ID_BATCH = 500


def _last_touched(folder: Path) -> float:
    return max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.iterdir())])


def sweep_orphan_folders(datasets_dir: Path, *, older_than: float = ORPHAN_AFTER_SECONDS) -> list[str]:
    """Remove the folders named like a dataset id that have no row and sat untouched `older_than` seconds."""
    if not datasets_dir.is_dir():
        return []
    folders = {p.name: p for p in datasets_dir.iterdir() if p.is_dir() and DATASET_ID.fullmatch(p.name)}
    if not folders:
        return []
    with session_scope() as session:
        known = set(session.scalars(select(Dataset.id).where(Dataset.id.in_(folders))))
    removed = []
    cutoff = time.time() - older_than
    for name, folder in folders.items():
        try:
            if name in known or _last_touched(folder) > cutoff:
                continue
        except FileNotFoundError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(name)
    if removed:
        log.warning("reaper: removed %d orphaned dataset folder(s): %s", len(removed), removed)
    return removed


def remove_attempt_folders(job_dir: Path) -> list[str]:
    """Delete every attempt folder of a job that nobody trains any more; returns their names."""
    removed = []
    for folder in attempt_dirs(job_dir):
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
    return removed


def _lease_owners(job_ids: list[str]) -> dict[str, str | None]:
    owners: dict[str, str | None] = {}
    with session_scope() as session:
        for start in range(0, len(job_ids), ID_BATCH):
            batch = job_ids[start:start + ID_BATCH]
            owners.update((job_id, owner) for job_id, owner in session.execute(
                select(Job.id, Job.lease_owner).where(Job.id.in_(batch))))
    return owners


def sweep_attempt_folders(artifacts_dir: Path, *, older_than: float = ORPHAN_AFTER_SECONDS) -> list[str]:
    """Remove the attempt folders whose claim no longer holds its job (or whose job is gone), untouched for
    `older_than` seconds; returns them as "<job id>/<folder>"."""
    if not artifacts_dir.is_dir():
        return []
    staged = {p.name: attempt_dirs(p) for p in artifacts_dir.iterdir() if p.is_dir() and JOB_ID.fullmatch(p.name)}
    staged = {job_id: folders for job_id, folders in staged.items() if folders}
    if not staged:
        return []
    owners = _lease_owners(sorted(staged))
    removed = []
    cutoff = time.time() - older_than
    for job_id, folders in staged.items():
        owner = owners.get(job_id)
        current = ATTEMPT_PREFIX + attempt_token(owner) if owner is not None else None
        for folder in folders:
            try:
                if folder.name == current or _last_touched(folder) > cutoff:
                    continue
            except FileNotFoundError:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(f"{job_id}/{folder.name}")
    if removed:
        log.warning("reaper: removed %d attempt folder(s) of claims that no longer hold their job: %s",
                    len(removed), removed)
    return removed
