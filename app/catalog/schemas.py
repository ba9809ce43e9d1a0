"""What GET /catalog answers."""

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.datasets.schemas import ImageShape


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
