"""Restoring whole images with a trained model: the one function validation, test, derain and the demo share."""

from __future__ import annotations

import torch
from torch import Tensor, nn

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device | str, precision: str) -> torch.autocast:
    """``torch.autocast`` for ``precision`` (fp32: disabled)."""
    dtype = PRECISIONS[precision]
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)


@torch.inference_mode()
def restore(model: nn.Module, image: Tensor, precision: str = "fp32") -> Tensor:
    """Derains an N x C x H x W batch in [0, 1] of any H, W; returns float32 in [0, 1].

    The model pads to a multiple of 8 and crops back itself (see :mod:`drsformer.archs.padding`).
    """
    with autocast(image.device, precision):
        out = model(image)
    return out.float().clamp_(0, 1)
