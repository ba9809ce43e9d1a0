"""The FastAPI application: routers, the domain-error table, and the lifespan of shared clients."""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from psycopg.errors import LockNotAvailable
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.accounts import audit_routes as audit
from app.accounts import routes as keys
from app.accounts.audit import AuditLog
from app.accounts.keys import keys_by_hash
from app.accounts.limits import EffectiveLimits
from app.accounts.principal import REALM, Principal
from app.accounts.rate_limits import RateLimits
from app.catalog import routes as catalog
from app.core import errors
from app.core.batched_reads import BatchedLookup
from app.core.config import get_settings
from app.core.db import Database
from app.core.queue import close_client
from app.core.redis_client import async_redis_client, redis_client
from app.dashboard import routes as dashboard
from app.datasets import routes as datasets
from app.jobs import routes as jobs
from app.jobs.reads import FastReads, SqliteKeys
from app.live import health
from app.live import metrics_routes as metrics
from app.live import routes as events
from app.live.metrics import RequestMetrics, process_exited
from app.serving import routes as predict
from app.serving import v2_routes as inference
from app.serving.batching import Batcher
from app.serving.loaded import ServedModels
from app.serving.predictor import Predictor
from app.web import openapi
from app.web.body_limit import BodyLimit
from app.web.errors import add_request_error_handlers
from app.web.fast_routes import JobPoll
from app.web.guard import Guard

# The one place where domain errors become HTTP statuses.
ERROR_STATUS: dict[type[errors.DomainError], int] = {
    errors.BadCursor: 400,
    errors.BadImage: 400,
    errors.MalformedRequest: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMedia: 415,
    errors.InvalidSpec: 422,
    errors.TooManyRequests: 429,
    errors.Unavailable: 503,
}


# Seconds a client should wait before retrying a 503 (the header every 503 carries).
RETRY_AFTER_SECONDS = 1


def error_response(request: Request, detail: str, status_code: int,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """{"detail": ...}, or {"error": ...} on the Open Inference Protocol's routes (/v2), as its clients read."""
    headers = dict(headers or {})
    if status_code == 503:
        headers.setdefault("retry-after", str(RETRY_AFTER_SECONDS))
    key = "error" if request.url.path.startswith("/v2/") else "detail"
    return JSONResponse({key: detail}, status_code=status_code, headers=headers)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.DomainError)
    headers = {}
    if isinstance(exc, errors.Unauthorized):
        headers["www-authenticate"] = REALM
    elif isinstance(exc, errors.TooManyRequests):
        headers["retry-after"] = str(exc.retry_after)
    return error_response(request, exc.detail, ERROR_STATUS[type(exc)], headers)


