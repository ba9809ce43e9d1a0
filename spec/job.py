"""JobSpec: what a user submits. Generated from the registries, so it accepts exactly what they hold."""

from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    create_model,
    field_validator,
    model_validator,
)

from spec.architectures import ARCHITECTURES, misfit
from spec.datasets import BUILTIN_DATASETS
from spec.params import Params
from spec.training import LOSSES, OPTIMIZERS, SCHEDULERS

# Text a person types: no control characters (PostgreSQL cannot even store a NUL).
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"


def _tagged(tag: str, entries: dict[str, Any], suffix: str, *, nested: str | None = None) -> Any:
    """A discriminated union with one member per registry entry: {tag: name, **entry params}.

    With `nested`, the entry's params sit under that key instead of beside the tag."""
    members = []
    for name, entry in entries.items():
        cls_name = "".join(part.capitalize() for part in name.replace("-", "_").split("_")) + suffix
        if nested:
            fields: dict[str, Any] = {
                tag: (Literal[name], ...),
                nested: (entry.params, Field(default_factory=entry.params)),
            }
            m = create_model(cls_name, __base__=Params, **fields)
        else:
            tagged: dict[str, Any] = {tag: (Literal[name], ...)}
            m = create_model(cls_name, __base__=entry.params, **tagged)
        members.append(m)
    return Annotated[Union[tuple(members)], Field(discriminator=tag)]  # noqa: UP007


if TYPE_CHECKING:  # the unions are built at import time; to a type checker they are Any
    OptimizerSpec: TypeAlias = Any
    LossSpec: TypeAlias = Any
    SchedulerSpec: TypeAlias = Any
    ModelSpec: TypeAlias = Any
else:
    OptimizerSpec = _tagged("name", OPTIMIZERS, "Optimizer")
    LossSpec = _tagged("name", LOSSES, "Loss")
    SchedulerSpec = _tagged("name", SCHEDULERS, "Scheduler")
    ModelSpec = _tagged("arch", ARCHITECTURES, "Model", nested="params")

DatasetName = Literal[tuple(BUILTIN_DATASETS)]  # type: ignore[valid-type]


class RandomCrop(Params):
    """Pad each side by `padding` pixels (zeros), then crop back to the image size at a random offset."""

    padding: Annotated[int, Field(ge=1, le=64)] = 4


class Augment(Params):
    """Seeded augmentations of training batches, applied on the training device (never to val/test)."""

    random_crop: RandomCrop | None = None
    horizontal_flip: bool = Field(default=False, description="Mirror each image left-right with p = 0.5.")

    @property
    def active(self) -> bool:
        return self.random_crop is not None or self.horizontal_flip


class DataOptions(Params):
    val_fraction: Annotated[float, Field(ge=0, le=0.5, description=(
        "Share of the training images held out for validation (seeded); the best weights are chosen "
        "by validation loss when there is a split."))] = 0.0
    normalize: bool = Field(default=False, description=(
        "Standardize each channel with the dataset's mean and std (of its training images)."))
    augment: Augment = Field(default_factory=Augment)


class BuiltinDatasetSpec(DataOptions):
    name: DatasetName = "fashion-mnist"  # type: ignore[valid-type]


class UploadedDatasetSpec(DataOptions):
    id: Annotated[str, Field(min_length=1, max_length=64, description="An uploaded dataset (POST /datasets).")]


def _dataset_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        if "id" in value and "name" in value:
            return None
        return "id" if "id" in value else "name"
    return "id" if isinstance(value, UploadedDatasetSpec) else "name"


DatasetSpec = Annotated[
    Annotated[BuiltinDatasetSpec, Tag("name")] | Annotated[UploadedDatasetSpec, Tag("id")],
    Discriminator(_dataset_kind, custom_error_type="dataset_kind", custom_error_message=(
        "give either 'name' (a built-in dataset: " + ", ".join(map(repr, BUILTIN_DATASETS)) + ") or 'id' "
        "(an uploaded dataset), not both")),
]


def _default(spec: Any, value: dict[str, Any]) -> Any:
    return Field(default_factory=lambda: TypeAdapter(spec).validate_python(value))


class JobSpec(BaseModel):
    """A training job. Defaults equal the Fashion-MNIST tutorial (mlp, SGD lr 1e-3, batch 64, 10 epochs)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {"dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"}},
                {"name": "mnist-tutorial", "dataset": {"name": "mnist"}, "model": {"arch": "mnist-mlp"},
                 "optimizer": {"name": "adam", "lr": 0.001}, "loss": "nll", "epochs": 3,
                 "batch_size": 10, "shuffle": True},
            ]
        },
    )

    name: Annotated[str, Field(min_length=1, max_length=200, pattern=TEXT_PATTERN)] | None = None
    dataset: DatasetSpec = Field(default_factory=BuiltinDatasetSpec)
    model: ModelSpec = _default(ModelSpec, {"arch": "mlp"})
    optimizer: OptimizerSpec = _default(OptimizerSpec, {"name": "sgd"})
    scheduler: SchedulerSpec | None = None
    loss: LossSpec = _default(LossSpec, {"name": "cross_entropy"})
    epochs: Annotated[int, Field(ge=1, le=1000)] = 10
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 64
    shuffle: bool = False
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    device: Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:\d{1,2})?)$")] = "auto"
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_by_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_by_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _fits_together(self) -> "JobSpec":
        arch = ARCHITECTURES[self.model.arch]
        loss = LOSSES[self.loss.name]
        if loss.expects == "log_probs" and arch.output != "log_probs":
            raise ValueError(
                f"loss {loss.name!r} expects log-probabilities but arch {arch.name!r} outputs logits: "
                "use loss 'cross_entropy', or an arch with a log_softmax output such as 'mnist-mlp'"
            )
        # An uploaded dataset's shape is known only to the database: the API checks it on submission.
        if isinstance(self.dataset, BuiltinDatasetSpec):
            shape = BUILTIN_DATASETS[self.dataset.name].info.shape
            if (reason := misfit(arch.name, shape.height, shape.width)) is not None:
                raise ValueError(reason)
        return self

    @property
    def uploaded_dataset(self) -> str | None:
        """The id of the uploaded dataset this job trains on; None for a built-in one."""
        return self.dataset.id if isinstance(self.dataset, UploadedDatasetSpec) else None

    @property
    def model_params(self) -> Params:
        params: Params = self.model.params
        return params

    def component_params(self, part: Literal["optimizer", "loss", "scheduler"]) -> dict[str, Any]:
        """The chosen entry's params, without its name tag."""
        value = getattr(self, part)
        return {} if value is None else value.model_dump(exclude={"name"})
