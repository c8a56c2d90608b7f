"""Padding the model needs: reflect-pad to a multiple of 8 and crop back. Imports nothing from drsformer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pads the bottom and right of an NCHW batch so that H and W become multiples of ``multiple``.

    Uses reflect padding (mirror without repeating the edge pixel), as the published test script does, and
    replicate padding when a side is too short to reflect (padding >= that side). Returns the padded batch
    (``x`` itself when no padding is needed) and the original (H, W).
    """
    h, w = x.shape[-2:]
    # Written as "round up, subtract" so that a tracer with symbolic H, W can see the padded size is a multiple.
    pad_h = (h + multiple - 1) // multiple * multiple - h
    pad_w = (w + multiple - 1) // multiple * multiple - w
    # When traced (torch.export, ONNX, torch.compile), H and W may be symbolic: padding by zero is then part of
    # the graph, so that other sizes take the padding the traced size did not need.
    if not is_tracing() and not pad_h and not pad_w:
        return x, (h, w)
    if is_tracing():
        return reflect_by_indexing(x, pad_h, pad_w), (h, w)
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode), (h, w)


def _reflected_indices(size, pad, device: torch.device) -> Tensor:
    index = torch.arange(size + pad, device=device)
    return torch.where(index < size, index, 2 * (size - 1) - index)


def reflect_by_indexing(x: Tensor, pad_h, pad_w) -> Tensor:
    """Reflect padding at the bottom and right as gathers: the same values as ``F.pad(mode="reflect")``, but with
    no branch on the sizes, so a tracer keeps H, W and the padding symbolic. Sides must exceed the padding."""
    rows = _reflected_indices(x.shape[-2], pad_h, x.device)
    cols = _reflected_indices(x.shape[-1], pad_w, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def is_tracing() -> bool:
    """Whether torch.compile or torch.export is tracing this call (input sizes may then be symbolic)."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return torch.compiler.is_compiling() or exporting()


def crop_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """The top-left ``size`` = (H, W) of an NCHW batch."""
    if is_tracing():  # gathers: a slice would make the tracer prove H <= padded H, which it cannot
        rows = torch.arange(size[0], device=x.device)
        cols = torch.arange(size[1], device=x.device)
        return x.index_select(-2, rows).index_select(-1, cols)
    return x[..., : size[0], : size[1]]
