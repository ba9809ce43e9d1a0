"""JobSpec: what a user submits. Generated from the registries, so it accepts exactly what they hold."""

from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from models import ARCHITECTURES
from models.params import Params
from worker.datasets import DATASETS
from worker.optim import LOSSES, OPTIMIZERS, SCHEDULERS


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

DatasetName = Literal[tuple(DATASETS)]  # type: ignore[valid-type]


class DatasetSpec(Params):
    name: DatasetName = "fashion-mnist"  # type: ignore[valid-type]
    val_fraction: Annotated[float, Field(ge=0, le=0.5)] = 0.0


def _default(spec: Any, value: dict[str, Any]) -> Any:
    from pydantic import TypeAdapter

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

    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
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
        shape = DATASETS[self.dataset.name].shape
        if min(shape.height, shape.width) < arch.min_size:
            raise ValueError(f"arch {arch.name!r} needs images of at least {arch.min_size} px")
        return self

    @property
    def model_params(self) -> Params:
        params: Params = self.model.params
        return params

    def component_params(self, part: Literal["optimizer", "loss", "scheduler"]) -> dict[str, Any]:
        """The chosen entry's params, without its name tag."""
        value = getattr(self, part)
        return {} if value is None else value.model_dump(exclude={"name"})
