"""The scoring protocols on tensors, for validation during training (runs on the model's device).

``restormer`` and ``rcdnet`` are the two MATLAB scripts; ``skimage`` (``skimage.metrics`` on unrounded Y with an
11 x 11 Gaussian window, reflect-filtered and the 5-pixel border dropped) is ``rcdnet`` without its downsampling.

Inputs are N x 3 x H x W batches in [0, 1]; they are first quantised to 8 bits as a saved PNG would be
(``round(clamp(x, 0, 1) * 255)``), so the numbers equal what ``drsformer evaluate`` reports on the saved
images. Computed in float64 by default; see :mod:`drsformer.metrics.matlab` for the protocol definitions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..benchmarks import PROTOCOLS
from .matlab import SSIM_K, WINDOW_SIGMA, WINDOW_SIZE, Y_COEFFICIENTS, downsample_factor


def quantize(x: Tensor) -> Tensor:
    """8-bit values (as floats) of images in [0, 1]: what writing them to PNG stores."""
    return torch.round(x.clamp(0, 1) * 255)


def _matlab_round(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def rgb_to_y(rgb255: Tensor, rounded: bool) -> Tensor:
    """N x 1 x H x W luma on the 0..255 scale from N x 3 x H x W RGB with 8-bit values."""
    if rgb255.shape[1] == 1:
        return rgb255
    r, g, b = (rgb255[:, i : i + 1] / 255.0 for i in range(3))
    y = 16.0 + Y_COEFFICIENTS[0] * r + Y_COEFFICIENTS[1] * g + Y_COEFFICIENTS[2] * b
    return _matlab_round(y).clamp(0, 255) if rounded else y


def _separable_valid(x: Tensor, taps: Tensor) -> Tensor:
    k = taps.numel()
    x = F.conv2d(x, taps.view(1, 1, 1, k))
    return F.conv2d(x, taps.view(1, 1, k, 1))


def _gaussian_taps(dtype: torch.dtype, device: torch.device) -> Tensor:
    x = torch.arange(WINDOW_SIZE, dtype=dtype, device=device) - (WINDOW_SIZE - 1) / 2
    taps = torch.exp(-(x**2) / (2 * WINDOW_SIGMA**2))
    return taps / taps.sum()


def _ssim_mean(y1: Tensor, y2: Tensor) -> Tensor:
    if min(y1.shape[-2:]) < WINDOW_SIZE:
        raise ValueError(f"SSIM needs images of at least {WINDOW_SIZE} x {WINDOW_SIZE} pixels, got {tuple(y1.shape)}")
    c1, c2 = (SSIM_K[0] * 255) ** 2, (SSIM_K[1] * 255) ** 2
    taps = _gaussian_taps(y1.dtype, y1.device)
    mu1, mu2 = _separable_valid(y1, taps), _separable_valid(y2, taps)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = _separable_valid(y1 * y1, taps) - mu1_sq
    sigma2_sq = _separable_valid(y2 * y2, taps) - mu2_sq
    sigma12 = _separable_valid(y1 * y2, taps) - mu1_mu2
    ssim = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / ((mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))
    return ssim.mean(dim=(1, 2, 3))


def _pad_symmetric(x: Tensor, before: int, after: int) -> Tensor:
    """MATLAB 'symmetric' padding of the last two dims (mirror including the edge pixel)."""
    for dim in (-2, -1):
        parts = [x]
        if before:
            parts.insert(0, x.narrow(dim, 0, before).flip(dim))
        if after:
            parts.append(x.narrow(dim, x.shape[dim] - after, after).flip(dim))
        x = torch.cat(parts, dim=dim)
    return x


def _downsample(y: Tensor) -> Tensor:
    f = downsample_factor(*y.shape[-2:])
    if f == 1:
        return y
    y = _pad_symmetric(y, (f - 1) // 2, f // 2)
    return _separable_valid(y, torch.full((f,), 1.0 / f, dtype=y.dtype, device=y.device))[..., ::f, ::f]


def _luma_pair(restored: Tensor, target: Tensor, protocol: str, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    if restored.shape != target.shape:
        raise ValueError(f"batches differ in shape: {tuple(restored.shape)} vs {tuple(target.shape)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    rounded = protocol == "restormer"
    return rgb_to_y(quantize(restored.to(dtype)), rounded), rgb_to_y(quantize(target.to(dtype)), rounded)


def psnr(restored: Tensor, target: Tensor, protocol: str, dtype: torch.dtype = torch.float64) -> Tensor:
    """Per-image Y-channel PSNR (dB), shape (N,), of two N x C x H x W batches in [0, 1]."""
    y1, y2 = _luma_pair(restored, target, protocol, dtype)
    mse = (y1 - y2).square().mean(dim=(1, 2, 3))
    return 10 * torch.log10(255.0**2 / mse)  # inf where identical; peak 1 on Y/255 is the same number


def ssim(restored: Tensor, target: Tensor, protocol: str, dtype: torch.dtype = torch.float64) -> Tensor:
    """Per-image Y-channel SSIM, shape (N,), of two N x C x H x W batches in [0, 1]."""
    y1, y2 = _luma_pair(restored, target, protocol, dtype)
    if protocol != "rcdnet":  # restormer: 'valid' filtering; skimage: reflect-filtered, border dropped, the same
        return _ssim_mean(y1, y2)
    return _ssim_mean(_downsample(y1), _downsample(y2))


def psnr_ssim(
    restored: Tensor, target: Tensor, protocol: str, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor]:
    """Per-image PSNR (dB) and SSIM, each of shape (N,), of two N x C x H x W batches in [0, 1]."""
    return psnr(restored, target, protocol, dtype), ssim(restored, target, protocol, dtype)
