"""The Celery task: claim a job, run the engine, record how it ended. Takes an id; re-reads the rows.

A message is a token: "one unit of work is available in this queue". The worker that receives one claims
the fair choice among the queue's jobs (worker.leases.claims.fair_choice), which may be another job than the one the
message names. Tokens never fall short of claimable jobs: every way a job becomes queued sends one (the
submit; the reaper's requeue of a dead worker's job, undone if the send fails; a shutdown's hand-back; the
reaper's resend of a job queued so long its message may be lost, which also covers a send that failed), and
a token is only used up by claiming a job or by finding nothing claimable in its queue. A token that lost
the choice to other workers every time goes back to the queue (ClaimContended). Surplus tokens (duplicate
deliveries, resends, jobs cancelled or deleted while queued) end as cheap skips.
"""

import logging
import math
import re
from pathlib import Path
from typing import Any

import redis
import torch
from celery import shared_task
from redis.exceptions import RedisError

from app.core import storage
from app.core.config import Settings, get_settings
from app.core.db import session_scope
from app.core.loss_stream import LossStream
from app.core.queue import TRAIN_TASK, send
from app.core.redis_client import redis_client
from app.core.redis_keys import cancel_key, lease_key
from app.core.tables import JobStatus
from spec.job import JobSpec
from worker.leases.claims import finish, new_lease_owner
from worker.leases.reaper import give_back
from worker.process import process_index
from worker.training.attempts import remove_leftover_attempts
from worker.training.build import run_job
from worker.training.datasets import DatasetUnavailable
from worker.training.engine import FitResult, TrainingDiverged
from worker.training.heartbeat import Heartbeat
from worker.training.hooks import CombinedHooks, Hooks
from worker.training.jobs import JOBS, Claim, ClaimContended, claim_next, queue_of
from worker.training.records import record_artifacts
from worker.training.reporter import Reporter
from worker.training.tensorboard import TensorBoardWriter

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 2000


@shared_task(name=TRAIN_TASK, ignore_result=True, bind=True)
def train_job(self: Any, job_id: str) -> str:
    """A unit of work in the queue of job `job_id`'s message: train the fair choice of that queue's jobs
    (see the module docstring); returns what happened."""
    settings = get_settings()
    client = redis_client(settings)
    try:
        claim = claim_for(job_id, (self.request.delivery_info or {}).get("routing_key"), client=client,
                          settings=settings)
        return "skipped" if claim is None else run_claimed(claim, client=client, settings=settings)
    finally:
        client.close()


def claim_for(job_id: str, routing_key: str | None, *, client: redis.Redis, settings: Settings) -> Claim | None:
    """Claim the fair choice of the queue job_id's message came from; None (logged) when nothing is claimable."""
    lease_owner = new_lease_owner()
    with session_scope() as session:
        # The job's row says its queue; a deleted job's message still stands for a unit of work in the
        # queue it was delivered from.
        queue = queue_of(session, job_id) or routing_key
        if queue is None:
            log.warning("message of job %s: no such job and no queue in its delivery; skipped", job_id)
            return None
        try:
            claim = claim_next(session=session, queue=queue, lease_owner=lease_owner,
                               lease_seconds=settings.lease_seconds)
        except ClaimContended:
            # Other workers took every job we chose (we wrote nothing): keep the token for a worker that
            # finds one left, as a skip would lose it while jobs wait.
            send(TRAIN_TASK, job_id, queue)
            log.info("message of job %s: other workers won every choice in queue %s; sent again", job_id, queue)
            return None
        if claim is not None:
            fence_stream(claim, client)  # before the commit: the claim's row lock is still held
    if claim is None:
        log.info("message of job %s: nothing to claim in queue %s; skipped", job_id, queue)
        return None
    log.info("job %s claimed by %s (attempt %d of %d) for the message of job %s in queue %s", claim.job_id,
             lease_owner, claim.attempt, claim.max_attempts, job_id, queue)
    return claim


def fence_stream(claim: Claim, client: redis.Redis) -> None:
    """Make the job's loss stream take appends from this claim only (a frozen former owner's are refused)."""
    try:
        LossStream(client).fence(claim.job_id, claim.lease_owner)
    except RedisError as e:
        # The reporter's first append is refused then, and it sets the key after proving its lease.
        log.warning("job %s: loss stream lease key not set: %s", claim.job_id, e)


