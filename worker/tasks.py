"""The Celery task: claim the job, run the engine, record how it ended. Takes an id; re-reads the row."""

import logging
import math
from pathlib import Path
from typing import Any

import redis
import torch
from redis.exceptions import RedisError

from app import storage
from app.config import Settings, get_settings
from app.db import session_scope
from app.loss_stream import cancel_key
from app.queue import TRAIN_TASK
from app.tables import JobStatus
from spec.job import JobSpec
from worker.celery_app import celery_app, process_index
from worker.claims import Claim, claim_job, finish_job, new_lease_owner, release_job
from worker.datasets import DatasetUnavailable
from worker.engine import FitResult, TrainingDiverged
from worker.heartbeat import Heartbeat
from worker.reporter import Reporter, record_artifacts
from worker.training import run_job

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 2000


@celery_app.task(name=TRAIN_TASK, ignore_result=True)
def train_job(job_id: str) -> str:
    """Train job `job_id` unless another worker holds it or it is done; returns what happened."""
    settings = get_settings()
    lease_owner = new_lease_owner()
    with session_scope() as session:
        claim = claim_job(session=session, job_id=job_id, lease_owner=lease_owner,
                          lease_seconds=settings.lease_seconds)
    if claim is None:
        log.info("job %s not claimed: running elsewhere, finished, cancelled or out of attempts", job_id)
        return "skipped"
    log.info("job %s claimed by %s (attempt %d of %d)", job_id, lease_owner, claim.attempt, claim.max_attempts)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=settings.redis_timeout_seconds,
                                  socket_connect_timeout=settings.redis_timeout_seconds)
    try:
        return run_claimed(claim, client=client, settings=settings)
    finally:
        client.close()


def run_claimed(claim: Claim, *, client: redis.Redis, settings: Settings) -> str:
    """Train a claimed job with heartbeat and reporter; returns the status it ended with."""
    job_dir = storage.job_dir(settings.artifacts_path, claim.job_id)
    outcome: FitResult | str
    try:
        with Heartbeat(job_id=claim.job_id, lease_owner=claim.lease_owner, client=client,
                       settings=settings) as heartbeat, \
             Reporter(job_id=claim.job_id, lease_owner=claim.lease_owner, client=client, settings=settings,
                      stop=heartbeat.stop) as reporter:
            outcome = train(claim, job_dir, reporter, settings)
            try:
                reporter.close()
            except Exception as e:
                log.exception("job %s: losses could not be persisted", claim.job_id)
                outcome = f"the losses could not be saved to the database: {type(e).__name__}: {e}"
    except BaseException as e:
        # The worker is being shut down (SystemExit, KeyboardInterrupt): hand the job to the next worker.
        # Other errors propagate: the lease then expires and the reaper requeues (attempts are counted).
        if not isinstance(e, Exception):
            _hand_back(claim)
        raise
    if heartbeat.lease_lost or reporter.lease_lost:
        log.warning("job %s: lease lost; another worker owns it now, nothing recorded", claim.job_id)
        return "lease lost"
    return record(claim, outcome, cancelled=heartbeat.cancelled, job_dir=job_dir, client=client)


def train(claim: Claim, job_dir: Path, reporter: Reporter, settings: Settings) -> FitResult | str:
    """The engine's result, or why it failed, in words for the user (the traceback goes to the log)."""
    try:
        spec = JobSpec.model_validate(claim.spec)
        select_gpu()
        return run_job(spec, job_dir, settings=settings, hooks=reporter)
    except (DatasetUnavailable, TrainingDiverged) as e:  # their messages are written for the user
        log.warning("job %s failed: %s", claim.job_id, e)
        return str(e)[:MAX_ERROR_CHARS]
    except torch.cuda.OutOfMemoryError as e:
        log.exception("job %s ran out of GPU memory", claim.job_id)
        detail = str(e).splitlines()[0] if str(e) else ""
        return (f"CUDA out of memory: try a smaller batch_size or model. {detail}").strip()[:MAX_ERROR_CHARS]
    except Exception as e:
        log.exception("job %s failed", claim.job_id)
        return f"{type(e).__name__}: {e}"[:MAX_ERROR_CHARS]


def record(claim: Claim, outcome: FitResult | str, *, cancelled: bool, job_dir: Path,
           client: redis.Redis) -> str:
    """Write the final status (if we still hold the lease) and drop the job's cancel flag."""
    error: str | None = None
    result: dict[str, Any] | None = None
    if isinstance(outcome, str):
        status, error = JobStatus.failed, outcome
    elif outcome.status == "stopped":
        status = JobStatus.cancelled
        if not cancelled:
            log.warning("job %s stopped without a cancel request; recording it as cancelled", claim.job_id)
    else:
        status, result = JobStatus.succeeded, result_of(outcome, job_dir)
    with session_scope() as session:
        recorded = finish_job(session=session, job_id=claim.job_id, lease_owner=claim.lease_owner,
                              status=status, error=error, result=result)
        if recorded:
            record_artifacts(session, claim.job_id, job_dir)
    if not recorded:
        log.warning("job %s: lease lost before the end; %s not recorded", claim.job_id, status)
        return "lease lost"
    try:
        client.delete(cancel_key(claim.job_id))
    except RedisError as e:
        log.warning("job %s: cancel flag not cleared: %s", claim.job_id, e)
    log.info("job %s %s", claim.job_id, status)
    return str(status)


def result_of(fit: FitResult, job_dir: Path) -> dict[str, Any]:
    """The summary stored in jobs.result (non-finite numbers become null: JSON has no NaN)."""
    return {
        "test_accuracy": _finite(fit.test_accuracy),
        "test_loss": _finite(fit.test_loss),
        "val_loss": _finite(fit.val_loss),
        "val_accuracy": _finite(fit.val_accuracy),
        "best_epoch": fit.best_epoch,
        "best_loss": _finite(fit.best_loss),
        "epochs": len(fit.history),
        "steps": fit.steps,
        "device": fit.device,
        "weights": {which: str((job_dir / name).resolve()) for which, name in storage.WEIGHT_FILES.items()},
    }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def select_gpu() -> None:
    """Spread a prefork worker's processes over the GPUs ("cuda" means this process's own GPU)."""
    index = process_index()
    if index is not None and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        torch.cuda.set_device(index % torch.cuda.device_count())


def _hand_back(claim: Claim) -> None:
    try:
        with session_scope() as session:
            released = release_job(session=session, job_id=claim.job_id, lease_owner=claim.lease_owner)
        if released == JobStatus.queued:
            celery_app.send_task(TRAIN_TASK, args=[claim.job_id], queue=claim.queue)
            log.warning("job %s interrupted by the worker's shutdown; requeued", claim.job_id)
    except Exception:
        log.exception("job %s: could not requeue after an interruption; the reaper will", claim.job_id)
