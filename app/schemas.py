"""What the API answers (response models). The body of POST /jobs is app.spec.JobSpec, not redefined."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.tables import Job, JobStatus


class Progress(BaseModel):
    epoch: int = Field(description="Epochs finished (1-based count).")
    step: int = Field(description="Batches finished over the whole job.")
    total_steps: int | None = Field(description="Batches the whole job will run; null until it starts.")


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
    def of(cls, job: Job, *, live_step: int | None = None) -> "JobPublic":
        """The public view of a row; live_step (steps done, from the loss stream) may run ahead of the DB."""
        step = job.step if live_step is None else max(job.step, live_step)
        return cls(
            id=job.id, name=job.name, status=JobStatus(job.status), spec=job.spec, queue=job.queue,
            device=job.device, progress=Progress(epoch=job.epoch, step=step, total_steps=job.total_steps),
            attempt=job.attempt, max_attempts=job.max_attempts, cancel_requested=job.cancel_requested,
            error=job.error, result=job.result, created_at=job.created_at, started_at=job.started_at,
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
    predictions: list[PredictionPublic]


class ImageShape(BaseModel):
    channels: int
    height: int
    width: int


class DatasetInfo(BaseModel):
    name: str
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
    datasets: list[DatasetInfo]
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


_ERROR_DESCRIPTIONS = {
    400: "Bad request (e.g. a cursor this API did not hand out, a broken image)",
    404: "No such job for this owner",
    409: "The job's status does not allow this",
    413: "Too many bytes, files or pixels",
    415: "An upload that is not an image",
    503: "The database, Redis or the job queue is unreachable",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the domain errors a route can answer."""
    return {code: {"model": ErrorPublic, "description": _ERROR_DESCRIPTIONS[code]} for code in codes}
