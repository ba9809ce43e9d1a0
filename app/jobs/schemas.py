"""What the jobs routes answer."""

from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from app.core.tables import JobStatus


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
