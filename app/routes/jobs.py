"""Jobs: submit, list, inspect, follow (losses, metrics), cancel, delete, download weights."""

import os
from collections.abc import Iterator
from typing import Annotated, BinaryIO, Literal

from fastapi import APIRouter, Query, Response
from fastapi import status as http_status
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from app import cursors, jobs
from app.deps import OwnerDep, PredictorDep, RedisDep, SessionDep, SettingsDep
from app.schemas import (
    EpochMetricPublic,
    JobPublic,
    JobsPublic,
    LossesPublic,
    LossPublic,
    MetricsPublic,
    error_responses,
)
from app.tables import JobStatus
from spec.job import JobSpec

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("", status_code=http_status.HTTP_201_CREATED, responses=error_responses(413, 503))
def submit_job(spec: JobSpec, session: SessionDep, owner: OwnerDep, settings: SettingsDep) -> JobPublic:
    """Submit a training job; it is queued and a worker picks it up."""
    job = jobs.create_job(session=session, owner=owner, spec=spec, settings=settings)
    return JobPublic.of(job)


@router.get("", responses=error_responses(400))
def list_jobs(
    session: SessionDep,
    owner: OwnerDep,
    settings: SettingsDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Page size (capped at the server's "
                                "page_size_max).")] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> JobsPublic:
    """List your jobs, newest first, optionally of one status."""
    rows, next_cursor = jobs.list_jobs(session=session, owner=owner, status=status,
                                       limit=min(limit, settings.page_size_max), cursor=cursor)
    return JobsPublic(data=[JobPublic.of(j) for j in rows], next_cursor=next_cursor)


@router.get("/{job_id}", responses=error_responses(404))
def get_job(job_id: str, session: SessionDep, owner: OwnerDep, client: RedisDep) -> JobPublic:
    """A job's status, progress, timings, result and error."""
    job = jobs.get_job(session=session, owner=owner, job_id=job_id)
    return JobPublic.of(job, live_step=jobs.live_steps(client=client, job=job))


@router.get("/{job_id}/losses", responses=error_responses(400, 404))
def get_losses(
    job_id: str,
    session: SessionDep,
    owner: OwnerDep,
    client: RedisDep,
    after: Annotated[str | None, Query(description="next_cursor of the previous call; leave out to "
                                       "start at step 0.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> LossesPublic:
    """Per-batch losses after a cursor, in step order: poll with next_cursor to follow a running job."""
    job = jobs.get_job(session=session, owner=owner, job_id=job_id)
    last = cursors.decode_step(after) if after else -1
    records = jobs.read_losses(session=session, client=client, job_id=job.id, after=last, limit=limit)
    if records:
        last = records[-1].step
    return LossesPublic(
        data=[LossPublic(step=r.step, epoch=r.epoch, batch=r.batch, loss=r.loss, t=r.t) for r in records],
        next_cursor=cursors.encode_step(last),
    )


@router.get("/{job_id}/metrics", responses=error_responses(404))
def get_metrics(job_id: str, session: SessionDep, owner: OwnerDep) -> MetricsPublic:
    """Per-epoch train loss, test/validation loss and accuracy, and duration."""
    job = jobs.get_job(session=session, owner=owner, job_id=job_id)
    rows = jobs.epoch_metrics(session=session, job_id=job.id)
    return MetricsPublic(data=[EpochMetricPublic.model_validate(r) for r in rows])


@router.post(
    "/{job_id}/cancel",
    responses={
        200: {"description": "The job was queued and is now cancelled"},
        202: {"model": JobPublic, "description": "The job is running; it stops within a few batches"},
        **error_responses(404, 409),
    },
)
def cancel_job(
    job_id: str, response: Response, session: SessionDep, owner: OwnerDep, client: RedisDep
) -> JobPublic:
    """Cancel a job: a queued one at once, a running one cooperatively (it ends `cancelled`)."""
    job = jobs.cancel_job(session=session, client=client, owner=owner, job_id=job_id)
    if job.status == JobStatus.running:
        response.status_code = http_status.HTTP_202_ACCEPTED
    return JobPublic.of(job, live_step=jobs.live_steps(client=client, job=job))


@router.delete("/{job_id}", status_code=http_status.HTTP_204_NO_CONTENT, responses=error_responses(404, 409))
def delete_job(
    job_id: str, session: SessionDep, owner: OwnerDep, client: RedisDep, settings: SettingsDep,
    predictor: PredictorDep,
) -> Response:
    """Delete a job that is not running, with its losses, metrics and artifacts."""
    jobs.delete_job(session=session, client=client, owner=owner, job_id=job_id,
                    artifacts=settings.artifacts_path)
    predictor.evict(job_id)
    return Response(status_code=http_status.HTTP_204_NO_CONTENT)


@router.get(
    "/{job_id}/weights",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}},
                     "description": "The state_dict in safetensors format"},
               **error_responses(404)},
)
def get_weights(
    job_id: str, session: SessionDep, owner: OwnerDep, settings: SettingsDep,
    which: Literal["best", "last"] = "best",
) -> StreamingResponse:
    """Download the job's best (lowest validation/test loss) or last state_dict as safetensors."""
    job = jobs.get_job(session=session, owner=owner, job_id=job_id)
    # Served from the open file, so a job deleted (or a file replaced) meanwhile cannot break the response.
    file = jobs.open_weights(job=job, which=which, artifacts=settings.artifacts_path)
    size = os.fstat(file.fileno()).st_size
    return StreamingResponse(
        _chunks(file), media_type="application/octet-stream",
        headers={"content-length": str(size),
                 "content-disposition": f'attachment; filename="{job.id}-{which}.safetensors"'},
        # Also closes the file when the client went away before the first chunk.
        background=BackgroundTask(file.close),
    )


def _chunks(file: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    with file:
        while chunk := file.read(size):
            yield chunk
