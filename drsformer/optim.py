"""Optimizers by name from ``torch.optim``, and learning-rate schedules (``train.optim_g``, ``train.scheduler``).

``CosineAnnealingRestartCyclicLR`` and ``CosineAnnealingRestartLR`` follow the definitions of the published
code (inherited from Restormer/BasicSR): the schedule is split into ``periods``; within period j, which covers
steps ``(c_{j-1}, c_j]`` of the cumulative periods (the first also covers step 0), the rate is
``eta_min_j + w_j / 2 * (base - eta_min_j) * (1 + cos(pi * (t - c_{j-1}) / period_j))``. Steps beyond the last
period keep the last period's final value (the published code fails there).
"""

from __future__ import annotations

import bisect
import itertools
import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LRScheduler, MultiStepLR

from .errors import ConfigError
from .registry import OPTIMIZER_REGISTRY, SCHEDULER_REGISTRY

# Optimizers a config may name (``type: AdamW``): torch.optim's own classes, registered explicitly.
for _name in ("Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adamax", "NAdam", "RAdam", "Adadelta"):
    OPTIMIZER_REGISTRY.add(getattr(torch.optim, _name))


class _PeriodicCosine(LRScheduler):
    """Cosine annealing within each of several periods; see the module docstring."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        periods: Sequence[int],
        restart_weights: Sequence[float],
        eta_mins: Sequence[float],
        last_epoch: int = -1,
    ) -> None:
        periods = [int(p) for p in periods]
        if not periods or min(periods) < 1:
            raise ConfigError(f"periods must be a non-empty list of positive integers, got {list(periods)}")
        if len(restart_weights) != len(periods) or len(eta_mins) != len(periods):
            raise ConfigError(
                f"periods {periods}, restart_weights {list(restart_weights)} and eta_mins {list(eta_mins)} "
                "need one entry per period"
            )
        self.periods = periods
        self.restart_weights = [float(w) for w in restart_weights]
        self.eta_mins = [float(e) for e in eta_mins]
        self.cumulative = list(itertools.accumulate(periods))
        super().__init__(optimizer, last_epoch)

    def value_at(self, step: int, base_lr: float | Tensor) -> float | Tensor:
        """The rate at scheduler step ``step`` for a group whose initial rate is ``base_lr`` (a float, or a tensor
        as PyTorch's schedulers allow)."""
        step = min(step, self.cumulative[-1])
        j = bisect.bisect_left(self.cumulative, step)  # first period whose end is >= step
        start = self.cumulative[j - 1] if j else 0
        eta_min = self.eta_mins[j]
        phase = math.pi * (step - start) / self.periods[j]
        return eta_min + self.restart_weights[j] * 0.5 * (base_lr - eta_min) * (1 + math.cos(phase))

    def get_lr(self) -> list[float | Tensor]:
        return [self.value_at(self.last_epoch, base) for base in self.base_lrs]

    _get_closed_form_lr = get_lr


@SCHEDULER_REGISTRY.register()
class CosineAnnealingRestartCyclicLR(_PeriodicCosine):
    """Cosine periods, each with its own floor ``eta_mins[j]`` (the paper: 92k at 3e-4, then 208k down to 1e-6)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        periods: Sequence[int],
        restart_weights: Sequence[float] = (1,),
        eta_mins: Sequence[float] = (0,),
        last_epoch: int = -1,
    ) -> None:
        super().__init__(optimizer, periods, restart_weights, eta_mins, last_epoch)


@SCHEDULER_REGISTRY.register()
class CosineAnnealingRestartLR(_PeriodicCosine):
    """Cosine periods sharing one floor ``eta_min``, restarting at ``restart_weights[j]`` times the base rate."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        periods: Sequence[int],
        restart_weights: Sequence[float] = (1,),
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        super().__init__(optimizer, periods, restart_weights, [eta_min] * len(periods), last_epoch)


SCHEDULER_REGISTRY.add(MultiStepLR)


def set_learning_rate(
    optimizer: torch.optim.Optimizer, scheduler: LRScheduler | None, iteration: int, warmup_iter: int, factor: float
) -> float:
    """Sets the rate of 1-based ``iteration`` and returns it (the first group's).

    Iteration ``i`` uses the scheduler's value at step ``i - 1`` (the scheduler is stepped before every
    iteration but the first, as the published loop does); ``warmup_iter`` scales the initial rate linearly before
    that, and ``factor`` (halved by each rollback) scales the result.
    """
    groups = optimizer.param_groups
    if scheduler is not None:
        if iteration > 1:
            for group, value in zip(groups, scheduler.get_last_lr(), strict=True):
                group["lr"] = value  # undo the warm-up / rollback scaling before the scheduler steps
            with warnings.catch_warnings():  # it complains when the first steps were skipped as non-finite
                warnings.simplefilter("ignore", UserWarning)
                scheduler.step()
        values = list(scheduler.get_last_lr())
    else:
        values = [group["initial_lr"] for group in groups]
    if 0 < iteration < warmup_iter:
        values = [group["initial_lr"] * iteration / warmup_iter for group in groups]
    for group, value in zip(groups, values, strict=True):
        group["lr"] = value * factor
    return groups[0]["lr"]
