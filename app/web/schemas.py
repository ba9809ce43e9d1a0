"""What the API answers (response models). The body of POST /jobs is app.spec.JobSpec, not redefined."""

from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

from fastapi import Response
from pydantic import BaseModel, ConfigDict, Field

from app.accounts.limits import EffectiveLimits, Limits
from app.core.tables import ApiKey, Dataset, DatasetStatus, JobStatus


class Progress(BaseModel):
    epoch: int = Field(description="Epochs finished (1-based count).")
    step: int = Field(description="Batches finished over the whole job.")
    total_steps: int | None = Field(description="Batches the whole job will run; null until it starts.")


class JobRow(Protocol):
    """What JobPublic is made from: an ORM Job, or the row app.jobs.reads reads without the ORM."""

    id: str
    name: str | None
    status: str
    spec: dict[str, Any]
    queue: str
    device: str | None
    epoch: int
    step: int
    total_steps: int | None
    attempt: int
    max_attempts: int
    cancel_requested: bool
    error: str | None
    result: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def public_result(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """A job's summary without server paths (jobs finished by older workers stored their weights' paths;
    GET /jobs/{id}/weights serves the files)."""
    if result is None or "weights" not in result:
        return result
    return {k: v for k, v in result.items() if k != "weights"}


class JobPublic(BaseModel):
    id: str
    name: str | None
    status: JobStatus
    spec: dict[str, Any] = Field(description="The submitted JobSpec with every default filled in.")
    queue: str
    device: str | None
    progress: Progress
    attempt: int
    max_attempts: int
    cancel_requested: bool
    error: str | None
    result: dict[str, Any] | None = Field(description="Summary metrics once the job succeeded.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: JobRow, *, live_step: int | None = None) -> "JobPublic":
        """The public view of a row; live_step (steps done, from the loss stream) may run ahead of the DB.

        Built without validation (model_construct): every value comes from our own row, typed by its column,
        and validating the nested spec again cost as much as the rest of GET /jobs/{id}."""
        step = job.step if live_step is None else max(job.step, live_step)
        return cls.model_construct(
            id=job.id, name=job.name, status=JobStatus(job.status), spec=job.spec, queue=job.queue,
            device=job.device,
            progress=Progress.model_construct(epoch=job.epoch, step=step, total_steps=job.total_steps),
            attempt=job.attempt, max_attempts=job.max_attempts, cancel_requested=job.cancel_requested,
            error=job.error, result=public_result(job.result), created_at=job.created_at, started_at=job.started_at,
            finished_at=job.finished_at,
        )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")


class LossPublic(BaseModel):
    step: int = Field(description="Counts from 0 over the whole job.")
    epoch: int
    batch: int
    loss: float
    t: float = Field(description="Unix seconds at which the batch finished.")


class LossesPublic(BaseModel):
    data: list[LossPublic]
    next_cursor: str = Field(
        description="Pass as ?after= to get what follows; when data is empty it is the cursor you sent, "
        "so polling with it is always safe."
    )


class EpochMetricPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int
    train_loss: float
    test_loss: float
    test_accuracy: float = Field(description="Fraction in [0, 1].")
    val_loss: float | None
    val_accuracy: float | None
    seconds: float
    lr: float | None


class MetricsPublic(BaseModel):
    data: list[EpochMetricPublic]


class PredictionPublic(BaseModel):
    filename: str
    class_index: int
    label: str
    probabilities: list[float] = Field(description="One per class, in class_index order; they sum to 1.")


class PredictionsPublic(BaseModel):
    job_id: str
    classes: list[str] = Field(description="The class names, in class_index order (of every probabilities list).")
    predictions: list[PredictionPublic]


class ImageShape(BaseModel):
    channels: int
    height: int
    width: int


class CatalogDataset(BaseModel):
    name: str
    id: str | None = Field(description="An uploaded dataset's id (a spec names it as {\"id\": ...}); null for "
                                       "a built-in one (named as {\"name\": ...}).")
    source: Literal["builtin", "upload"]
    description: str
    shape: ImageShape
    classes: list[str]


class ArchitectureInfo(BaseModel):
    name: str
    description: str
    params: dict[str, Any] = Field(description="JSON schema of model.params.")
    output: Literal["logits", "log_probs"]
    min_size: int = Field(description="Smallest image height/width it accepts.")


class OptimizerInfo(BaseModel):
    name: str
    params: dict[str, Any] = Field(description="JSON schema of the fields beside name.")


class LossInfo(BaseModel):
    name: str
    description: str
    params: dict[str, Any]
    expects: Literal["logits", "log_probs", "any"]


class SchedulerInfo(BaseModel):
    name: str
    params: dict[str, Any]
    interval: Literal["epoch", "batch"] = Field(description="Stepped after every epoch or every batch.")


class CatalogPublic(BaseModel):
    datasets: list[CatalogDataset]
    architectures: list[ArchitectureInfo]
    optimizers: list[OptimizerInfo]
    losses: list[LossInfo]
    schedulers: list[SchedulerInfo]


class HealthPublic(BaseModel):
    status: Literal["ok", "unavailable"]
    db: str = Field(description="'ok', or why the database check failed.")
    redis: str = Field(description="'ok', or why the Redis check failed.")


class ErrorPublic(BaseModel):
    detail: str = Field(description="What went wrong and what to do about it.")


class SplitPublic(BaseModel):
    images: int
    per_class: dict[str, int] = Field(description="Images of each class in this split.")


class SkippedPublic(BaseModel):
    reason: str
    count: int
    examples: list[str] = Field(description="Up to 10 of the archive's paths skipped for this reason.")


class IngestProgress(BaseModel):
    images: int = Field(description="Images decoded so far.")
    total: int | None = Field(description="Images to decode; null until the archive was read.")


class DatasetPublic(BaseModel):
    id: str
    name: str
    status: DatasetStatus
    error: str | None = Field(description="Why the dataset failed, in words a person can act on.")
    layout: Literal["class_folders", "csv"] | None
    classes: list[str] = Field(description="Class names, in class_index order (what /predict answers).")
    splits: dict[str, SplitPublic] | None = Field(description="train and test: images and images per class.")
    shape: ImageShape | None = Field(description="Every image's channels, height and width in the store.")
    mean: list[float] | None = Field(description="Per channel, of the training images in [0, 1].")
    std: list[float] | None
    skipped: list[SkippedPublic] = Field(description="Files left out, grouped by reason.")
    options: dict[str, Any] = Field(description="The upload's options, with their defaults filled in.")
    progress: IngestProgress
    archive_bytes: int
    store_bytes: int | None
    created_at: datetime
    ready_at: datetime | None = Field(description="When it became ready or failed.")

    @classmethod
    def of(cls, d: Dataset) -> "DatasetPublic":
        info = d.info or {}
        return cls(
            id=d.id, name=d.name, status=DatasetStatus(d.status), error=d.error, layout=d.layout,  # type: ignore[arg-type]
            classes=info.get("classes", []), splits=d.splits, shape=info.get("shape"), mean=info.get("mean"),
            std=info.get("std"), skipped=d.skipped or [], options=d.options,
            progress=IngestProgress(images=d.images_done, total=d.images_total), archive_bytes=d.archive_bytes,
            store_bytes=d.store_bytes, created_at=d.created_at, ready_at=d.ready_at,
        )


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")


Owner = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$",
                             description="Letters, digits and . _ @ - (an account, team or e-mail name).")]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    owner: Owner
    admin: bool = False
    name: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")] | None = None
    limits: Limits = Field(default_factory=Limits, description="Overrides of the server's limits for this key.")


