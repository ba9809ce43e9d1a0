"""The Prometheus exposition (GET /metrics): every API process's counts (app.live.metrics), and the service's state
read from the source of truth at the scrape, once, by the process that answers it (ServiceCollector): jobs by status,
running jobs and the broker's queue depths, epoch durations, and the workers' liveness beats. Counted per process,
these would be multiplied by the number of processes.
"""

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import redis
from prometheus_client import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from sqlalchemy import func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.liveness import BEAT_FORGET_SECONDS, worker_beat_ages
from app.core.queue import INGEST_QUEUE, queue_name
from app.core.tables import EpochMetric, Job, JobStatus, utcnow
from app.live.metrics import LOCAL, MULTIPROCESS_DIR

log = logging.getLogger(__name__)

# The text format every Prometheus server reads (the exposition is never OpenMetrics: one documented type).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Epoch durations are read from a window: the epochs of jobs running now or finished within the last hour
# (at most this many rows), as quantiles. Epoch rows have no time of their own; their job's is the window's.
EPOCH_WINDOW_SECONDS = 3600
EPOCH_ROWS_MAX = 100_000
EPOCH_QUANTILES = (0.5, 0.9, 0.99)


def quantile(ordered: Sequence[float], q: float) -> float:
    """The q-quantile of sorted values, interpolated between the closest ranks (numpy's default)."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _gauge(name: str, documentation: str, labels: Sequence[str], values: Iterable[tuple[Sequence[str], float]]
           ) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for label_values, value in values:
        family.add_metric(list(label_values), value)
    return family


class ServiceCollector(Collector):
    """The service's state, read from the database and Redis when a scrape asks (once per scrape). A source
    that fails is reported by taas_metrics_source_up, and the rest is still exposed."""

    def __init__(self, *, session: Session, client: redis.Redis, settings: Settings) -> None:
        self.session, self.client, self.settings = session, client, settings

    def collect(self) -> Iterator[Metric]:
        up: dict[str, bool] = {}
        for source, read in (("database", self._database), ("redis", self._redis)):
            try:
                families = list(read())
            except (SQLAlchemyError, RedisError) as e:
                # The driver's message names hosts and users: the log has it, the exposition only the 0.
                log.warning("metrics: the %s could not be read: %s", source, str(e).splitlines()[0] if str(e) else e)
                families = []
                up[source] = False
            else:
                up[source] = True
            yield from families
        yield _gauge("taas_metrics_source_up", "1 when this scrape read the source (database, redis), else 0.",
                     ["source"], (((source,), float(ok)) for source, ok in up.items()))

    def _database(self) -> Iterator[Metric]:
        counts = dict(self.session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        yield _gauge("taas_jobs", "Jobs by status.", ["status"],
                     (((status.value,), float(counts.get(status.value, 0))) for status in JobStatus))
        running = self.session.execute(select(Job.queue, func.count()).where(Job.status == JobStatus.running)
                                       .group_by(Job.queue)).all()
        yield _gauge("taas_jobs_running", "Running jobs, by the queue they came from.", ["queue"],
                     (((queue,), float(n)) for queue, n in running))
        yield from self._epochs()

    def _epochs(self) -> Iterator[Metric]:
        cutoff = utcnow() - timedelta(seconds=EPOCH_WINDOW_SECONDS)
        rows = self.session.execute(
            select(Job.queue, EpochMetric.seconds).join(Job, Job.id == EpochMetric.job_id)
            .where(or_(Job.status == JobStatus.running, Job.finished_at >= cutoff)).limit(EPOCH_ROWS_MAX))
        by_queue: dict[str, list[float]] = {}
        for queue, seconds in rows:
            by_queue.setdefault(queue, []).append(seconds)
        window = f"epochs of jobs running now or finished within the last {EPOCH_WINDOW_SECONDS} s"
        quantiles = GaugeMetricFamily("taas_epoch_seconds", f"Epoch duration quantiles (train + evaluation) over "
                                      f"the {window}, by queue.", labels=["queue", "quantile"])
        counts = GaugeMetricFamily("taas_epochs_recent", f"Number of {window}, by queue.", labels=["queue"])
        for queue, values in sorted(by_queue.items()):
            values.sort()
            counts.add_metric([queue], len(values))
            for q in EPOCH_QUANTILES:
                quantiles.add_metric([queue, str(q)], quantile(values, q))
        yield quantiles
        yield counts

    def _redis(self) -> Iterator[Metric]:
        queues = [queue_name(base, self.settings) for base in ("cpu", "gpu", INGEST_QUEUE)]
        with self.client.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.llen(queue)
            depths = pipe.execute()
        yield _gauge("taas_queue_depth", "Messages waiting in each broker queue (not yet taken by a worker).",
                     ["queue"], (((queue,), float(n)) for queue, n in zip(queues, depths, strict=True)))
        ages = worker_beat_ages(self.client, self.settings)
        alive = sum(1 for _, age in ages if age <= self.settings.lease_seconds)
        yield _gauge("taas_workers_alive", "Workers whose last liveness beat is at most lease_seconds old.", [],
                     [((), float(alive))])
        yield _gauge("taas_worker_last_beat_age_seconds", "Seconds since each worker's last liveness beat (workers "
                     f"seen within {BEAT_FORGET_SECONDS} s).", ["worker"], (((w,), age) for w, age in ages))


class _Scrape(Collector):
    def __init__(self, collectors: Sequence[Any]) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


def render(*, session: Session, client: redis.Redis, settings: Settings) -> bytes:
    """The exposition, in Prometheus' text format: every API process's counts, then the service's state.
    Blocking (files, the database, Redis): run it on a worker thread."""
    counted = MultiProcessCollector(None, path=MULTIPROCESS_DIR) if MULTIPROCESS_DIR is not None else LOCAL
    return generate_latest(_Scrape([counted, ServiceCollector(session=session, client=client, settings=settings)]))
