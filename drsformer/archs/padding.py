"""Padding the model needs: reflect-pad to a multiple of 8 and crop back. Imports nothing from drsformer."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pads the bottom and right of an NCHW batch so that H and W become multiples of ``multiple``.

    Uses reflect padding (mirror without repeating the edge pixel), as the published test script does, and
    replicate padding when a side is too short to reflect (padding >= that side). Returns the padded batch
    (``x`` itself when no padding is needed) and the original (H, W).
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not pad_h and not pad_w:
        return x, (h, w)
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode), (h, w)


def crop_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """The top-left ``size`` = (H, W) of an NCHW batch."""
    return x[..., : size[0], : size[1]]