def run_claimed(claim: Claim, *, client: redis.Redis, settings: Settings) -> str:
    """Train a claimed job with heartbeat and reporter; returns the status it ended with."""
    job_dir = storage.job_dir(settings.artifacts_path, claim.job_id)
    remove_leftover_attempts(job_dir, claim.lease_owner)
    outcome: FitResult | str
    try:
        with Heartbeat(job_id=claim.job_id, lease_owner=claim.lease_owner, client=client,
                       settings=settings) as heartbeat, \
             Reporter(job_id=claim.job_id, lease_owner=claim.lease_owner, client=client, settings=settings,
                      stop=heartbeat.stop) as reporter, \
             TensorBoardWriter(storage.tensorboard_dir(job_dir), spec=claim.spec,
                               fenced=lambda: heartbeat.lease_lost or reporter.lease_lost) as tensorboard:
            # TensorBoard first: its on_epoch returns once the epoch's events are on disk, before the
            # Reporter is handed the epoch's checkpoint to commit (worker.training.tensorboard: no gap on resume).
            outcome = train(claim, job_dir, CombinedHooks(tensorboard, reporter), settings)
            tensorboard.close()
            try:
                reporter.close()
            except Exception as e:
                log.exception("job %s: losses could not be persisted", claim.job_id)
                outcome = user_error(f"the losses could not be saved to the database: {type(e).__name__}: {e}",
                                     settings)
    except BaseException as e:
        # The worker is being shut down (SystemExit, KeyboardInterrupt): hand the job to the next worker.
        # Other errors propagate: the lease then expires and the reaper requeues (attempts are counted).
        if not isinstance(e, Exception):
            give_back(JOBS, claim.job_id, claim.lease_owner, claim.queue)
        raise
    if heartbeat.lease_lost or reporter.lease_lost:
        log.warning("job %s: lease lost; another worker owns it now, nothing recorded", claim.job_id)
        return "lease lost"
    return record(claim, outcome, cancelled=heartbeat.cancelled, job_dir=job_dir, client=client)


def train(claim: Claim, job_dir: Path, hooks: Hooks, settings: Settings) -> FitResult | str:
    """The engine's result, or why it failed, in words for the user (the traceback goes to the log)."""
    try:
        spec = JobSpec.model_validate(claim.spec)
        select_gpu()
        return run_job(spec, job_dir, settings=settings, hooks=hooks)
    except (DatasetUnavailable, TrainingDiverged) as e:  # their messages are written for the user
        log.warning("job %s failed: %s", claim.job_id, e)
        return user_error(str(e), settings)
    except torch.cuda.OutOfMemoryError as e:
        log.exception("job %s ran out of GPU memory", claim.job_id)
        detail = str(e).splitlines()[0] if str(e) else ""
        return user_error(f"CUDA out of memory: try a smaller batch_size or model. {detail}".strip(), settings)
    except Exception as e:
        log.exception("job %s failed", claim.job_id)
        return user_error(f"{type(e).__name__}: {e}", settings)


def user_error(message: str, settings: Settings) -> str:
    """A failure as stored in jobs.error: no server paths (the full message is in the worker's log), bounded."""
    return scrub_paths(message, settings)[:MAX_ERROR_CHARS]


PATH_PLACEHOLDER = "<path>"
# An absolute path not inside a configured folder: POSIX ("/..."), home ("~/...") or Windows ("C:\...").
# Not after a word character, ':' or '/' (so "3/10", "loss/accuracy" and the path of a URL are left alone).
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/~<>.-])(?:~?/|[A-Za-z]:\\)[^\s'\"`,;()\[\]{}<>]*[^\s'\"`,;()\[\]{}<>.]")


def scrub_paths(message: str, settings: Settings) -> str:
    """`message` without server paths: the configured folders become <artifacts>, <datasets>, <data> and
    <state> (what follows them stays: it names the user's own files), any other absolute path <path>."""
    folders = {"<artifacts>": settings.artifacts_path, "<datasets>": settings.datasets_path,
               "<data>": settings.data_path, "<state>": settings.state_dir}
    spellings = sorted(((str(form), name) for name, folder in folders.items()
                        for form in {folder, folder.resolve()} if form.is_absolute() and form != form.parent),
                       key=lambda item: len(item[0]), reverse=True)  # a nested folder before its parent
    for spelling, name in spellings:
        message = re.sub(re.escape(spelling.rstrip("/")) + r"(?=/|\b|$)", name, message)
    return _ABSOLUTE_PATH.sub(PATH_PLACEHOLDER, message)


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
        status, result = JobStatus.succeeded, result_of(outcome)
    with session_scope() as session:
        recorded = finish(JOBS, session=session, object_id=claim.job_id, lease_owner=claim.lease_owner,
                          values={"status": status, "error": error, "result": result})
        if recorded:
            record_artifacts(session, claim.job_id, job_dir)
    if not recorded:
        log.warning("job %s: lease lost before the end; %s not recorded", claim.job_id, status)
        return "lease lost"
    try:
        # The job is over: nobody appends to its stream any more (a stale worker's append is refused).
        client.delete(cancel_key(claim.job_id), lease_key(claim.job_id))
    except RedisError as e:
        log.warning("job %s: cancel flag not cleared: %s", claim.job_id, e)
    log.info("job %s %s", claim.job_id, status)
    return str(status)


def result_of(fit: FitResult) -> dict[str, Any]:
    """The summary stored in jobs.result (non-finite numbers become null: JSON has no NaN). No file paths:
    the weights are served by GET /jobs/{id}/weights, from the job's folder."""
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
    }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def select_gpu() -> None:
    """Spread a prefork worker's processes over the GPUs ("cuda" means this process's own GPU)."""
    index = process_index()
    if index is not None and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        torch.cuda.set_device(index % torch.cuda.device_count())
