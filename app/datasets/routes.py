"""Datasets: upload a labelled image archive, follow its ingest, list, inspect, delete."""

import shutil
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi import status as http_status
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.accounts import quotas
from app.accounts.deps import OwnerDep, PrincipalDep, rate_limited
from app.core import storage
from app.core.errors import InvalidSpec, TooManyRequests, UnsupportedMedia
from app.core.tables import DatasetStatus, new_id
from app.datasets import service as datasets
from app.datasets.schemas import DatasetPublic, DatasetsPublic
from app.web.deps import DbDep, PageCursor, PageLimit, SettingsDep
from app.web.responses import error_responses
from app.web.streamed_form import receive_form
from spec.datasets import IngestOptions

router = APIRouter(prefix="/datasets", tags=["datasets"], responses=error_responses(401))

OPTION_FIELDS = frozenset(IngestOptions.model_fields)
FORM_FIELDS = OPTION_FIELDS | {"name"}

_UPLOAD_FORM: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["name", "file"],
            "properties": {
                "name": {"type": "string", "maxLength": 200, "description": "A name for the dataset."},
                "file": {"type": "string", "format": "binary",
                         "description": ".zip, .tar or .tar.gz: class folders (<class>/<image>, optionally under "
                                        "train/ and test/), or a CSV of file,label next to the images."},
                **{name: {**{k: v for k, v in schema.items() if k in ("description", "default", "enum")},
                          "type": "string"}
                   for name, schema in IngestOptions.model_json_schema()["properties"].items()},
            },
        }}},
    },
}


def _must_be_an_archive(filename: str, head: bytes) -> None:
    if storage.archive_kind(head) is None:
        raise UnsupportedMedia(f"file {filename!r} is not a .zip, .tar or .tar.gz archive")


def _options(fields: dict[str, str]) -> tuple[str, IngestOptions]:
    name = fields.get("name", "").strip()
    if not 1 <= len(name) <= 200:
        raise InvalidSpec("name: required, 1 to 200 characters")
    if not name.isprintable():
        raise InvalidSpec("name: no control characters")
    raw: dict[str, Any] = {k: v for k, v in fields.items() if k in OPTION_FIELDS and v.strip() != ""}
    if "skip_invalid" in raw:
        raw["skip_invalid"] = raw["skip_invalid"].strip().lower()
    try:
        return name, IngestOptions.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "options"
        raise InvalidSpec(f"{where}: {first['msg']}") from None


@router.post(
    "", status_code=http_status.HTTP_202_ACCEPTED, openapi_extra=_UPLOAD_FORM,
    responses=error_responses(400, 413, 415, 422, 429, 503), dependencies=[rate_limited("submit")],
)
async def upload_dataset(request: Request, db: DbDep, principal: PrincipalDep, settings: SettingsDep) -> DatasetPublic:
    """Upload a labelled image archive; it is ingested off the API (status processing -> ready | failed)."""
    owner, limits = principal.owner, principal.limits
    room = await db.read(lambda session: quotas.remaining_dataset_bytes(session=session, owner=owner, limits=limits))

    def within_quota(size: int) -> None:
        if size > room:
            raise TooManyRequests(
                f"storage quota reached: this upload passed the {room:,} bytes left of owner {owner!r}'s "
                f"{limits.dataset_bytes:,} (this key's dataset_bytes limit, default TAAS_LIMIT_DATASET_BYTES); "
                "delete datasets you no longer need (DELETE /datasets/{id})",
                retry_after=quotas.STORAGE_RETRY_SECONDS)

    dataset_id = new_id()
    folder = storage.dataset_dir(settings.datasets_path, dataset_id)
    await run_in_threadpool(folder.mkdir, parents=True)
    try:
        form = await receive_form(request, dest=folder / storage.ARCHIVE, file_field="file", fields=FORM_FIELDS,
                                  check_head=_must_be_an_archive, check_size=within_quota)
        name, options = _options(form.fields)

        dataset = await db.run(lambda session: datasets.create_dataset(
            session=session, owner=owner, dataset_id=dataset_id, name=name, options=options,
            archive_bytes=form.size, settings=settings, limits=limits))
        request.state.audit_object = dataset.id
        return DatasetPublic.of(dataset)
    except BaseException:
        await run_in_threadpool(shutil.rmtree, folder, True)
        raise


@router.get("", responses=error_responses(400))
async def list_datasets(
    db: DbDep,
    owner: OwnerDep,
    settings: SettingsDep,
    status: DatasetStatus | None = None,
    limit: PageLimit = 50,
    cursor: PageCursor = None,
) -> DatasetsPublic:
    """List your datasets, newest first, optionally of one status."""
    rows, next_cursor = await db.read(lambda session: datasets.list_datasets(
        session=session, owner=owner, status=status, limit=min(limit, settings.page_size_max), cursor=cursor))
    return DatasetsPublic(data=[DatasetPublic.of(d) for d in rows], next_cursor=next_cursor)


@router.get("/{dataset_id}", responses=error_responses(404))
async def get_dataset(dataset_id: str, db: DbDep, owner: OwnerDep) -> DatasetPublic:
    """A dataset's status (with ingest progress), classes, per-class counts per split, image shape,
    statistics, skipped files and error."""
    return DatasetPublic.of(
        await db.read(lambda session: datasets.get_dataset(session=session, owner=owner, dataset_id=dataset_id)))


@router.delete("/{dataset_id}", status_code=http_status.HTTP_204_NO_CONTENT, responses=error_responses(404, 409))
async def delete_dataset(dataset_id: str, db: DbDep, owner: OwnerDep, settings: SettingsDep) -> Response:
    """Delete a dataset and its files (409 while a queued or running job trains on it)."""
    await db.run(lambda session: datasets.delete_dataset(session=session, owner=owner, dataset_id=dataset_id,
                                                         datasets_dir=settings.datasets_path))
    return Response(status_code=http_status.HTTP_204_NO_CONTENT)
