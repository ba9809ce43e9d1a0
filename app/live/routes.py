"""Watching the service live: a job's events (Server-Sent Events of losses, epoch metrics and status, resumable with
Last-Event-ID), the service's health, and its Prometheus metrics."""

from collections.abc import AsyncIterable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response, status
from fastapi.responses import PlainTextResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from app.accounts.deps import AdminDep, OwnerDep
from app.core.config import get_settings
from app.core.errors import Unavailable
from app.jobs import service as jobs
from app.live import exposition, health
from app.live.events import KEEPALIVE, JobEvents, Position
from app.live.schemas import HealthPublic
from app.web.deps import DbDep, RedisDep, SettingsDep
from app.web.responses import ERROR_DESCRIPTIONS, error_responses

router = APIRouter()
events_router = APIRouter(prefix="/jobs", tags=["jobs"], responses=error_responses(401))

_STREAM = {
    "description": "text/event-stream: `loss` {\"losses\": [{step, epoch, batch, loss, t}, ...]}, `epoch` (a row "
                   "of GET /jobs/{id}/metrics), `status` ({status, attempt, progress, error, ...}) on each "
                   "transition, then `end` (the final job) and the stream closes. Every frame has an id: send "
                   "the last one as Last-Event-ID to continue where the stream stopped.",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


async def job_events(
    job_id: str, request: Request, db: DbDep, owner: OwnerDep,
    last_event_id: Annotated[str | None, Header(description="The id of the last frame received, to continue "
                                                            "after it.", max_length=400)] = None,
) -> JobEvents:
    """Checked before the stream starts (its status cannot change once it has): the cursor (400), the job (404)."""
    position = Position.of(last_event_id)
    await db.read(lambda session: jobs.get_job(session=session, owner=owner, job_id=job_id))
    state = request.app.state
    return JobEvents(db=db, client=state.async_redis, sync_client=state.redis, owner=owner, job_id=job_id,
                     position=position, keepalive_seconds=get_settings().events_keepalive_seconds)


@events_router.get("/{job_id}/events", response_class=EventSourceResponse,
            responses={200: _STREAM, **error_responses(400, 404)})
async def stream_events(events: Annotated[JobEvents, Depends(job_events)]) -> AsyncIterable[ServerSentEvent]:
    """Follow a job live (Server-Sent Events): losses as they are handed over, epoch metrics, status, end."""
    async for frame in events.frames():
        if frame is KEEPALIVE:
            yield ServerSentEvent(comment="keep-alive")
        else:
            yield ServerSentEvent(raw_data=frame.data, event=frame.event, id=frame.id)


@router.get("/health", tags=["health"], responses={503: {"model": HealthPublic, "description": "A dependency is down"}})
async def get_health(db: DbDep, client: RedisDep, response: Response) -> HealthPublic:
    """Check the database (SELECT 1) and Redis (PING); 503 names the one that failed."""
    try:
        database = await db.read(health.select_one)
    except Unavailable as e:
        database = f"failed: {e.detail}"
    redis = await run_in_threadpool(health.ping, client)
    ok = database == redis == "ok"
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        response.headers["retry-after"] = "1"
    return HealthPublic(status="ok" if ok else "unavailable", db=database, redis=redis)


def _responses() -> dict[int | str, dict[str, Any]]:
    """The exposition is text; errors stay JSON (FastAPI would document them in the route's media type)."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorPublic"}}}
    exposition = {"description": "Prometheus' text exposition format (version 0.0.4): every taas_ metric",
                  "content": {"text/plain": {"schema": {"type": "string"}}}}
    errors: dict[int | str, dict[str, Any]] = {
        code: {"description": ERROR_DESCRIPTIONS[code], "content": error} for code in (401, 403)}
    return {200: exposition, **errors}


@router.get("/metrics", tags=["metrics"], response_class=PlainTextResponse, responses=_responses())
async def get_metrics(admin: AdminDep, db: DbDep, client: RedisDep, settings: SettingsDep) -> Response:
    """Requests, predictions, jobs, queues, epochs and workers, summed over the API processes (Prometheus)."""
    # Off the event loop: the processes' files, the database and Redis, read on one worker thread.
    body = await db.read(lambda session: exposition.render(session=session, client=client, settings=settings))
    return Response(body, media_type=exposition.CONTENT_TYPE)


router.include_router(events_router)