class KeyPublic(BaseModel):
    id: str
    owner: str
    admin: bool
    name: str | None
    prefix: str = Field(description="The key's first characters, to tell keys apart.")
    limits: Limits = Field(description="This key's overrides (absent ones: the server's settings).")
    effective_limits: EffectiveLimits
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey, effective: EffectiveLimits) -> "KeyPublic":
        return cls(id=row.id, owner=row.owner, admin=row.admin, name=row.name, prefix=row.prefix,
                   limits=Limits.model_validate(row.limits or {}), effective_limits=effective,
                   created_at=row.created_at, revoked_at=row.revoked_at)


class KeyCreated(KeyPublic):
    key: str = Field(description="The key itself: shown only in this answer, stored only as a hash.")


class KeysPublic(BaseModel):
    data: list[KeyPublic]
    next_cursor: str | None


class AuditEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    key_id: str | None
    owner: str | None
    method: str
    route: str
    object_id: str | None
    status_code: int
    outcome: Literal["succeeded", "denied", "limited", "refused", "failed"]
    client: str | None


class AuditPublic(BaseModel):
    data: list[AuditEventPublic]
    next_cursor: str | None


ERROR_DESCRIPTIONS = {
    400: "Bad request (e.g. a cursor this API did not hand out, a broken image)",
    401: "No API key, or an unknown or revoked one (Authorization: Bearer <key>)",
    403: "The key is not an admin key",
    404: "No such job or dataset for this owner",
    409: "The job's or dataset's status does not allow this",
    413: "Too many bytes, files or pixels",
    415: "An upload that is not an image (predict) or not an archive (datasets)",
    422: "A field breaks a rule (or a limit): the message names the field and the rule",
    429: "Over a quota or a rate limit (named in the message); retry after Retry-After seconds",
    503: "The database, Redis or the job queue is unreachable",
}


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """A model as a JSON response, serialized once (a route returning it declares response_model)."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the domain errors a route can answer."""
    return {code: {"model": ErrorPublic, "description": ERROR_DESCRIPTIONS[code]} for code in codes}
