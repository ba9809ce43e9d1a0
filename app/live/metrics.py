"""Prometheus metrics (GET /metrics, app.live.metrics_routes): what each API process counts, and what a scrape reads
from the source of truth.

Counted per process, summed at the scrape: HTTP requests by method, route template and status, their latency,
and each prediction's latency and images. `python -m app.server` runs several processes; each then writes its
values to files of one private folder (prometheus_client's multiprocess mode, PROMETHEUS_MULTIPROC_DIR, set by
app.server before the processes start), and whichever process answers a scrape sums every process's files,
those of processes that exited too, so a counter never goes back when a process is replaced.

Read at the scrape, once, by the process that answers it (ServiceCollector): jobs by status, running jobs and
the broker's queue depths, epoch durations, and the workers' liveness beats. Counted per process, these would
be multiplied by the number of processes.
"""

import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta
from time import perf_counter
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from sqlalchemy import func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import Settings
from app.core.liveness import BEAT_FORGET_SECONDS, worker_beat_ages
from app.core.queue import INGEST_QUEUE, queue_name
from app.core.tables import EpochMetric, Job, JobStatus, utcnow

log = logging.getLogger(__name__)

# The text format every Prometheus server reads (the exposition is never OpenMetrics: one documented type).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# prometheus_client's own switch, read here once: it picks its value class (memory or files) when it is first
# imported, just above, so this module's mode and its metrics' agree. app.server sets it before any API process
# starts (nothing imports prometheus_client before app.main).
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")

# `_created` series are not written by the multiprocess mode: without them in one process too, a scrape reads
# the same series whatever the number of processes.
disable_created_metrics()
# The metrics of this process when it runs alone (in multiprocess mode, values go to the files instead).
LOCAL = CollectorRegistry()

# Seconds: an API answer takes about a millisecond; exports and uploads take seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Images (or v2 input items) of one prediction request: at most predict_max_files.
IMAGES_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

HTTP_REQUESTS = Counter("taas_http_requests", "HTTP requests answered, by method, route template and status.",
                        ["method", "route", "status"], registry=LOCAL)
HTTP_SECONDS = Histogram("taas_http_request_duration_seconds",
                         "Seconds from a request reaching the app to its answer's last part, by method and route.",
                         ["method", "route"], buckets=LATENCY_BUCKETS, registry=LOCAL)
PREDICT_SECONDS = Histogram("taas_predict_duration_seconds",
                            "Seconds a successful prediction took in its route: decoding, queueing, inference, "
                            "answer.", ["route"], buckets=LATENCY_BUCKETS, registry=LOCAL)
PREDICT_IMAGES = Histogram("taas_predict_images", "Images (or v2 input items) per successful prediction request.",
                           ["route"], buckets=IMAGES_BUCKETS, registry=LOCAL)

# Label values stay bounded whatever clients send: methods outside these are "other", paths that match no
# route "unmatched" (route templates, never raw paths: an id in a label would make a series per job).
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
PREDICT_ROUTES = ("/predict", "/v2/models/{name}/infer")


class RequestMetrics:
    """An ASGI middleware: counts and times every HTTP answer (the outermost of ours, so refusals count too).

    On every request's path: a dict lookup and three increments, the labelled series made once per key."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        status = 500  # what a request that raised past every handler answers (ServerErrorMiddleware, outside)
        observed = False

        async def sending(message: Message) -> None:
            nonlocal status, observed
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Counted just before the last bytes go out: a client holding its answer finds it counted (and
                # what runs after the answer, the audit log's insert, is not the client's wait).
                observed = True
                self._observe(scope, status, perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if not observed:
                self._observe(scope, status, perf_counter() - started)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        method = scope["method"]
        if method not in HTTP_METHODS:
            method = "other"
        # The router sets scope["route"] in place once it matched (a 405 too); a request refused before
        # routing (Host guard, body limit) or matching nothing has none.
        route = getattr(scope.get("route"), "path", UNMATCHED)
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = (HTTP_REQUESTS.labels(method, route, str(status)),
                                          HTTP_SECONDS.labels(method, route))
        series[0].inc()
        series[1].observe(seconds)


_PREDICT_SERIES = {route: (PREDICT_SECONDS.labels(route), PREDICT_IMAGES.labels(route)) for route in PREDICT_ROUTES}


def observe_prediction(route: str, started: float, images: int) -> None:
    """Record a successful prediction of `images` items on `route` (a template), begun at perf_counter `started`."""
    seconds, count = _PREDICT_SERIES[route]
    seconds.observe(perf_counter() - started)
    count.observe(images)


def process_exited() -> None:
    """This API process stops: its live-gauge files go (its counters stay: the totals include what it did)."""
    if MULTIPROCESS_DIR is not None:
        mark_process_dead(os.getpid(), MULTIPROCESS_DIR)


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
