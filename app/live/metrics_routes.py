"""Prometheus metrics (admin: aggregates over every owner). Per-job metrics are GET /jobs/{id}/metrics."""

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse

from app.live import metrics
from app.web.deps import AdminDep, DbDep, RedisDep, SettingsDep
from app.web.schemas import ERROR_DESCRIPTIONS

router = APIRouter(tags=["metrics"])


def _responses() -> dict[int | str, dict[str, Any]]:
    """The exposition is text; errors stay JSON (FastAPI would document them in the route's media type)."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorPublic"}}}
    exposition = {"description": "Prometheus' text exposition format (version 0.0.4): every taas_ metric",
                  "content": {"text/plain": {"schema": {"type": "string"}}}}
    errors: dict[int | str, dict[str, Any]] = {
        code: {"description": ERROR_DESCRIPTIONS[code], "content": error} for code in (401, 403)}
    return {200: exposition, **errors}


@router.get("/metrics", response_class=PlainTextResponse, responses=_responses())
async def get_metrics(admin: AdminDep, db: DbDep, client: RedisDep, settings: SettingsDep) -> Response:
    """Requests, predictions, jobs, queues, epochs and workers, summed over the API processes (Prometheus)."""
    # Off the event loop: the processes' files, the database and Redis, read on one worker thread.
    body = await db.read(lambda session: metrics.render(session=session, client=client, settings=settings))
    return Response(body, media_type=metrics.CONTENT_TYPE)