async def _database_down(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(getattr(exc, "orig", None), LockNotAvailable):
        return error_response(request, "this object is being written (a worker holds it) and was not free within "
                              "the server's lock timeout; retry after the time in the Retry-After header", 503)
    return error_response(request, "the database is unreachable; try again shortly", 503)


async def _database_busy(request: Request, exc: Exception) -> JSONResponse:
    return error_response(request, "the server is at its limit of database connections; retry after the time "
                          "in the Retry-After header", 503)


async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    return error_response(request, "Redis is unreachable; try again shortly", 503)


def body_limit(path: str) -> int:
    """The most request-body bytes a route accepts: archives on /datasets, images or tensors on /predict and
    /v2/models/{name}/infer, small JSON everywhere else."""
    settings = get_settings()
    if path == "/datasets":
        return settings.dataset_max_upload_bytes
    if path == "/predict" or (path.startswith("/v2/models/") and path.endswith("/infer")):
        return settings.predict_max_bytes
    return settings.request_max_bytes


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    app.state.redis = redis_client(settings)
    app.state.db = db = Database.from_settings(settings)
    app.state.async_redis = async_redis = async_redis_client(settings)
    app.state.fast_reads = reads = FastReads(settings, async_redis) if FastReads.supports(settings) else None
    if reads is not None:
        await reads.open()
    sqlite_path = SqliteKeys.path_of(settings)
    sqlite_keys = SqliteKeys(sqlite_path) if reads is None and sqlite_path is not None else None
    if reads is not None:
        app.state.key_lookup = reads.keys
    elif sqlite_keys is not None:
        app.state.key_lookup = BatchedLookup(sqlite_keys.fetch, max_in_flight=1)
    else:
        app.state.key_lookup = BatchedLookup(lambda hashes: db.read(lambda session: keys_by_hash(session, hashes)),
                                             max_in_flight=settings.db_pool_size)
    app.state.local_principal = Principal(key_id=None, owner=settings.owner, admin=True,
                                          limits=EffectiveLimits.of(settings))
    app.state.rate_limits = RateLimits(settings)
    predictor = Predictor(artifacts=settings.artifacts_path, max_pixels=settings.predict_max_pixels,
                          max_request_pixels=settings.predict_max_request_pixels, threads=settings.predict_threads)
    app.state.served = ServedModels(predictor=predictor, db=db, capacity=settings.predict_cache_size,
                                    recheck_seconds=settings.predict_recheck_seconds,
                                    max_bytes=settings.predict_cache_bytes)
    app.state.batcher = batcher = Batcher(
        predictor.run, max_batch=settings.predict_batch_max_images,
        max_delay=settings.predict_batch_max_delay_ms / 1000, max_queue=settings.predict_queue_max_images)
    batcher.start()
    # Everything loaded so far (torch, the app, its clients: over 400,000 objects) lives as long as the
    # process: out of the collector's sight, a full collection no longer scans it (162 ms measured here, a
    # pause every request in flight waits out).
    gc.freeze()
    try:
        yield
    finally:
        await batcher.stop()
        app.state.db = None  # the audit log stops recording
        if reads is not None:
            await reads.close()
        if sqlite_keys is not None:
            sqlite_keys.close()
        await async_redis.aclose()
        app.state.redis.close()
        close_client()
        db.dispose()
        process_exited()


def create_app() -> FastAPI:
    settings = get_settings()
    docs = settings.docs
    app = FastAPI(
        title="taas",
        summary="PyTorch training as a service: submit a job, watch its loss live, predict with the result.",
        version="0.1.0",
        lifespan=lifespan,
        # /docs is app.dashboard.routes's page: Swagger UI from the package, not a CDN (/redoc redirects to it).
        docs_url=None, redoc_url=None, openapi_url="/openapi.json" if docs else None,
    )
    app.state.db = None
    # Outermost last: the guard and the headers see every answer, the audit log every state change.
    app.add_middleware(JobPoll, on_error=_domain_error)
    app.add_middleware(BodyLimit, max_bytes=body_limit)
    app.add_middleware(AuditLog, database=lambda: app.state.db)
    origins = [o for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"],
                           allow_headers=["authorization", "content-type", "last-event-id"],
                           expose_headers=["retry-after", "content-disposition"], max_age=600)
    app.add_middleware(Guard, allowed_hosts=settings.allowed_hosts.split(","), cors_origins=origins,
                       loopback_only=not settings.auth)
    # Outermost of all: every answer is counted and timed, the guard's refusals too (app.live.metrics).
    app.add_middleware(RequestMetrics)
    for error in ERROR_STATUS:
        app.add_exception_handler(error, _domain_error)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(PoolTimeout, _database_busy)
    app.add_exception_handler(RedisConnectionError, _redis_down)
    app.add_exception_handler(RedisTimeoutError, _redis_down)
    add_request_error_handlers(app)
    openapi.install(app)
    for module in (jobs, events, datasets, predict, inference, catalog, keys, audit, health, dashboard, metrics):
        app.include_router(module.router)
    if docs:
        app.include_router(dashboard.docs_router)
    return app


app = create_app()
