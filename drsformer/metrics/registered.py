"""Validation metrics by name (``val.metrics.<label>.type``), on tensors, under a scoring protocol.

The names are the ones the authors' options files use. Both are Y-channel metrics; ``crop_border`` and
``test_y_channel`` are accepted for those files, with the only values the paper's protocols allow.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ..errors import ConfigError
from ..registry import METRIC_REGISTRY
from . import torch_metrics

MetricFn = Callable[[Tensor, Tensor, str], Tensor]


def _check(crop_border: int, test_y_channel: bool) -> None:
    if crop_border:
        raise ConfigError(f"crop_border: the paper's protocols score whole images; use 0, got {crop_border}")
    if not test_y_channel:
        raise ConfigError("test_y_channel: the paper's protocols score the Y channel; use true")


@METRIC_REGISTRY.register("psnr")
def calculate_psnr(crop_border: int = 0, test_y_channel: bool = True) -> MetricFn:
    """Per-image Y PSNR (dB) under a protocol (``restormer`` or ``rcdnet``)."""
    _check(crop_border, test_y_channel)
    return torch_metrics.psnr


@METRIC_REGISTRY.register("ssim")
def calculate_ssim(crop_border: int = 0, test_y_channel: bool = True) -> MetricFn:
    """Per-image Y SSIM under a protocol (``restormer`` or ``rcdnet``)."""
    _check(crop_border, test_y_channel)
    return torch_metrics.ssim
