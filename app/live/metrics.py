"""What each API process counts for Prometheus (GET /metrics): HTTP requests by method, route template and status,
their latency, and each prediction's latency and images (app.live.exposition reads them with the service's state).

`python -m app.server` runs several processes; each then writes its values to files of one private folder
(prometheus_client's multiprocess mode, PROMETHEUS_MULTIPROC_DIR, set by app.server before the processes start),
and whichever process answers a scrape sums every process's files, those of processes that exited too, so a counter
never goes back when a process is replaced.
"""

import logging
import os
from time import perf_counter

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.multiprocess import mark_process_dead
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

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
