"""The API's side of the job queue: a small Celery client that only sends, by task name.

It never imports worker.training.task (the API must not import the training code); the worker registers the tasks
named TRAIN_TASK and INGEST_TASK and consumes the queues named by queue_name().
"""

from functools import lru_cache

from celery import Celery
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from app.core.config import Settings, get_settings
from app.core.errors import Unavailable

TRAIN_TASK = "taas.train_job"
INGEST_TASK = "taas.ingest_dataset"
# Dataset ingests have a queue of their own, so an upload never waits behind a training run.
INGEST_QUEUE = "ingest"


def queue_name(base: str, settings: Settings) -> str:
    """The broker queue for base "cpu" or "gpu" (with the configured prefix)."""
    return f"{settings.queue_prefix}{base}"


def queue_for_device(device: str, settings: Settings) -> str:
    """Where a job for `device` waits: cuda devices on the gpu queue, "auto" on the default queue."""
    if device.startswith("cuda"):
        return queue_name("gpu", settings)
    if device == "auto":
        return queue_name(settings.default_queue, settings)
    return queue_name("cpu", settings)


@lru_cache
def celery_client() -> Celery:
    settings = get_settings()
    client = Celery("taas-api", broker=settings.redis_url, set_as_current=False)
    timeout = settings.redis_timeout_seconds
    client.conf.update(
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"socket_connect_timeout": timeout, "socket_timeout": timeout},
    )
    return client


def enqueue_training(job_id: str, queue: str) -> None:
    """Send train_job(job_id) to `queue`; raises Unavailable when the broker cannot take it."""
    _send(TRAIN_TASK, job_id, queue)


def enqueue_ingest(dataset_id: str, settings: Settings) -> None:
    """Send ingest_dataset(dataset_id) to the ingest queue; raises Unavailable when the broker cannot take it."""
    _send(INGEST_TASK, dataset_id, queue_name(INGEST_QUEUE, settings))


def _send(task: str, object_id: str, queue: str) -> None:
    try:
        # A short retry rides out a stale pooled connection; a broker that is down fails within a second.
        celery_client().send_task(
            task, args=[object_id], queue=queue, retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
        )
    except (KombuError, RedisError, OSError) as e:
        raise Unavailable(f"the job queue (Redis) is unreachable: {e}") from e


def close_client() -> None:
    """Release the producer's connections (app shutdown, tests switching settings)."""
    if celery_client.cache_info().currsize:
        celery_client().close()
    celery_client.cache_clear()
