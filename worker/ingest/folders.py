"""What ingests leave on the shared disk that nobody owns any more: a dataset folder without a dataset row (an
upload whose API process died mid-stream, or a folder a deletion could not finish removing), swept by the reaper once
untouched for an hour; and what an attempt that died left in its folder (a decompressed tar, a half-written store),
removed by the next attempt."""

import logging
import shutil
import time
from pathlib import Path

from sqlalchemy import select

from app.core import storage
from app.core.config import get_settings
from app.core.db import session_scope
from app.core.tables import Dataset, is_id
from worker.ingest.decode import SCRATCH_PREFIX

log = logging.getLogger(__name__)

ORPHAN_AFTER_SECONDS = 3600


def sweep_orphan_folders(datasets_dir: Path, *, older_than: float = ORPHAN_AFTER_SECONDS) -> list[str]:
    """Remove the folders named like a dataset id that have no row and sat untouched `older_than` seconds."""
    if not datasets_dir.is_dir():
        return []
    folders = {p.name: p for p in datasets_dir.iterdir() if p.is_dir() and is_id(p.name)}
    if not folders:
        return []
    with session_scope() as session:
        known = set(session.scalars(select(Dataset.id).where(Dataset.id.in_(folders))))
    removed = []
    cutoff = time.time() - older_than
    for name, folder in folders.items():
        try:
            if name in known or storage.last_touched(folder) > cutoff:
                continue
        except FileNotFoundError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(name)
    if removed:
        log.warning("reaper: removed %d orphaned dataset folder(s): %s", len(removed), removed)
    return removed


def sweep_uploads() -> None:
    """The reaper's sweep (worker.leases.reaper) of the configured datasets folder."""
    sweep_orphan_folders(get_settings().datasets_path)


def remove_scratch(folder: Path) -> None:
    """What an attempt that died left: a decompressed tar, a half-written store."""
    for pattern in (f"{SCRATCH_PREFIX}*", f".{storage.STORE}.*.tmp"):
        for path in folder.glob(pattern):
            path.unlink(missing_ok=True)
