"""Jobs: submit, list, inspect, follow (losses, metrics), cancel, delete, download weights and TensorBoard files."""

import os
import stat
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, BinaryIO, Literal

import redis
from fastapi import APIRouter, Query, Request, Response
from fastapi import status as http_status
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from app.core import cursors, storage
from app.core.config import get_settings
from app.core.db import Database
from app.core.errors import NotFound
from app.core.loss_stream import LossRecord
from app.core.tables import JobStatus
from app.jobs import service as jobs
from app.jobs.reads import FastReads
from app.serving import export
from app.serving.export import ExportFormat
from app.web.deps import (
    BearerDep,
    DbDep,
    OwnerDep,
    PrincipalDep,
    RedisDep,
    ServedDep,
    SettingsDep,
    get_principal,
    rate_limited,
)
from app.web.fast_routes import read_job
from app.web.schemas import (
    EpochMetricPublic,
    JobPublic,
    JobsPublic,
    LossesPublic,
    LossPublic,
    MetricsPublic,
    error_responses,
    json_response,
)
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
    limit: Annotated[int, Query(ge=1, le=10_000, description="Page size (capped at the server's "
                                "page_size_max).")] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> JobsPublic:
    """List your jobs, newest first, optionally of one status."""
    rows, next_cursor = await db.read(lambda session: jobs.list_jobs(
        session=session, owner=owner, status=status, limit=min(limit, settings.page_size_max), cursor=cursor))
    return JobsPublic(data=[JobPublic.of(j) for j in rows], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobPublic, responses=error_responses(404))
async def get_job(job_id: str, request: Request, credentials: BearerDep) -> Response:
    """A job's status, progress, timings, result and error."""
    # The route every dashboard polls: on PostgreSQL with keys on, app.web.fast_routes answers it before FastAPI's
    # routing (this branch serves an app built without that layer). Its clients come from app.state rather
    # than from dependencies (each one a coroutine FastAPI resolves per request).
    reads: FastReads | None = request.app.state.fast_reads
    if reads is not None and get_settings().auth:
        return await read_job(request, reads, credentials, job_id)
    owner = (await get_principal(request, credentials)).owner
    if reads is not None:  # auth off, on PostgreSQL
        job = await reads.job(owner=owner, job_id=job_id)
        if job is None:
            raise jobs.job_not_found(job_id)
        return json_response(JobPublic.of(job, live_step=await reads.live_step(job)))
    db: Database = request.app.state.db
    client: redis.Redis = request.app.state.redis

    def read(session: Session) -> JobPublic:
        job = jobs.get_job(session=session, owner=owner, job_id=job_id)
        return JobPublic.of(job, live_step=jobs.live_steps(client=client, job=job))

    # The hot path of every dashboard: serialized once, without FastAPI validating the model a second time.
    return json_response(await db.read(read))


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
    job_id: str, db: DbDep, owner: OwnerDep, client: RedisDep, settings: SettingsDep, served: ServedDep,
) -> Response:
    """Delete a job that is not running, with its losses, metrics and artifacts."""
    await db.run(lambda session: jobs.delete_job(session=session, client=client, owner=owner, job_id=job_id,
                                                 artifacts=settings.artifacts_path))
    served.evict(job_id)
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
    return StreamingResponse(
        _chunks(file), media_type="application/octet-stream",
        headers={"content-length": str(size),
                 "content-disposition": f'attachment; filename="{job_id}-{which}.safetensors"'},
        # Also closes the file when the client went away before the first chunk.
        background=BackgroundTask(file.close),
    )


def _chunks(file: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    with file:
        while chunk := file.read(size):
            yield chunk


EXPORT_MEDIA = {"onnx": "application/onnx", "torchscript": "application/octet-stream"}


@router.get(
    "/{job_id}/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/onnx": {}, "application/octet-stream": {}},
                     "description": "The best network with its preprocessing and softmax: float32 pixels "
                                    "N x C x H x W (0..1, as ToTensor gives them) in, probabilities N x K out"},
               **error_responses(404, 409)},
)
async def export_job(
    job_id: str, owner: OwnerDep, settings: SettingsDep, served: ServedDep,
    format: Annotated[ExportFormat, Query(description="onnx (input 'input', output 'probabilities', dynamic "
                                           "batch) or torchscript (torch.jit.load)")] = "onnx",
) -> StreamingResponse:
    """A succeeded job's best network for other runtimes, produced on first request and kept with the job's
    artifacts; onnxruntime and torch.jit.load give the probabilities POST /predict gives."""
    model = await served.get(owner=owner, job_id=job_id)

    def open_export() -> tuple[BinaryIO, int]:
        try:
            file = export.ensure_export(model, format, settings.artifacts_path).open("rb")
        except FileNotFoundError:
            raise NotFound(f"job {job_id}'s artifacts are gone (the job was deleted)") from None
        return file, os.fstat(file.fileno()).st_size

    file, size = await run_in_threadpool(open_export)
    name = storage.EXPORT_FILES[format]
    return StreamingResponse(
        _chunks(file), media_type=EXPORT_MEDIA[format],
        headers={"content-length": str(size), "content-disposition": f'attachment; filename="{job_id}-{name}"'},
        background=BackgroundTask(file.close),
    )


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
    files = await run_in_threadpool(_open_event_files, storage.job_dir(settings.artifacts_path, job_id))
    if not files:
        raise NotFound(f"job {job_id} has no TensorBoard event files yet (status {status}): they are "
                       "written from its first batch on, and removed with the job")
    return StreamingResponse(
        _tar_gz(job_id, files), media_type="application/gzip",
        headers={"content-disposition": f'attachment; filename="{job_id}-tensorboard.tar.gz"'},
        background=BackgroundTask(_close_all, files),
    )


EventFile = tuple[str, BinaryIO, os.stat_result]


def _open_event_files(job_folder: Path) -> list[EventFile]:
    """The job's event files, opened (what is deleted or grows meanwhile cannot break the archive); never a
    symbolic link, nor anything but a regular file, so nothing outside the job's folder is read."""
    opened: list[EventFile] = []
    for path in storage.event_files(job_folder):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # gone, or replaced by a link, since it was listed
        file = os.fdopen(fd, "rb")
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode):
            opened.append((path.name, file, info))
        else:
            file.close()
    return opened


def _tar_gz(top: str, files: list[EventFile]) -> Iterator[bytes]:
    """A tar.gz of `files` under the folder `top`, compressed as it is sent (a sync iterator: Starlette runs it
    on a thread, off the event loop)."""
    gz = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: the gzip format
    for part in _tar(top, files):
        if compressed := gz.compress(part):
            yield compressed
    yield gz.flush()


def _tar(top: str, files: list[EventFile], chunk: int = 1 << 20) -> Iterator[bytes]:
    """The tar stream: each file as long as it was when opened (one still being written grows meanwhile)."""
    for name, file, info in files:
        header = tarfile.TarInfo(f"{top}/{name}")
        header.size, header.mtime, header.mode = info.st_size, int(info.st_mtime), 0o644
        yield header.tobuf(format=tarfile.PAX_FORMAT)  # any name length
        remaining = info.st_size
        while remaining:
            # Zeros if it shrank (nothing truncates event files): the archive stays well formed.
            data = file.read(min(chunk, remaining)) or b"\0" * min(chunk, remaining)
            remaining -= len(data)
            yield data
        yield b"\0" * (-info.st_size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)  # the end-of-archive marker


def _close_all(files: list[EventFile]) -> None:
    for _, file, _ in files:
        file.close()
