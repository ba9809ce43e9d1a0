"""The job queue's format and its one sender: task names, queue names, the broker's options, and send().

The API sends with a small Celery client that never imports the workers' code (worker.celery_app registers the
tasks named TRAIN_TASK and INGEST_TASK and consumes the queues named by queue_name()); the workers send through
the same function when they put work back in a queue."""

from functools import lru_cache
from typing import Any

from celery import Celery
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from app.core.config import Settings, get_settings
from app.core.errors import Unavailable

TRAIN_TASK = "taas.train_job"
INGEST_TASK = "taas.ingest_dataset"
# Dataset ingests have a queue of their own, so an upload never waits behind a training run.
INGEST_QUEUE = "ingest"
# Redis redelivers an unacked message after its visibility timeout (default 1 h): every hour of a long job would
# bring a redundant delivery. Lost messages are the reaper's job (worker.leases.reaper), so wait long here.
VISIBILITY_TIMEOUT_SECONDS = 24 * 3600


def queue_name(base: str, settings: Settings) -> str:
    """The broker queue for base "cpu", "gpu" or "ingest" (with the configured prefix)."""
    return f"{settings.queue_prefix}{base}"


def queue_for_device(device: str, settings: Settings) -> str:
    """Where a job for `device` waits: cuda devices on the gpu queue, "auto" on the default queue."""
    if device.startswith("cuda"):
        return queue_name("gpu", settings)
    if device == "auto":
        return queue_name(settings.default_queue, settings)
    return queue_name("cpu", settings)


def broker_options(settings: Settings, *, consumer: bool = False) -> dict[str, Any]:
    """Kombu's Redis transport options, for every Celery client of ours. A sender times out on a dead connection;
    a consumer (a worker) waits in BRPOP, so only its connecting is bounded."""
    timeout = settings.redis_timeout_seconds
    if consumer:
        return {"socket_connect_timeout": timeout, "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS}
    return {"socket_connect_timeout": timeout, "socket_timeout": timeout}


@lru_cache
def celery_client() -> Celery:
    settings = get_settings()
    client = Celery("taas-sender", broker=settings.redis_url, set_as_current=False)
    client.conf.update(task_serializer="json", accept_content=["json"],
                       broker_transport_options=broker_options(settings))
    return client


def send(task: str, object_id: str, queue: str) -> None:
    """Send task(object_id) to `queue`; raises Unavailable when the broker cannot take it."""
    try:
        # A short retry rides out a stale pooled connection; a broker that is down fails within a second.
        celery_client().send_task(
            task, args=[object_id], queue=queue, retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
        )
    except (KombuError, RedisError, OSError) as e:
        raise Unavailable(f"the job queue (Redis) is unreachable: {e}") from e


def enqueue_training(job_id: str, queue: str) -> None:
    """Send train_job(job_id) to `queue`; raises Unavailable when the broker cannot take it."""
    send(TRAIN_TASK, job_id, queue)


def enqueue_ingest(dataset_id: str, settings: Settings) -> None:
    """Send ingest_dataset(dataset_id) to the ingest queue; raises Unavailable when the broker cannot take it."""
    send(INGEST_TASK, dataset_id, queue_name(INGEST_QUEUE, settings))


def close_client() -> None:
    """Release the sender's connections (app shutdown, tests switching settings)."""
    if celery_client.cache_info().currsize:
        celery_client().close()
    celery_client.cache_clear()


def forget_client() -> None:
    """In a forked child: drop the parent's sender without closing its connections (they are the parent's)."""
    celery_client.cache_clear()
