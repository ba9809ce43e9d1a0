"""Optimizer, loss and scheduler builders, keyed by the names of spec.training's registries."""

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spec.params import Params
from spec.training import LOSSES, OPTIMIZERS, SCHEDULERS


def _kwargs(p: Params) -> dict[str, Any]:
    # Params may arrive as a JobSpec member, which also carries its registry name as a tag.
    return p.model_dump(exclude={"name"})


OptimizerBuilder = Callable[[Iterable[nn.Parameter], Any], torch.optim.Optimizer]

OPTIMIZER_BUILDERS: dict[str, OptimizerBuilder] = {
    "sgd": lambda ps, p: torch.optim.SGD(ps, **_kwargs(p)),
    "adam": lambda ps, p: torch.optim.Adam(ps, **_kwargs(p)),
    "adamw": lambda ps, p: torch.optim.AdamW(ps, **_kwargs(p)),
    "rmsprop": lambda ps, p: torch.optim.RMSprop(ps, **_kwargs(p)),
}


# Every loss takes (network output, int64 class targets).
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _mse_one_hot(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # The seeds' Lambda target transform: zeros(10).scatter_(0, y, 1), i.e. a float one-hot vector.
    return F.mse_loss(output, F.one_hot(target, output.shape[1]).to(output.dtype))


LOSS_BUILDERS: dict[str, Callable[[Any], LossFn]] = {
    "cross_entropy": lambda p: nn.CrossEntropyLoss(label_smoothing=p.label_smoothing),
    "nll": lambda p: nn.NLLLoss(),
    "mse": lambda p: _mse_one_hot,
}


Scheduler = torch.optim.lr_scheduler.LRScheduler
# (optimizer, params, epochs, steps_per_epoch) -> scheduler
SchedulerBuilder = Callable[[torch.optim.Optimizer, Any, int, int], Scheduler]

SCHEDULER_BUILDERS: dict[str, SchedulerBuilder] = {
    "step": lambda o, p, e, n: torch.optim.lr_scheduler.StepLR(o, step_size=p.step_size, gamma=p.gamma),
    "cosine": lambda o, p, e, n: torch.optim.lr_scheduler.CosineAnnealingLR(
        o, T_max=p.t_max or e, eta_min=p.eta_min),
    "onecycle": lambda o, p, e, n: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=p.max_lr, epochs=e, steps_per_epoch=n, pct_start=p.pct_start,
        anneal_strategy=p.anneal_strategy, div_factor=p.div_factor, final_div_factor=p.final_div_factor),
}

# A name in a spec registry without a builder here would validate and then fail in every job.
for _names, _builders in ((OPTIMIZERS, OPTIMIZER_BUILDERS), (LOSSES, LOSS_BUILDERS),
                          (SCHEDULERS, SCHEDULER_BUILDERS)):
    if set(_names) != set(_builders):
        raise RuntimeError(f"builders {sorted(_builders)} do not match the spec registry {sorted(_names)}")
