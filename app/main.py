"""The FastAPI application: its middlewares, its routers, and the lifespan of the clients they share."""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.accounts import routes as accounts
from app.accounts.audit import AuditLog
from app.accounts.keys import KeyLookup
from app.accounts.principal import local_principal
from app.accounts.rate_limits import RateLimits
from app.catalog import routes as catalog
from app.core.config import get_settings
from app.core.db import Database
from app.core.queue import close_client
from app.core.reads import open_reads
from app.core.redis_client import async_redis_client, redis_client
from app.dashboard import routes as dashboard
from app.datasets import routes as datasets
from app.jobs import routes as jobs
from app.jobs.reads import JobReads
from app.live import routes as live
from app.live.metrics import RequestMetrics, process_exited
from app.serving import routes as serving
from app.serving.loaded import open_serving
from app.web import errors, openapi
from app.web.body_limit import BodyLimit, max_body_bytes
from app.web.fast_routes import FastRoutes
from app.web.guard import Guard


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    state = app.state
    state.redis, state.async_redis = redis_client(settings), async_redis_client(settings)
    state.db = db = Database.from_settings(settings)
    reads = await open_reads(settings)
    state.key_lookup, state.job_reads = KeyLookup(reads), JobReads(reads, state.async_redis)
    state.local_principal = local_principal(settings)
    state.rate_limits = RateLimits(settings)
    state.served, state.batcher = open_serving(settings, db)
    state.job_deleted = [state.served.evict]  # app.jobs.routes.delete_job
    # Everything loaded so far (torch, the app, its clients: over 400,000 objects) lives as long as the
    # process: out of the collector's sight, a full collection no longer scans it (162 ms measured here, a
    # pause every request in flight waits out).
    gc.freeze()
    try:
        yield
    finally:
        await state.batcher.stop()
        state.db = None  # the audit log stops recording
        await state.job_reads.close()
        await state.key_lookup.close()
        await reads.close()
        await state.async_redis.aclose()
        state.redis.close()
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
    # Innermost: the routes every dashboard polls, answered by their endpoint without FastAPI's machinery.
    app.add_middleware(FastRoutes, endpoints=[jobs.get_job], on_error=errors.domain_error)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
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
    errors.install(app)
    openapi.install(app)
    for module in (jobs, live, datasets, serving, catalog, accounts, dashboard):
        app.include_router(module.router)
    if docs:
        app.include_router(dashboard.docs_router)
    return app


app = create_app()
