"""PSNR and SSIM exactly as the two MATLAB scripts behind the paper's tables compute them (float64 NumPy).

``restormer`` protocol (Restormer's ``evaluate_PSNR_SSIM.m``; Rain200L, Rain200H, SPA-Data):
    Y = ``rgb2ycbcr`` of the uint8 RGB image, rounded to uint8; PSNR with peak 255; the 2003 ``SSIM_index``
    (11 x 11 Gaussian window, sigma 1.5, K = (0.01, 0.03), L = 255, 'valid' filtering, no downsampling).

``rcdnet`` protocol (RCDNet's ``statistic.m`` / ``psnr.m`` / ``ssim.m``; DID-Data, DDN-Data):
    Y = ``rgb2ycbcr`` of ``im2double`` RGB, not rounded; PSNR with peak 1; the 2009 ``ssim.m`` on Y * 255, which
    first downsamples by f = max(1, round(min(H, W) / 256)) (MATLAB round: halves away from zero): an f x f mean
    filter with 'symmetric' padding and 'same' size, then every f-th pixel from the first.

``rgb2ycbcr`` is ITU-R BT.601 studio swing: Y = 16 + (65.481 R + 128.553 G + 24.966 B) with R, G, B in [0, 1].
A grayscale image (2-D array) is used as Y directly, as the scripts do for single-channel files.

``skimage`` protocol (not MATLAB; what many Python-only papers report): ``skimage.metrics`` on unrounded Y, see
:mod:`drsformer.metrics.skimage_protocol`. :func:`drsformer.metrics.protocols.evaluate_pair` picks by name.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
SSIM_K = (0.01, 0.03)
Y_COEFFICIENTS = (65.481, 128.553, 24.966)


def matlab_round(x: np.ndarray | float) -> np.ndarray | float:
    """MATLAB's round: halves go away from zero (NumPy and Python round halves to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def rgb_to_y(rgb: np.ndarray, rounded: bool) -> np.ndarray:
    """Luma of an H x W x 3 uint8 RGB image on the 0..255 scale (float64).

    ``rounded=True`` gives MATLAB's uint8 ``rgb2ycbcr`` (Y rounded to an integer); ``False`` gives
    ``255 * rgb2ycbcr(im2double(rgb))``, unrounded. A 2-D array is returned as is (as float64).
    """
    if rgb.ndim == 2:
        return rgb.astype(np.float64)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB, got {rgb.dtype}")
    rgb = rgb.astype(np.float64) / 255.0
    r, g, b = Y_COEFFICIENTS
    y = 16.0 + r * rgb[..., 0] + g * rgb[..., 1] + b * rgb[..., 2]
    return np.clip(matlab_round(y), 0, 255) if rounded else y


def gaussian_taps(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> np.ndarray:
    """1-D taps whose outer product is ``fspecial('gaussian', size, sigma)`` (the 2-D kernel separates, and its
    normalisation too; for 11 x 11, sigma 1.5 no tap falls under fspecial's eps cut-off)."""
    x = np.arange(size) - (size - 1) / 2
    taps = np.exp(-(x**2) / (2 * sigma**2))
    return taps / taps.sum()


def filter_valid(image: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """``filter2(outer(taps, taps), image, 'valid')``: separable 2-D correlation without padding."""
    rows = sliding_window_view(image, taps.size, axis=1) @ taps
    return sliding_window_view(rows, taps.size, axis=0) @ taps


def ssim_map(y1: np.ndarray, y2: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """The SSIM index map of two luma images (Gaussian 11 x 11, sigma 1.5, 'valid'), as both scripts do it."""
    if y1.shape != y2.shape:
        raise ValueError(f"SSIM needs equal sizes, got {y1.shape} and {y2.shape}")
    if min(y1.shape) < WINDOW_SIZE:
        raise ValueError(f"SSIM needs images of at least {WINDOW_SIZE} x {WINDOW_SIZE} pixels, got {y1.shape}")
    c1 = (SSIM_K[0] * data_range) ** 2
    c2 = (SSIM_K[1] * data_range) ** 2
    window = gaussian_taps()
    mu1, mu2 = filter_valid(y1, window), filter_valid(y2, window)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = filter_valid(y1 * y1, window) - mu1_sq
    sigma2_sq = filter_valid(y2 * y2, window) - mu2_sq
    sigma12 = filter_valid(y1 * y2, window) - mu1_mu2
    return ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / ((mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))


def downsample_factor(height: int, width: int) -> int:
    """``max(1, round(min(H, W) / 256))`` with MATLAB rounding (640 -> 3, where Python's round gives 2)."""
    return max(1, int(matlab_round(min(height, width) / 256)))


def mean_filter_symmetric(image: np.ndarray, f: int) -> np.ndarray:
    """``imfilter(image, ones(f)/f^2, 'symmetric', 'same')`` (correlation; for even f the window covers
    offsets -(f-1)//2 .. f//2, MATLAB's kernel-centre convention)."""
    before, after = (f - 1) // 2, f // 2
    padded = np.pad(image, ((before, after), (before, after)), mode="symmetric")
    return filter_valid(padded, np.full(f, 1.0 / f))


def ssim_downsampled(y1: np.ndarray, y2: np.ndarray) -> float:
    """The 2009 ``ssim.m``: automatic downsampling, then the mean SSIM map (inputs on the 0..255 scale)."""
    f = downsample_factor(*y1.shape)
    if f > 1:
        y1 = mean_filter_symmetric(y1, f)[::f, ::f]
        y2 = mean_filter_symmetric(y2, f)[::f, ::f]
    return float(ssim_map(y1, y2).mean())


def psnr(y1: np.ndarray, y2: np.ndarray, peak: float) -> float:
    """``10 log10(peak^2 / MSE)``; ``inf`` for identical images."""
    if y1.shape != y2.shape:
        raise ValueError(f"PSNR needs equal sizes, got {y1.shape} and {y2.shape}")
    mse = float(np.mean((y1 - y2) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def restormer_scores(restored: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and SSIM under the ``restormer`` protocol (see the module) of two uint8 RGB (or 2-D) images."""
    y1, y2 = rgb_to_y(restored, rounded=True), rgb_to_y(target, rounded=True)
    return psnr(y1, y2, 255.0), float(ssim_map(y1, y2).mean())


def rcdnet_scores(restored: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and SSIM under the ``rcdnet`` protocol (see the module) of two uint8 RGB (or 2-D) images."""
    y1, y2 = rgb_to_y(restored, rounded=False), rgb_to_y(target, rounded=False)
    return psnr(y1 / 255.0, y2 / 255.0, 1.0), ssim_downsampled(y1, y2)
