"""The workers' Celery application: Redis broker, late acks, prefetch 1, one job at a time per process.

    celery -A worker.celery_app worker -Q gpu,cpu --concurrency <GPUs> --prefetch-multiplier 1

Without -Q a worker serves the queues named by TAAS_WORKER_QUEUE (comma-separated, queue_prefix applied).
Each worker also runs the reaper: at start and every reap_interval_seconds it requeues jobs whose worker
died (their lease expired).
"""

import logging
import os
import shutil
import time
from typing import Any

from celery import Celery, bootsteps
from celery.signals import worker_process_init
from kombu import Queue

from app.core.config import get_settings
from app.core.db import get_engine, session_scope
from app.core.queue import INGEST_QUEUE, INGEST_TASK, TRAIN_TASK, queue_name
from app.core.storage import dataset_dir, job_dir
from app.live.metrics import WorkerBeat
from worker.ingest.lease import reap_ingests
from worker.leases.claims import Reaped, reap_expired, unqueue
from worker.training.attempts import remove_attempt_folders, sweep_attempt_folders, sweep_orphan_folders

log = logging.getLogger(__name__)

settings = get_settings()

celery_app = Celery("taas", broker=settings.redis_url, include=["worker.training.task", "worker.ingest.task"])
celery_app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    # The message is acked when the task ends; the job's lease (not the broker) keeps a redelivered
    # message from training a job twice.
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_default_queue=queue_name(settings.default_queue, settings),
    task_queues=[Queue(queue_name(q.strip(), settings)) for q in settings.worker_queue.split(",") if q.strip()],
    broker_connection_retry_on_startup=True,
    # A broker hiccup must not kill a training run: the lease says who owns the job.
    worker_cancel_long_running_tasks_on_connection_loss=False,
    # Redis redelivers an unacked message after visibility_timeout (default 1 h): every hour of a long
    # job would bring a redundant delivery. Lost messages are the reaper's job (expired leases, and
    # queued jobs whose task is re-sent after resend_queued_after_seconds), so wait long here.
    broker_transport_options={"socket_connect_timeout": settings.redis_timeout_seconds,
                              "visibility_timeout": 24 * 3600},
)

# Index of this pool process (prefork), to spread processes over GPUs; None in the solo pool.
_process_index: int | None = None


def process_index() -> int | None:
    return _process_index


@worker_process_init.connect
def _in_pool_process(**_: Any) -> None:
    global _process_index
    from billiard.process import current_process

    _process_index = getattr(current_process(), "index", None)
    lower_priority(get_settings().worker_nice)
    threads = get_settings().worker_torch_threads
    if threads:
        import torch

        torch.set_num_threads(threads)
    # Connections opened by the parent (the reaper) must not be shared with the forked child.
    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)


