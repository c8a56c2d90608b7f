"""The ``skimage`` protocol: the PSNR/SSIM many Python-only deraining papers report, via ``skimage.metrics``.

Y channel: ``skimage.color.rgb2ycbcr(rgb)[..., 0]`` of the uint8 RGB image, i.e. ITU-R BT.601 studio swing,
Y = 16 + 65.481 R + 128.553 G + 24.966 B with R, G, B in [0, 1], as float64 on the 0..255 scale and **not**
rounded (the same Y as the ``rcdnet`` protocol; the ``restormer`` protocol rounds it). A 2-D grayscale image is
used as Y directly.

PSNR: ``peak_signal_noise_ratio(y_target, y_restored, data_range=255)``. SSIM: ``structural_similarity(...,
data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``: an 11 x 11 Gaussian window
(skimage truncates at 3.5 sigma), K = (0.01, 0.03), reflect-filtered and averaged without the 5-pixel border.

Reflect-filtering and then dropping the border equals MATLAB's 'valid' filtering, so on images whose short side
is under 384 pixels these are exactly the ``rcdnet`` protocol's numbers. They differ from ``rcdnet`` on larger
images (``ssim.m`` first downsamples by round(min(H, W) / 256)) and from ``restormer`` everywhere (its Y is
rounded to uint8), so they are not the paper's numbers for Rain200L/H or SPA-Data.
"""

from __future__ import annotations

import math

import numpy as np


def luma(image: np.ndarray) -> np.ndarray:
    """Unrounded BT.601 Y (0..255 scale, float64) of an H x W x 3 uint8 RGB image; a 2-D image as is."""
    from skimage.color import rgb2ycbcr  # imported here: skimage is slow to import and only this protocol needs it

    if image.ndim == 2:
        return image.astype(np.float64)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got shape {image.shape} {image.dtype}")
    return rgb2ycbcr(image)[..., 0]


def skimage_scores(restored: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and SSIM of two uint8 RGB (or 2-D) images, computed by ``skimage.metrics`` on Y."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if restored.shape != target.shape:
        raise ValueError(f"images differ in size: {restored.shape} vs {target.shape}")
    if min(restored.shape[:2]) < 11:
        raise ValueError(f"SSIM needs images of at least 11 x 11 pixels, got {restored.shape[:2]}")
    y_restored, y_target = luma(restored), luma(target)
    if np.array_equal(y_restored, y_target):
        psnr = math.inf  # skimage divides by a zero MSE (with a warning); the other protocols say inf
    else:
        psnr = float(peak_signal_noise_ratio(y_target, y_restored, data_range=255))
    ssim = structural_similarity(
        y_target, y_restored, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    return psnr, float(ssim)
