"""Jobs: submit, list, inspect, follow (losses, metrics), cancel, delete, download weights and TensorBoard files."""

import os
from typing import Annotated, BinaryIO, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import status as http_status
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from app.accounts.deps import OwnerDep, PrincipalDep, bearer, rate_limited
from app.accounts.keys import key_hash
from app.accounts.principal import authenticated, presented_key, principal_of
from app.core import cursors, storage
from app.core.config import get_settings
from app.core.errors import NotFound
from app.core.loss_stream import LossRecord
from app.core.tables import JobStatus
from app.jobs import service as jobs
from app.jobs import tensorboard_archive
from app.jobs.schemas import EpochMetricPublic, JobPublic, JobRow, JobsPublic, LossesPublic, LossPublic, MetricsPublic
from app.web.deps import DbDep, PageCursor, PageLimit, RedisDep, SettingsDep
from app.web.responses import error_responses, stream_file
from spec.job import JobSpec

# Every route is async and does its database work in one db.run call (app.core.db.Database): the session is
# closed before the response is built.

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=error_responses(401))


@router.post("", status_code=http_status.HTTP_201_CREATED, responses=error_responses(413, 429, 503),
             dependencies=[rate_limited("submit")])
async def submit_job(spec: JobSpec, request: Request, db: DbDep, principal: PrincipalDep,
                     settings: SettingsDep) -> JobPublic:
    """Submit a training job; it is queued and a worker picks it up."""
    job = await db.run(lambda session: jobs.create_job(session=session, owner=principal.owner, spec=spec,
                                                       settings=settings, limits=principal.limits))
    request.state.audit_object = job.id
    return JobPublic.of(job)


@router.get("", responses=error_responses(400))
async def list_jobs(
    db: DbDep,
    owner: OwnerDep,
    settings: SettingsDep,
    status: JobStatus | None = None,
    limit: PageLimit = 50,
    cursor: PageCursor = None,
) -> JobsPublic:
    """List your jobs, newest first, optionally of one status."""
    rows, next_cursor = await db.read(lambda session: jobs.list_jobs(
        session=session, owner=owner, status=status, limit=min(limit, settings.page_size_max), cursor=cursor))
    return JobsPublic(data=[JobPublic.of(j) for j in rows], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobPublic, responses=error_responses(404), dependencies=[Depends(bearer)])
async def get_job(job_id: str, request: Request) -> Response:
    """A job's status, progress, timings, result and error."""
    # The route every dashboard polls, answered through app.web.fast_routes: this endpoint takes only the request
    # and its path (it is awaited without FastAPI's dependency solving) and reads everything else itself.
    settings, reads = get_settings(), request.app.state.job_reads
    if settings.auth:
        # The key and the job in one statement, batched with concurrent requests' (app.jobs.reads).
        key_row, job = await reads.key_and_job(key_hash(presented_key(await bearer(request))), job_id)
        authenticated(request, principal_of(key_row, settings))
    else:
        owner = authenticated(request, request.app.state.local_principal).owner
        job = await reads.job(owner=owner, job_id=job_id)
    if job is None:
        raise jobs.job_not_found(job_id)
    return Response(public_json(job, await reads.live_step(job)), media_type="application/json")


def public_json(job: JobRow, live_step: int | None) -> bytes:
    """JobPublic.of(job, live_step) as JSON, serialized once per row and step.

    The requests of one batched read that asked for the same key and job share its row object
    (app.core.batched_reads answers each distinct key once): when many clients poll one job, as a dashboard's
    viewers do, one of them serializes it for all."""
    memo: tuple[int | None, bytes] | None = getattr(job, "_public_json", None)
    if memo is not None and memo[0] == live_step:
        return memo[1]
    body = JobPublic.of(job, live_step=live_step).model_dump_json().encode()
    job._public_json = (live_step, body)  # type: ignore[attr-defined]
    return body


