"""What the datasets routes answer."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.core.tables import Dataset, DatasetStatus


class ImageShape(BaseModel):
    channels: int
    height: int
    width: int


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
