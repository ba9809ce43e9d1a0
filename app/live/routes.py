"""A job's live events: Server-Sent Events of losses, epoch metrics and status, resumable with Last-Event-ID."""

from collections.abc import AsyncIterable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent

from app.core.config import get_settings
from app.jobs import service as jobs
from app.live.events import KEEPALIVE, JobEvents, Position
from app.web.deps import DbDep, OwnerDep
from app.web.schemas import error_responses

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=error_responses(401))

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


@router.get("/{job_id}/events", response_class=EventSourceResponse,
            responses={200: _STREAM, **error_responses(400, 404)})
async def stream_events(events: Annotated[JobEvents, Depends(job_events)]) -> AsyncIterable[ServerSentEvent]:
    """Follow a job live (Server-Sent Events): losses as they are handed over, epoch metrics, status, end."""
    async for frame in events.frames():
        if frame is KEEPALIVE:
            yield ServerSentEvent(comment="keep-alive")
        else:
            yield ServerSentEvent(raw_data=frame.data, event=frame.event, id=frame.id)
