"""Dataset folders without a dataset row: an upload whose API process died mid-stream, or a folder a
deletion could not finish removing. The reaper removes them once nothing has touched them for an hour."""

import logging
import re
import shutil
import time
from pathlib import Path

from sqlalchemy import select

from app.db import session_scope
from app.tables import Dataset

log = logging.getLogger(__name__)

ORPHAN_AFTER_SECONDS = 3600
DATASET_ID = re.compile(r"[0-9a-f]{32}")


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
