"""A job's attempt folders (app.core.storage.attempt_dir): where a claim stages its epochs' files until it commits
them under its lease (worker.training.reporter). What a claim that lost the job or died left there never lands: the
next claim of the job removes it, the reaper removes it for jobs it ended (worker.training.jobs), and a sweep
catches the rest (jobs not claimed again, a worker killed after it was fenced off) once untouched for an hour.
"""

import logging
import time
from pathlib import Path

from sqlalchemy import select

from app.core.config import get_settings
from app.core.db import session_scope
from app.core.storage import ATTEMPT_PREFIX, attempt_dir, attempt_dirs, attempt_token, last_touched
from app.core.tables import Job, is_id
from worker.training.checkpoints import discard

log = logging.getLogger(__name__)

ORPHAN_AFTER_SECONDS = 3600
# Job ids per query of sweep_attempt_folders.
ID_BATCH = 500
# Sweeping every job's folder reads the whole artifacts tree: at this pace rather than at every reap.
SWEEP_EVERY_SECONDS = 600.0


def remove_attempt(job_dir: Path, lease_owner: str) -> None:
    """Delete a claim's attempt folder, and the job's folder if that leaves it empty (a deleted job's)."""
    discard(attempt_dir(job_dir, lease_owner))
    try:
        job_dir.rmdir()
    except OSError:
        pass  # not empty (the usual case), or gone


def remove_leftover_attempts(job_dir: Path, lease_owner: str) -> None:
    """At a claim: delete the attempt folders earlier claims left (a worker that died): their files never landed.

    One of a worker frozen past its lease may still be in use: it then fails to write there, or its commit is
    refused; either way nothing of it lands."""
    ours = attempt_dir(job_dir, lease_owner)
    for folder in attempt_dirs(job_dir):
        if folder != ours:
            log.info("job %s: removing %s left by an earlier attempt", job_dir.name, folder.name)
            discard(folder)


def remove_attempt_folders(job_dir: Path) -> list[str]:
    """Delete every attempt folder of a job that nobody trains any more; returns their names."""
    removed = []
    for folder in attempt_dirs(job_dir):
        discard(folder)
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
    staged = {p.name: attempt_dirs(p) for p in artifacts_dir.iterdir() if p.is_dir() and is_id(p.name)}
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
                if folder.name == current or last_touched(folder) > cutoff:
                    continue
            except FileNotFoundError:
                continue
            discard(folder)
            removed.append(f"{job_id}/{folder.name}")
    if removed:
        log.warning("reaper: removed %d attempt folder(s) of claims that no longer hold their job: %s",
                    len(removed), removed)
    return removed


_next_sweep = 0.0


def sweep_attempts() -> None:
    """The reaper's sweep (worker.leases.reaper): sweep_attempt_folders, at most every SWEEP_EVERY_SECONDS."""
    global _next_sweep
    if time.monotonic() < _next_sweep:
        return
    _next_sweep = time.monotonic() + SWEEP_EVERY_SECONDS
    sweep_attempt_folders(get_settings().artifacts_path)
