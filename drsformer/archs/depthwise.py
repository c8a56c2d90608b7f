"""Depth-wise convolutions whose weight gradient is computed as a forward convolution on CPU.

oneDNN's backward-weights kernel for depth-wise convolutions is fast for 3x3 kernels only: for 5x5, 7x7 and
dilated kernels it ran 1.4-3.4x slower in float32 (2.9-7.6x in bfloat16) than the same sums written as a forward
convolution (``scripts/bench_depthwise_grad.py``, docs/benchmarks.md).
That sum is ``grad_w[c, i, j] = sum_{h, w} x_padded[c, h + d i, w + d j] * grad_out[c, h, w]``: a depth-wise
convolution of the padded input with the output gradient as its kernel, at stride ``d``, per image. The input's
gradient and the bias's stay with PyTorch's kernel, which is fast for every size.

Under bf16 autocast it also gives the right answer where PyTorch's does not: with torch 2.14.1 on CPU, the weight
gradient of a dilated depth-wise convolution in channels-last bf16 came out wrong (relative error above 1, against
0.3 % for undilated ones; ``tests/test_depthwise.py``), which is what MEFC's dilated experts train with.

Large dilated kernels on CPU run as undilated ones on the image's phases (:func:`dilated_by_phases`): oneDNN's
depth-wise kernels for AVX2 CPUs fall to a slow path once a dilated kernel's padding reaches 5, and MEFC's 7x7
experts at dilation 2 (padding 6) ran 37x slower there than the same sums on the phases.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .padding import is_tracing

# The dtypes the weight gradient is computed in here; float16 stays with PyTorch (not timed; its gradients were right).
COMPUTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def _cpu_autocast_dtype() -> torch.dtype | None:
    """The dtype CPU autocast runs convolutions in, or None when it is off."""
    try:
        if not torch.is_autocast_enabled("cpu"):
            return None
        return torch.get_autocast_dtype("cpu")
    except TypeError:  # torch < 2.4 takes no device type
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None


def depthwise_weight_gradient(grad_out: Tensor, x: Tensor, kernel: tuple[int, int], padding: tuple[int, int],
                              dilation: tuple[int, int]) -> Tensor:  # fmt: skip
    """The gradient of a stride-1 depth-wise convolution's weight, (C, 1, kh, kw), from its input and output
    gradient, both (N, C, H, W)."""
    channels = x.shape[1]
    total: Tensor | None = None
    for image in range(x.shape[0]):
        kernel_of_image = grad_out[image].unsqueeze(1)  # (C, 1, H_out, W_out)
        part = F.conv2d(x[image : image + 1], kernel_of_image, padding=padding, stride=dilation, groups=channels)
        total = part if total is None else total.add_(part)
    assert total is not None
    return total.view(channels, 1, kernel[0], kernel[1])


class _DepthwiseConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int],
                dilation: tuple[int, int]) -> Tensor:  # fmt: skip
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation, ctx.has_bias = padding, dilation, bias is not None
        return F.conv2d(x, weight, bias, padding=padding, dilation=dilation, groups=x.shape[1])

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_input = grad_weight = grad_bias = None
        if need_input or need_bias:
            grad_input, _, grad_bias = torch.ops.aten.convolution_backward(
                grad_out, x, weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1], list(ctx.padding),
                list(ctx.dilation), False, [0, 0], x.shape[1], [need_input, False, need_bias and ctx.has_bias],
            )  # fmt: skip
        if need_weight:
            kernel = (weight.shape[2], weight.shape[3])
            grad_weight = depthwise_weight_gradient(grad_out, x, kernel, ctx.padding, ctx.dilation)
        return grad_input, grad_weight, grad_bias, None, None


def _weight_gradient_dtype(x: Tensor, weight: Tensor, dilation: tuple[int, int]) -> torch.dtype | None:
    """The dtype the convolution runs in when its weight gradient is computed here, or None when PyTorch's serves:
    no gradient needed, not on CPU, a 3x3 undilated kernel, or a dtype outside :data:`COMPUTED_DTYPES`."""
    if not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad) and x.device.type == "cpu"):
        return None
    if max(weight.shape[2:]) <= 3 and max(dilation) == 1:
        return None
    autocast_dtype = _cpu_autocast_dtype()  # autocast leaves float64 alone
    dtype = autocast_dtype if autocast_dtype is not None and x.dtype != torch.float64 else x.dtype
    return dtype if dtype in COMPUTED_DTYPES else None


# The padding from which a dilated kernel runs on the image's phases on CPU (docs/benchmarks.md: 1.6-1.8 GFLOP/s
# from padding 5 on, against 20-40 below it, for 48 channels at 128x128, AVX2).
PHASES_FROM_PADDING = 5


def _runs_on_phases(x: Tensor, weight: Tensor, padding: tuple[int, int], dilation: tuple[int, int]) -> bool:
    """Whether :func:`depthwise_conv2d` computes this convolution with :func:`dilated_by_phases`: on CPU, eagerly,
    with one dilation above 1 for both axes, "same" padding, and that padding at least :data:`PHASES_FROM_PADDING`."""
    if x.device.type != "cpu" or dilation[0] == 1 or dilation[0] != dilation[1] or is_tracing():
        return False
    same = all(p == dilation[0] * (k - 1) // 2 and k % 2 == 1 for p, k in zip(padding, weight.shape[2:], strict=True))
    return same and max(padding) >= PHASES_FROM_PADDING


def dilated_by_phases(x: Tensor, weight: Tensor, bias: Tensor | None, dilation: int) -> Tensor:
    """A stride-1 depth-wise convolution at ``dilation`` d with "same" padding, as an undilated one on each of the
    image's d x d phases (the pixels whose row and column are equal modulo d), batched, and interleaved back.

    Output pixel (d i + a, d j + b) sums the same products either way: the kernel's taps, d pixels apart, only
    ever meet pixels of the phase (a, b), which are 1 apart there. Sides that are not multiples of d are padded
    with zeros (what the convolution's padding reads anyway) and cropped. The memory layout (NCHW or NHWC) is
    kept; the convolution on the phases runs through :func:`depthwise_conv2d`, gradients included.
    """
    n, c, height, width = x.shape
    d = dilation
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    pad_h, pad_w = -height % d, -width % d
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    h, w = (height + pad_h) // d, (width + pad_w) // d
    grid = x.reshape(n, c, h, d, w, d)  # (image, channel, row, row phase, column, column phase)
    kernel = (weight.shape[2], weight.shape[3])
    padding = ((kernel[0] - 1) // 2, (kernel[1] - 1) // 2)
    if channels_last:
        phases = grid.permute(0, 3, 5, 2, 4, 1).contiguous().view(n * d * d, h, w, c).permute(0, 3, 1, 2)
        out = depthwise_conv2d(phases, weight, bias, padding)
        out = out.permute(0, 2, 3, 1).reshape(n, d, d, h, w, c).permute(0, 3, 1, 4, 2, 5)
        merged = out.contiguous().view(n, h * d, w * d, c).permute(0, 3, 1, 2)
    else:
        phases = grid.permute(0, 3, 5, 1, 2, 4).contiguous().view(n * d * d, c, h, w)
        out = depthwise_conv2d(phases, weight, bias, padding).view(n, d, d, c, h, w)
        merged = out.permute(0, 3, 4, 1, 5, 2).contiguous().view(n, c, h * d, w * d)
    return merged[:, :, :height, :width] if pad_h or pad_w else merged


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, padding: int | tuple[int, ...] = 0,
                     dilation: int | tuple[int, ...] = 1) -> Tensor:  # fmt: skip
    """``F.conv2d(x, weight, bias, padding=padding, dilation=dilation, groups=C)`` (stride 1), with the weight
    gradient above when a gradient is needed, on CPU, for kernels above 3x3 or dilated ones, in float32, float64
    or bfloat16 (bf16 autocast included: the inputs are cast as autocast would). Large dilated kernels on CPU run
    on the image's phases (:func:`dilated_by_phases`)."""
    padding, dilation = _pair(padding), _pair(dilation)
    if _runs_on_phases(x, weight, padding, dilation):
        return dilated_by_phases(x, weight, bias, dilation[0])
    dtype = _weight_gradient_dtype(x, weight, dilation)
    if dtype is None:
        return F.conv2d(x, weight, bias, padding=padding, dilation=dilation, groups=x.shape[1])
    with torch.autocast("cpu", enabled=False):
        cast_bias = None if bias is None else bias.to(dtype)
        return _DepthwiseConv2d.apply(x.to(dtype), weight.to(dtype), cast_bias, padding, dilation)
