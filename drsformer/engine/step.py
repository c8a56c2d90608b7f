"""One optimizer step: micro-batches under autocast, the fp16 gradient scaler, accumulation (DDP's ``no_sync`` on
all but the last micro-batch), clipping, and EMA after a step that happened.

:meth:`Stepper.accumulate` runs the forward and backward passes and leaves the loss, the gradient norm and the
health flags as tensors on the device; :meth:`Stepper.finish` applies (or drops) the step once the caller has
read the flags, folded with its own, in one reduction (:func:`drsformer.engine.distributed.reduce_flags`). So a
step costs one device-to-host read.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..precision import autocast, needs_grad_scaler
from .data import mixup, mixup_seed

# An fp16 loss scale below this means the gradients no longer fit fp16 at any useful scale (see engine.guard).
LOSS_SCALE_FLOOR = 1.0


class EMA:
    """Exponential moving average of the parameters (buffers copied): ``ema = decay * ema + (1 - decay) * p``."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema: list[Tensor] = list(self.module.parameters())
        live = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema, live, 1.0 - self.decay)
        for target, source in zip(self.module.buffers(), model.buffers(), strict=True):
            target.copy_(source)


@dataclass
class Accumulated:
    """What :meth:`Stepper.accumulate` leaves for the caller: device tensors, and host-side counts."""

    loss: Tensor  # mean over the micro-batches, float32
    grad_norm: Tensor  # before clipping; inf or NaN when a gradient is not finite
    loss_bad: Tensor  # bool: the loss is not finite
    grad_bad: Tensor  # bool: a gradient is not finite
    scale_low: Tensor  # bool: the fp16 loss scale fell below LOSS_SCALE_FLOOR
    images: int
    data_wait: float
    batches: list[dict[str, Any]]  # host-side parts of the micro-batches (names of files a dataset skipped)


@dataclass(frozen=True)
class StepOptions:
    precision: str
    clip_norm: float | None
    memory_format: torch.memory_format
    mixup: dict[str, Any]
    seed: int
    rank: int


class Stepper:
    """Owns the pieces of an optimizer step. ``net`` is what runs forward (DDP and/or compiled), ``model`` the
    plain module whose parameters are clipped, stepped and averaged, ``ddp`` the DDP wrapper if any."""

    def __init__(
        self,
        model: nn.Module,
        net: Callable[[Tensor], Tensor],
        optimizer: torch.optim.Optimizer,
        loss_fn: nn.Module,
        options: StepOptions,
        device: torch.device,
        ema: EMA | None = None,
        ddp: nn.parallel.DistributedDataParallel | None = None,
    ) -> None:
        self.model, self.net, self.optimizer, self.loss_fn = model, net, optimizer, loss_fn
        self.options, self.device, self.ema, self.ddp = options, device, ema, ddp
        self.scaler = torch.amp.GradScaler(device.type, enabled=needs_grad_scaler(options.precision))

    def release_wrappers(self) -> None:
        """Drops the DDP (and compiled) wrappers once training is over; what remains runs the plain model."""
        self.net, self.ddp = self.model, None

    def reset_scaler(self) -> None:
        """A fresh gradient scaler (its initial scale), e.g. after a rollback that restored a collapsed one."""
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.scaler.is_enabled())

    def _batch(self, batch: dict[str, Any], micro_step: int) -> tuple[Tensor, Tensor]:
        fmt = self.options.memory_format
        lq = batch["lq"].to(self.device, non_blocking=True).contiguous(memory_format=fmt)
        gt = batch["gt"].to(self.device, non_blocking=True).contiguous(memory_format=fmt)
        mix = self.options.mixup
        if mix["mixup"]:
            seed = mixup_seed(self.options.seed, self.options.rank, micro_step)
            lq, gt = mixup(lq, gt, seed, mix["mixup_beta"], mix["use_identity"])
        return lq, gt

    def accumulate(self, batches: Iterator[dict[str, Any]], accum: int, micro_start: int) -> Accumulated:
        """Forward and backward over ``accum`` micro-batches (gradients averaged), then unscale and clip."""
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        images, wait, seen = 0, 0.0, []
        for k in range(accum):
            start = time.perf_counter()
            batch = next(batches)
            wait += time.perf_counter() - start
            seen.append({"skipped": batch.get("skipped", ())})
            lq, gt = self._batch(batch, micro_start + k)
            last = k == accum - 1
            with contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync():
                with autocast(self.device, self.options.precision):
                    loss = self.loss_fn(self.net(lq), gt)
                self.scaler.scale(loss / accum).backward()
            loss_sum += loss.detach().float()
            images += lq.shape[0]
        loss = loss_sum / accum
        self.scaler.unscale_(self.optimizer)
        grad_norm = self._clip().float()
        scale = getattr(self.scaler, "_scale", None)  # the scale as a device tensor: no host read
        scale_low = scale.reshape(()) < LOSS_SCALE_FLOOR if self.scaler.is_enabled() and scale is not None else None
        return Accumulated(
            loss=loss,
            grad_norm=grad_norm,
            loss_bad=~torch.isfinite(loss),
            grad_bad=~torch.isfinite(grad_norm),
            scale_low=scale_low if scale_low is not None else torch.zeros((), dtype=torch.bool, device=self.device),
            images=images,
            data_wait=wait,
            batches=seen,
        )

    def _clip(self) -> Tensor:
        """The gradients' total L2 norm, before clipping; clips to ``clip_norm`` when one is set (without one,
        only the norm is computed: clipping to infinity would still rescale every gradient)."""
        if self.options.clip_norm is not None:
            return torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.options.clip_norm)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.device)
        return torch.linalg.vector_norm(torch.stack([n.to(self.device) for n in torch._foreach_norm(grads)]))

    def finish(self, step: bool) -> None:
        """Applies the accumulated step, or drops it (``step`` False: a non-finite loss or gradient). With fp16
        the scaler updates its scale either way (it shrinks after a gradient overflow); EMA moves only when the
        optimizer did."""
        if self.scaler.is_enabled():
            if step:
                self.scaler.step(self.optimizer)
            self.scaler.update()
        elif step:
            self.optimizer.step()
        if not step:
            self.optimizer.zero_grad(set_to_none=True)
        elif self.ema is not None:
            self.ema.update(self.model)

    def scale(self) -> float | None:
        """The fp16 loss scale (a host read: for logging), or None without a scaler."""
        return float(self.scaler.get_scale()) if self.scaler.is_enabled() else None
