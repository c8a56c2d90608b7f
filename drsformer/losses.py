"""Training losses, registered for ``train.pixel_opt`` (``type: L1Loss`` is the paper's).

Each takes ``loss_weight`` and ``reduction`` (``mean`` | ``sum`` | ``none``; ``none`` keeps one value per
image) and is called as ``loss(prediction, target)`` on N x C x H x W batches.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .registry import LOSS_REGISTRY

REDUCTIONS = ("mean", "sum", "none")


class _WeightedLoss(nn.Module):
    def __init__(self, loss_weight: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ConfigError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        self.loss_weight = float(loss_weight)
        self.reduction = reduction

    def per_element(self, prediction: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        values = self.per_element(prediction, target)
        if self.reduction == "mean":
            return self.loss_weight * values.mean()
        if self.reduction == "sum":
            return self.loss_weight * values.sum()
        return self.loss_weight * values.flatten(1).mean(dim=1)


@LOSS_REGISTRY.register()
class L1Loss(_WeightedLoss):
    """Mean absolute error (the paper's loss)."""

    def per_element(self, prediction: Tensor, target: Tensor) -> Tensor:
        return (prediction - target).abs()


@LOSS_REGISTRY.register()
class CharbonnierLoss(_WeightedLoss):
    """``sqrt((x - y)^2 + eps^2)``: a smooth L1 that is differentiable at zero."""

    def __init__(self, loss_weight: float = 1.0, reduction: str = "mean", eps: float = 1e-3) -> None:
        super().__init__(loss_weight, reduction)
        self.eps = float(eps)

    def per_element(self, prediction: Tensor, target: Tensor) -> Tensor:
        return torch.sqrt((prediction - target).square() + self.eps**2)


@LOSS_REGISTRY.register()
class PSNRLoss(_WeightedLoss):
    """Negative PSNR on the [0, 1] scale, per image: ``10 log10(MSE + 1e-8)`` (lower is better)."""

    def per_element(self, prediction: Tensor, target: Tensor) -> Tensor:
        mse = (prediction - target).square().flatten(1).mean(dim=1)
        return (10 / math.log(10)) * torch.log(mse + 1e-8)


@LOSS_REGISTRY.register()
class FFTLoss(_WeightedLoss):
    """Mean absolute difference of the 2-D Fourier transforms (real and imaginary parts), ``norm='ortho'``."""

    def per_element(self, prediction: Tensor, target: Tensor) -> Tensor:
        difference = torch.fft.rfft2(prediction.float(), norm="ortho") - torch.fft.rfft2(target.float(), norm="ortho")
        return torch.view_as_real(difference).abs()
