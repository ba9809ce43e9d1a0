"""Dataset metadata both sides agree on: the built-in datasets, what a trained job remembers of its
data (DatasetInfo: classes, image shape, normalization statistics), and the options of an upload."""

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from spec.networks.layers import InputShape
from spec.params import Params

# Larger sides are refused: a store is N x C x H x W bytes, and resizing exists to make images small.
MAX_SIDE = 1024
MAX_CLASSES = 10_000


class ImageShape(Params):
    channels: Literal[1, 3]
    height: Annotated[int, Field(ge=1, le=MAX_SIDE)]
    width: Annotated[int, Field(ge=1, le=MAX_SIDE)]


class DatasetInfo(BaseModel):
    """What a job needs of its dataset to train and to predict: stored with the job, so a job keeps
    predicting after its dataset is deleted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    classes: list[str] = Field(min_length=2, max_length=MAX_CLASSES)
    shape: ImageShape
    # Per channel, of the training images scaled to [0, 1]; used by jobs with "normalize": true.
    mean: list[float]
    std: list[float]

    def input_shape(self) -> InputShape:
        return InputShape(self.shape.channels, self.shape.height, self.shape.width, len(self.classes))


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    description: str
    folder: str  # torchvision's folder under the data root, e.g. FashionMNIST/raw/
    info: DatasetInfo


FASHION_CLASSES = ("T-Shirt", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle Boot")
_GRAY28 = ImageShape(channels=1, height=28, width=28)

BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    d.name: d
    for d in [
        # mean/std: of the 60,000 training images, measured on the original files.
        BuiltinDataset("fashion-mnist", "Zalando Fashion-MNIST: 60,000 + 10,000 28x28 grayscale images.",
                       "FashionMNIST", DatasetInfo(classes=list(FASHION_CLASSES), shape=_GRAY28,
                                                   mean=[0.2860406], std=[0.3530242])),
        BuiltinDataset("mnist", "MNIST handwritten digits: 60,000 + 10,000 28x28 grayscale images.",
                       "MNIST", DatasetInfo(classes=[str(i) for i in range(10)], shape=_GRAY28,
                                            mean=[0.1306605], std=[0.3081078])),
    ]
}


class IngestOptions(Params):
    """How an uploaded archive becomes a dataset (the optional fields of POST /datasets)."""

    test_fraction: Annotated[float, Field(gt=0, lt=1, description=(
        "Share of each class held out for testing when the archive has no test part (stratified, "
        "seeded)."))] = 0.2
    image_size: tuple[int, int] | None = Field(default=None, description=(
        "Resize every image to HEIGHTxWIDTH (or SIZE for a square); by default all images must share "
        "one size."))
    channels: Literal[1, 3] | None = Field(default=None, description=(
        "1 (grayscale) or 3 (RGB); by default 1 when every image is grayscale, else 3."))
    skip_invalid: bool = Field(default=False, description=(
        "Skip (and count) files that are not images or do not decode, instead of failing the upload."))
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0

    @field_validator("image_size", mode="before")
    @classmethod
    def _parse_size(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return (v, v)
        if isinstance(v, str):
            match = re.fullmatch(r"\s*(\d{1,5})\s*(?:[xX]\s*(\d{1,5})\s*)?", v)
            if match is None:
                raise ValueError("give SIZE or HEIGHTxWIDTH in pixels, e.g. 32 or 32x48")
            height = int(match[1])
            return (height, int(match[2] or height))
        return v

    @field_validator("image_size")
    @classmethod
    def _bounded(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not all(1 <= side <= MAX_SIDE for side in v):
            raise ValueError(f"each side must be between 1 and {MAX_SIDE} pixels")
        return v
