"""Optimizer, loss and scheduler registries: name -> typed, bounded params + builder."""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from models.params import NoParams, Params

LR = Annotated[float, Field(gt=0, le=10)]
Decay = Annotated[float, Field(ge=0, le=1)]
Beta = Annotated[float, Field(ge=0, lt=1)]
Eps = Annotated[float, Field(gt=0, le=1)]


class SGDParams(Params):
    lr: LR = 1e-3
    momentum: Beta = 0.0
    weight_decay: Decay = 0.0
    nesterov: bool = False

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> "SGDParams":
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov requires momentum > 0")
        return self


class AdamParams(Params):
    lr: LR = 1e-3
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: Eps = 1e-8
    weight_decay: Decay = 0.0
    amsgrad: bool = False


class AdamWParams(AdamParams):
    weight_decay: Decay = 0.01


class RMSpropParams(Params):
    lr: LR = 1e-2
    alpha: Beta = 0.99
    eps: Eps = 1e-8
    momentum: Beta = 0.0
    weight_decay: Decay = 0.0
    centered: bool = False


def _kwargs(p: Params) -> dict[str, Any]:
    # Params may arrive as a JobSpec member, which also carries its registry name as a tag.
    return p.model_dump(exclude={"name"})


@dataclass(frozen=True)
class OptimizerEntry:
    name: str
    params: type[Params]
    build: Callable[[Iterable[nn.Parameter], Any], torch.optim.Optimizer]


OPTIMIZERS: dict[str, OptimizerEntry] = {
    o.name: o
    for o in [
        OptimizerEntry("sgd", SGDParams, lambda ps, p: torch.optim.SGD(ps, **_kwargs(p))),
        OptimizerEntry("adam", AdamParams, lambda ps, p: torch.optim.Adam(ps, **_kwargs(p))),
        OptimizerEntry("adamw", AdamWParams, lambda ps, p: torch.optim.AdamW(ps, **_kwargs(p))),
        OptimizerEntry("rmsprop", RMSpropParams, lambda ps, p: torch.optim.RMSprop(ps, **_kwargs(p))),
    ]
}


# --- losses: every loss takes (network output, int64 class targets) -------------------------------

class CrossEntropyParams(Params):
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _mse_one_hot(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # The seeds' Lambda target transform: zeros(10).scatter_(0, y, 1), i.e. a float one-hot vector.
    return F.mse_loss(output, F.one_hot(target, output.shape[1]).to(output.dtype))


@dataclass(frozen=True)
class LossEntry:
    name: str
    description: str
    params: type[Params]
    build: Callable[[Any], LossFn]
    # "log_probs" losses need an architecture whose output is log-probabilities.
    expects: Literal["logits", "log_probs", "any"] = "any"


LOSSES: dict[str, LossEntry] = {
    e.name: e
    for e in [
        LossEntry("cross_entropy", "nn.CrossEntropyLoss on logits (or on log-probabilities).",
                  CrossEntropyParams, lambda p: nn.CrossEntropyLoss(label_smoothing=p.label_smoothing)),
        LossEntry("nll", "nn.NLLLoss: for architectures that output log_softmax (mnist-mlp).",
                  NoParams, lambda p: nn.NLLLoss(), expects="log_probs"),
        LossEntry("mse", "nn.MSELoss against one-hot targets, as the tutorial's Lambda transform.",
                  NoParams, lambda p: _mse_one_hot),
    ]
}


# --- schedulers ----------------------------------------------------------------------------------

class StepParams(Params):
    step_size: Annotated[int, Field(ge=1, le=10_000)] = 1
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.1


class CosineParams(Params):
    t_max: Annotated[int | None, Field(ge=1, le=100_000)] = None  # epochs; default: the job's epochs
    eta_min: Annotated[float, Field(ge=0, le=10)] = 0.0


class OneCycleParams(Params):
    max_lr: LR = 0.1
    pct_start: Annotated[float, Field(gt=0, lt=1)] = 0.3
    anneal_strategy: Literal["cos", "linear"] = "cos"
    div_factor: Annotated[float, Field(ge=1, le=1e6)] = 25.0
    final_div_factor: Annotated[float, Field(ge=1, le=1e9)] = 1e4


Scheduler = torch.optim.lr_scheduler.LRScheduler


@dataclass(frozen=True)
class SchedulerEntry:
    name: str
    params: type[Params]
    # (optimizer, params, epochs, steps_per_epoch) -> scheduler
    build: Callable[[torch.optim.Optimizer, Any, int, int], Scheduler]
    # "epoch": stepped after every epoch; "batch": after every optimizer step.
    interval: Literal["epoch", "batch"]


SCHEDULERS: dict[str, SchedulerEntry] = {
    s.name: s
    for s in [
        SchedulerEntry("step", StepParams, lambda o, p, e, n: torch.optim.lr_scheduler.StepLR(
            o, step_size=p.step_size, gamma=p.gamma), "epoch"),
        SchedulerEntry("cosine", CosineParams, lambda o, p, e, n: torch.optim.lr_scheduler.CosineAnnealingLR(
            o, T_max=p.t_max or e, eta_min=p.eta_min), "epoch"),
        SchedulerEntry("onecycle", OneCycleParams, lambda o, p, e, n: torch.optim.lr_scheduler.OneCycleLR(
            o, max_lr=p.max_lr, epochs=e, steps_per_epoch=n, pct_start=p.pct_start,
            anneal_strategy=p.anneal_strategy, div_factor=p.div_factor,
            final_div_factor=p.final_div_factor), "batch"),
    ]
}
