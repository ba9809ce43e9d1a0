"""The workers' Celery application: Redis broker, late acks, prefetch 1, one job at a time per process.

    celery -A worker.celery_app worker -Q gpu,cpu --concurrency <GPUs> --prefetch-multiplier 1

Without -Q a worker serves the queues named by TAAS_WORKER_QUEUE (comma-separated, queue_prefix applied). Its
tasks: training (worker.training.task) and dataset ingests (worker.ingest.task). Each worker also runs the reaper
of both pipelines' leases (worker.leases.reaper) and beats its liveness (worker.beat); each pool process sets
itself up in worker.process.
"""

from celery import Celery
from kombu import Queue

import worker.process  # noqa: F401 (connects the pool processes' setup)
from app.core.config import get_settings
from app.core.queue import broker_options, queue_name
from worker.beat import Beat
from worker.ingest.folders import sweep_uploads
from worker.ingest.lease import DATASETS
from worker.leases.reaper import reaper_step
from worker.training.attempts import sweep_attempts
from worker.training.jobs import JOBS

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
    broker_transport_options=broker_options(settings, consumer=True),
)

celery_app.steps["worker"].add(reaper_step(kinds=(JOBS, DATASETS), sweeps=(sweep_attempts, sweep_uploads)))
celery_app.steps["worker"].add(Beat)