def lower_priority(nice: int) -> None:
    """Run this process (the threads it starts from now on) at `nice`, and its session's autogroup too."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
    except OSError as e:
        log.warning("could not lower the worker's CPU priority to nice %d: %s", nice, e)
    # With autogroup scheduling (most Linux desktops and servers), CPU time is shared between sessions first,
    # so the session's own nice is the one that ranks training against the API.
    try:
        with open("/proc/self/autogroup", "w") as group:
            group.write(str(nice))
    except OSError:
        pass


def requeue_expired() -> Reaped:
    """Reap expired leases and send a task for each job put back on its queue."""
    with session_scope() as session:
        reaped = reap_expired(session=session, resend_after_seconds=get_settings().resend_queued_after_seconds)
    for job_id, queue in reaped.resent:
        try:
            celery_app.send_task(TRAIN_TASK, args=[job_id], queue=queue)
        except Exception:
            log.exception("job %s: its task could not be sent again; the next reap retries", job_id)
    if reaped.resent:
        log.warning("reaper: sent again the tasks of %s (queued for longer than %.0f s)",
                    [j for j, _ in reaped.resent], get_settings().resend_queued_after_seconds)
    for job_id, queue in reaped.requeued:
        try:
            celery_app.send_task(TRAIN_TASK, args=[job_id], queue=queue)
        except Exception:
            log.exception("job %s: requeued but its task could not be sent; the next reap retries", job_id)
            with session_scope() as session:
                unqueue(session=session, job_id=job_id)
    if reaped.requeued or reaped.failed or reaped.cancelled:
        log.warning("reaper: requeued %s, failed %s, cancelled %s (their workers stopped responding)",
                    [j for j, _ in reaped.requeued], reaped.failed, reaped.cancelled)
    # Nobody claims these again, so nobody else removes what their dead worker staged. (A requeued job's
    # leftovers go at its next claim.)
    for job_id in reaped.failed + reaped.cancelled:
        remove_attempt_folders(job_dir(get_settings().artifacts_path, job_id))
    return reaped


# Sweeping every job's folder reads the whole artifacts tree: at this pace rather than every reap.
ATTEMPT_SWEEP_SECONDS = 600.0
_next_attempt_sweep = 0.0


def sweep_attempts() -> None:
    """Remove attempt folders that no claim holds (see worker.training.attempts), at most every
    ATTEMPT_SWEEP_SECONDS."""
    global _next_attempt_sweep
    if time.monotonic() < _next_attempt_sweep:
        return
    _next_attempt_sweep = time.monotonic() + ATTEMPT_SWEEP_SECONDS
    sweep_attempt_folders(get_settings().artifacts_path)


def requeue_ingests() -> None:
    """Send again the ingests whose message was lost or whose worker died; remove orphaned upload folders."""
    settings = get_settings()
    with session_scope() as session:
        reaped = reap_ingests(session=session, resend_after_seconds=settings.resend_queued_after_seconds)
    for dataset_id in reaped.resent:
        try:
            celery_app.send_task(INGEST_TASK, args=[dataset_id], queue=queue_name(INGEST_QUEUE, settings))
        except Exception:
            log.exception("dataset %s: its ingest could not be sent again; the next reap retries", dataset_id)
    for dataset_id in reaped.failed:  # a failed dataset keeps its row (with the reason), no files
        shutil.rmtree(dataset_dir(settings.datasets_path, dataset_id), ignore_errors=True)
    if reaped.resent or reaped.failed:
        log.warning("reaper: ingests sent again %s, failed %s", reaped.resent, reaped.failed)
    sweep_orphan_folders(settings.datasets_path)


def _reap_safely() -> None:
    for reap in (requeue_expired, requeue_ingests, sweep_attempts):
        try:
            reap()
        except Exception:
            log.exception("reaper run failed; trying again in %.0f s", get_settings().reap_interval_seconds)


class Reaper(bootsteps.StartStopStep):
    """Runs the reaper when the worker starts and then periodically on the worker's timer."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, parent: Any, **kwargs: Any):
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def start(self, parent: Any) -> None:
        _reap_safely()
        self.tref = parent.timer.call_repeatedly(get_settings().reap_interval_seconds, _reap_safely, priority=10)

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()


celery_app.steps["worker"].add(Reaper)


class Beat(bootsteps.StartStopStep):
    """The worker's liveness beat in Redis (app.live.metrics: the API's taas_workers_alive), every heartbeat_seconds on
    the worker's timer, as the reaper runs; removed at a clean stop."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, parent: Any, **kwargs: Any):
        super().__init__(parent, **kwargs)
        self.tref: Any = None
        self.beat: WorkerBeat | None = None

    def start(self, parent: Any) -> None:
        self.beat = WorkerBeat(parent.hostname, get_settings())
        self.beat.beat()
        self.tref = parent.timer.call_repeatedly(get_settings().heartbeat_seconds, self.beat.beat, priority=10)

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
        if self.beat is not None:
            self.beat.forget()
            self.beat = None

    # A cold shutdown (SIGQUIT: docker compose stop) terminates steps rather than stopping them.
    terminate = stop


celery_app.steps["worker"].add(Beat)
