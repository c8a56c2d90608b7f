"""Padding (and, later, tiling) shared by the model, validation, testing and photo deraining."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pads the bottom and right of an NCHW batch so H and W are multiples of ``multiple``.

    Reflect padding, as the published test script uses; replicate padding where the image is too small to
    reflect (pad >= side). Returns the padded batch (``x`` itself when no padding is needed) and the original
    (H, W).
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not pad_h and not pad_w:
        return x, (h, w)
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode), (h, w)


def crop_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Crops an NCHW batch back to (H, W) from the top-left."""
    return x[..., : size[0], : size[1]]
