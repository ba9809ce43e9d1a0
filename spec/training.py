"""Optimizers, losses and schedulers a JobSpec can name: typed, bounded params and their metadata.

The builders (torch) are in worker/optim.py, keyed by the same names."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from spec.params import NoParams, Params

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


@dataclass(frozen=True)
class Optimizer:
    name: str
    params: type[Params]
    # How many parameter-sized tensors it keeps (torch.optim's per-parameter state), from its params: the job budget's
    # (spec.budget) part of the training state.
    buffers: Callable[[Any], int]


OPTIMIZERS: dict[str, Optimizer] = {
    o.name: o
    for o in [
        Optimizer("sgd", SGDParams, lambda p: int(p.momentum > 0)),  # momentum_buffer
        Optimizer("adam", AdamParams, lambda p: 2 + int(p.amsgrad)),  # exp_avg, exp_avg_sq (, max_exp_avg_sq)
        Optimizer("adamw", AdamWParams, lambda p: 2 + int(p.amsgrad)),
        # square_avg (, momentum_buffer, grad_avg)
        Optimizer("rmsprop", RMSpropParams, lambda p: 1 + int(p.momentum > 0) + int(p.centered)),
    ]
}


class CrossEntropyParams(Params):
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0


@dataclass(frozen=True)
class Loss:
    name: str
    description: str
    params: type[Params]
    # "log_probs" losses need an architecture whose output is log-probabilities.
    expects: Literal["logits", "log_probs", "any"] = "any"


LOSSES: dict[str, Loss] = {
    e.name: e
    for e in [
        Loss("cross_entropy", "nn.CrossEntropyLoss on logits (or on log-probabilities).", CrossEntropyParams),
        Loss("nll", "nn.NLLLoss: for architectures that output log_softmax (mnist-mlp).", NoParams,
             expects="log_probs"),
        Loss("mse", "nn.MSELoss against one-hot targets, as the tutorial's Lambda transform.", NoParams),
    ]
}


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


@dataclass(frozen=True)
class Scheduler:
    name: str
    params: type[Params]
    # "epoch": stepped after every epoch; "batch": after every optimizer step.
    interval: Literal["epoch", "batch"]


SCHEDULERS: dict[str, Scheduler] = {
    s.name: s
    for s in [
        Scheduler("step", StepParams, "epoch"),
        Scheduler("cosine", CosineParams, "epoch"),
        Scheduler("onecycle", OneCycleParams, "batch"),
    ]
}