@router.get("/{job_id}/losses", responses=error_responses(400, 404))
async def get_losses(
    job_id: str,
    db: DbDep,
    owner: OwnerDep,
    client: RedisDep,
    after: Annotated[str | None, Query(description="next_cursor of the previous call; leave out to "
                                       "start at step 0.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> LossesPublic:
    """Per-batch losses after a cursor, in step order: poll with next_cursor to follow a running job."""
    last = cursors.decode_step(after) if after else -1

    def read(session: Session) -> list[LossRecord]:
        job = jobs.get_job(session=session, owner=owner, job_id=job_id)
        return jobs.read_losses(session=session, client=client, job_id=job.id, after=last, limit=limit)

    records = await db.read(read)
    if records:
        last = records[-1].step
    return LossesPublic(
        data=[LossPublic(step=r.step, epoch=r.epoch, batch=r.batch, loss=r.loss, t=r.t) for r in records],
        next_cursor=cursors.encode_step(last),
    )


@router.get("/{job_id}/metrics", responses=error_responses(404))
async def get_metrics(job_id: str, db: DbDep, owner: OwnerDep) -> MetricsPublic:
    """Per-epoch train loss, test/validation loss and accuracy, and duration."""

    def read(session: Session) -> MetricsPublic:
        job = jobs.get_job(session=session, owner=owner, job_id=job_id)
        rows = jobs.epoch_metrics(session=session, job_id=job.id)
        return MetricsPublic(data=[EpochMetricPublic.model_validate(r) for r in rows])

    return await db.read(read)


@router.post(
    "/{job_id}/cancel",
    responses={
        200: {"description": "The job was queued and is now cancelled"},
        202: {"model": JobPublic, "description": "The job is running; it stops within a few batches"},
        **error_responses(404, 409),
    },
)
async def cancel_job(job_id: str, response: Response, db: DbDep, owner: OwnerDep, client: RedisDep) -> JobPublic:
    """Cancel a job: a queued one at once, a running one cooperatively (it ends `cancelled`)."""

    def cancel(session: Session) -> JobPublic:
        job = jobs.cancel_job(session=session, client=client, owner=owner, job_id=job_id)
        return JobPublic.of(job, live_step=jobs.live_steps(client=client, job=job))

    job = await db.run(cancel)
    if job.status == JobStatus.running:
        response.status_code = http_status.HTTP_202_ACCEPTED
    return job


@router.delete("/{job_id}", status_code=http_status.HTTP_204_NO_CONTENT, responses=error_responses(404, 409))
async def delete_job(
    job_id: str, request: Request, db: DbDep, owner: OwnerDep, client: RedisDep, settings: SettingsDep,
) -> Response:
    """Delete a job that is not running, with its losses, metrics and artifacts."""
    await db.run(lambda session: jobs.delete_job(session=session, client=client, owner=owner, job_id=job_id,
                                                 artifacts=settings.artifacts_path))
    # What this process keeps of the job goes at once (the models it serves: app.main wires them here).
    for forget in request.app.state.job_deleted:
        forget(job_id)
    return Response(status_code=http_status.HTTP_204_NO_CONTENT)


@router.get(
    "/{job_id}/weights",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}},
                     "description": "The state_dict in safetensors format"},
               **error_responses(404)},
)
async def get_weights(
    job_id: str, db: DbDep, owner: OwnerDep, settings: SettingsDep, which: Literal["best", "last"] = "best",
) -> StreamingResponse:
    """Download the job's best (lowest validation/test loss) or last state_dict as safetensors."""

    def open_file(session: Session) -> tuple[str, BinaryIO, int]:
        job = jobs.get_job(session=session, owner=owner, job_id=job_id)
        # Served from the open file, so a job deleted (or a file replaced) meanwhile cannot break the response.
        file = jobs.open_weights(job=job, which=which, artifacts=settings.artifacts_path)
        return job.id, file, os.fstat(file.fileno()).st_size

    job_id, file, size = await db.read(open_file)
    return stream_file(file, size, media_type="application/octet-stream",
                       filename=f"{job_id}-{storage.WEIGHT_FILES[which]}")


@router.get(
    "/{job_id}/tensorboard",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/gzip": {}},
                     "description": "A tar.gz of the job's TensorBoard event files, in a folder named after the "
                                    "job: `tar xzf` it and run `tensorboard --logdir .`"},
               **error_responses(404)},
)
async def get_tensorboard(job_id: str, db: DbDep, owner: OwnerDep, settings: SettingsDep) -> StreamingResponse:
    """Download the job's TensorBoard event files (per-batch loss, per-epoch metrics, the spec as hparams),
    as far as they are written: a running job's too."""

    def read(session: Session) -> tuple[str, str]:
        job = jobs.get_job(session=session, owner=owner, job_id=job_id)
        return job.id, job.status

    job_id, status = await db.read(read)
    folder = storage.job_dir(settings.artifacts_path, job_id)
    files = await run_in_threadpool(tensorboard_archive.open_event_files, folder)
    if not files:
        raise NotFound(f"job {job_id} has no TensorBoard event files yet (status {status}): they are "
                       "written from its first batch on, and removed with the job")
    return StreamingResponse(
        tensorboard_archive.tar_gz(job_id, files), media_type="application/gzip",
        headers={"content-disposition": f'attachment; filename="{job_id}-tensorboard.tar.gz"'},
        background=BackgroundTask(tensorboard_archive.close_all, files),
    )
