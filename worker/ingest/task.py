"""The Celery task that ingests an uploaded dataset: claim it, decode the archive into a store, record how it
ended. Takes an id; re-reads the row. The archive is removed once the outcome is recorded."""

import logging
import shutil
from typing import Any

from celery import shared_task

from app.core import storage
from app.core.config import Settings, get_settings
from app.core.db import session_scope
from app.core.queue import INGEST_QUEUE, INGEST_TASK, queue_name
from app.core.tables import DatasetStatus
from spec.datasets import IngestOptions
from worker.ingest.decode import IngestFailed, IngestStopped, ingest, limits_of
from worker.ingest.folders import remove_scratch
from worker.ingest.lease import DATASETS, IngestClaim, IngestLease, claim_ingest, dataset_status
from worker.leases.claims import finish, new_lease_owner
from worker.leases.reaper import give_back

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 2000


@shared_task(name=INGEST_TASK, ignore_result=True)
def ingest_dataset(dataset_id: str) -> str:
    """Ingest dataset `dataset_id` unless another worker holds it or it is done; returns what happened."""
    settings = get_settings()
    with session_scope() as session:
        claim = claim_ingest(session=session, dataset_id=dataset_id, lease_owner=new_lease_owner(),
                             lease_seconds=settings.lease_seconds)
    if claim is None:
        log.info("dataset %s not claimed: ingesting elsewhere, done, deleted or out of attempts", dataset_id)
        return "skipped"
    log.info("dataset %s claimed by %s (attempt %d)", dataset_id, claim.lease_owner, claim.attempt)
    try:
        return run_ingest(claim, settings)
    except BaseException as e:
        if not isinstance(e, Exception):  # the worker is shutting down: hand the upload to the next one
            give_back(DATASETS, claim.dataset_id, claim.lease_owner, queue_name(INGEST_QUEUE, settings))
        raise


def run_ingest(claim: IngestClaim, settings: Settings) -> str:
    """Decode the claimed upload and record the outcome; returns the status it ended with."""
    folder = storage.dataset_dir(settings.datasets_path, claim.dataset_id)
    remove_scratch(folder)
    error: str | None = None
    with IngestLease(claim, lease_seconds=settings.lease_seconds, every=settings.heartbeat_seconds) as lease:
        try:
            result = ingest(folder / storage.ARCHIVE, folder, options=IngestOptions.model_validate(claim.options),
                            limits=limits_of(settings), max_pixels=settings.dataset_max_image_pixels,
                            max_store_bytes=settings.dataset_max_store_bytes, progress=lease.progress)
        except IngestStopped:
            return _lease_lost(claim, settings)
        except IngestFailed as e:
            log.warning("dataset %s failed: %s", claim.dataset_id, e)
            error = str(e)[:MAX_ERROR_CHARS]
        except Exception as e:
            log.exception("dataset %s: the ingest failed", claim.dataset_id)
            error = f"the ingest failed unexpectedly ({type(e).__name__}: {e}); upload the archive again"[
                :MAX_ERROR_CHARS]
    values: dict[str, Any]
    if error is not None:
        values = {"status": DatasetStatus.failed, "error": error}
    else:
        values = {"status": DatasetStatus.ready, "layout": result.layout, "info": result.info.model_dump(mode="json"),
                  "splits": result.splits, "skipped": result.skipped, "store_bytes": result.store_bytes,
                  "images_done": lease.done, "images_total": lease.total}
    with session_scope() as session:
        recorded = finish(DATASETS, session=session, object_id=claim.dataset_id, lease_owner=claim.lease_owner,
                          values=values)
    if not recorded:
        return _lease_lost(claim, settings)
    if error is not None:  # a failed dataset keeps its row (with the reason) and no files
        shutil.rmtree(folder, ignore_errors=True)
    else:
        (folder / storage.ARCHIVE).unlink(missing_ok=True)
    log.info("dataset %s %s", claim.dataset_id, values["status"])
    return str(values["status"])


def _lease_lost(claim: IngestClaim, settings: Settings) -> str:
    """Deleted or failed meanwhile: remove the files. Taken over by another worker (still processing, or
    ready): leave its folder alone."""
    with session_scope() as session:
        status = dataset_status(session=session, dataset_id=claim.dataset_id)
    if status is None or status == DatasetStatus.failed:
        shutil.rmtree(storage.dataset_dir(settings.datasets_path, claim.dataset_id), ignore_errors=True)
        log.info("dataset %s was %s during its ingest; its files are removed", claim.dataset_id,
                 "deleted" if status is None else "failed")
        return "deleted" if status is None else "failed"
    log.warning("dataset %s: ingest lease lost; another worker owns it now", claim.dataset_id)
    return "lease lost"
