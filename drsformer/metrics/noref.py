"""No-reference quality: NIQE and BRISQUE as pyiqa 0.1.16 computes them with its defaults (NumPy and OpenCV;
BRISQUE's float32 steps in torch, as pyiqa does them).

The DRSformer authors score real rain with pyiqa's ``create_metric('niqe')`` and ``create_metric('brisque')``
(``evaluations/Evaluation_Real/eval_niqe_brisque.py``). These functions give the same numbers (measured agreement
in the README) without pyiqa, its downloads or its dependencies. Lower is better for both.

Which step follows which definition:

* **Luminance** (both metrics, pyiqa's default ``color_space='yiq'``): Y of YIQ, ``0.299 R + 0.587 G + 0.114 B``
  on RGB in [0, 1], times 255 and rounded to an integer (half to even), evaluated in float32 in that order as
  pyiqa's tensors are, so the rounding of ties agrees. A grayscale image is three equal channels (pyiqa opens
  files with ``PIL.Image.convert('RGB')``), which gives back the gray value. No border is cropped.
* **MSCN coefficients** (both): ``(Y - mu) / (sigma + 1)`` with mu and sigma from a 7 x 7 Gaussian window,
  sigma 7/6 (MATLAB ``fspecial``, its weights rounded to float32 as pyiqa stores them), ``sigma =
  sqrt(|E[Y^2] - mu^2| + eps)``. NIQE pads by replicating the border (as the LIVE MATLAB code's
  ``imfilter(..., 'replicate')``), BRISQUE with zeros (pyiqa's ``padding='same'``).
* **Resizing** (both): MATLAB ``imresize(Y, 0.5)``: bicubic (a = -0.5) with antialiasing, the kernel widened by 2,
  symmetric border; at scale 0.5 that is the fixed 8-tap filter :data:`HALF_TAPS` at stride 2, summed in
  pyiqa's order.
* **Precision** (pyiqa's, where it changes the result): NIQE works in float64 except its resize, which pyiqa runs
  in float32. In flat regions ``E[Y^2] - mu^2`` is all rounding (about 1e-3 for NIQE, from the window's sum
  1 + 1.1e-8), and that rounding sets sigma there, so it is kept. BRISQUE is float32 throughout, as in pyiqa, and
  its rounding is reproduced, not just its precision: after the (bit-exact) resize, the MSCN, fits and SVR are
  the torch operations pyiqa uses, in its order, on one thread (see the BRISQUE section below for why).
* **Shape fits** (both): the (asymmetric) generalized Gaussian shape is the value of the grid 0.2:0.001:10
  (built as pyiqa builds it, ``torch.arange`` in float32) whose moment ratio is nearest, first one on ties; a
  ratio that is NaN (a side with no pixels) picks the first grid value, as ``torch.argmin`` does. NIQE compares
  with float64 ratios, BRISQUE with pyiqa's float32 ones.
* **NIQE** (Mittal, Soundararajan and Bovik 2013; the LIVE release's ``computequality.m`` as pyiqa ports it):
  the image is cropped to whole 96 x 96 patches from the top left; each patch gives 18 features at full scale
  (AGGD shape and mean scale of the MSCN, then shape, mean, left and right scale of the products with the
  neighbours at shifts (0, 1), (1, 0), (1, 1), (1, -1), wrapping around inside the patch) and 18 more on the
  half-size image with 48 x 48 patches. The score is the distance ``sqrt(d' pinv((C_pris + C) / 2) d)`` between
  the published pristine model (``mu_prisparam``, ``cov_prisparam`` of ``niqe_modelparameters.mat``) and the
  patches' mean (NaN-ignoring per feature) and covariance (over patches without NaN; zero for one patch).
* **BRISQUE** (Mittal, Moorthy and Bovik 2012; the LIVE release's features, pyiqa's ``version='original'``):
  18 features of the whole image at two scales: GGD shape and variance of the MSCN, then per neighbour product
  (shifts (0, 1), (1, 0), (1, 1), (-1, 1), wrapping around the image) AGGD shape, mean ``eta`` and left and right
  variances. They are scaled to [-1, 1] by the release's ``allrange`` and scored by its epsilon-SVR ``allmodel``
  (RBF kernel): ``sum_i coef_i exp(-gamma |f - sv_i|^2) - rho``.

The published parameters are read from ``noref_params.npz`` beside this file (see ``noref_params.md`` for where
they come from and how to check them).
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import EvaluationError

NOREF_METRICS = ("niqe", "brisque")
PARAMS_FILE = Path(__file__).with_name("noref_params.npz")

NIQE_PATCH = 96
BRISQUE_MIN_SIZE = 7  # pyiqa's resize (4 reflected pixels, applied twice) fails on anything narrower
MSCN_SIZE = 7
MSCN_SIGMA = 7.0 / 6.0
MSCN_C = 1.0
YIQ_Y = (0.299, 0.587, 0.114)
# MATLAB imresize(x, 0.5), bicubic with antialiasing: output i = sum_k HALF_TAPS[k] * x[2i - 3 + k]. These are the
# cubic kernel's values at distances 1.75, 1.25, 0.75, 0.25 (halved for the antialiasing), normalised; all exact.
HALF_TAPS = np.array([-3, -9, 29, 111, 111, 29, -9, -3], dtype=np.float64) / 256.0
NIQE_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))
BRISQUE_SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))


# ----------------------------------------------------------------------------------------------------------------
# Published parameters and the shape grid


@dataclass(frozen=True)
class NoRefParams:
    """The LIVE releases' numbers: NIQE's pristine model and BRISQUE's SVR and feature ranges."""

    niqe_mu: np.ndarray  # (36,)
    niqe_cov: np.ndarray  # (36, 36)
    brisque_sv: np.ndarray  # (n, 36) support vectors, in scaled feature space
    brisque_coef: np.ndarray  # (n,)
    brisque_gamma: float
    brisque_rho: float
    brisque_range: np.ndarray  # (36, 2): each feature's [min, max], mapped to [-1, 1]


@functools.lru_cache(maxsize=1)
def load_params(path: str | None = None) -> NoRefParams:
    """The shipped parameters (or those in ``path``), read once; the arrays are read-only."""
    with np.load(path or PARAMS_FILE) as data:
        arrays = {key: data[key] for key in data.files}
    for array in arrays.values():
        array.setflags(write=False)
    return NoRefParams(
        niqe_mu=arrays["niqe_mu"],
        niqe_cov=arrays["niqe_cov"],
        brisque_sv=arrays["brisque_sv"],
        brisque_coef=arrays["brisque_coef"],
        brisque_gamma=float(arrays["brisque_gamma"]),
        brisque_rho=float(arrays["brisque_rho"]),
        brisque_range=arrays["brisque_range"],
    )


@dataclass(frozen=True)
class ShapeGrid:
    """Candidate shapes and their moment ratios; log-gamma values kept for the formulas that need them."""

    shape: np.ndarray
    lg1: np.ndarray  # lgamma(1 / shape)
    lg2: np.ndarray  # lgamma(2 / shape)
    lg3: np.ndarray  # lgamma(3 / shape)
    aggd_ratio: np.ndarray  # Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)), increasing


@functools.lru_cache(maxsize=1)
def shape_grid() -> ShapeGrid:
    """0.2:0.001:10 exactly as pyiqa builds it (float32 ``torch.arange``), the ratios in float64."""
    import torch

    shape = torch.arange(0.2, 10 + 0.001, 0.001).double()
    lg1, lg2, lg3 = (torch.lgamma(k / shape) for k in (1, 2, 3))
    aggd = torch.exp(2 * lg2 - lg1 - lg3)
    return ShapeGrid(*(t.numpy() for t in (shape, lg1, lg2, lg3, aggd)))


def nearest_index(table: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``argmin |table - v|`` for each v, for an increasing ``table``: the first index on ties, 0 for NaN."""
    right = np.clip(np.searchsorted(table, values), 0, table.size - 1)
    left = np.maximum(right - 1, 0)
    take_left = np.abs(table[left] - values) <= np.abs(table[right] - values)
    return np.where(np.isnan(values), 0, np.where(take_left, left, right))


# ----------------------------------------------------------------------------------------------------------------
# Image preparation


def luminance(image: np.ndarray) -> np.ndarray:
    """pyiqa's luminance of an H x W x 3 uint8 RGB image (or H x W gray): rounded YIQ Y on 0..255, as float64."""
    if image.dtype != np.uint8:
        raise EvaluationError(f"expected an 8-bit image, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None].repeat(3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise EvaluationError(f"expected an H x W x 3 RGB or H x W gray image, got shape {image.shape}")
    rgb = image.astype(np.float32) / np.float32(255)
    w = np.array(YIQ_Y, dtype=np.float32)
    y = (rgb[:, :, 0] * w[0] + rgb[:, :, 1] * w[1]) + rgb[:, :, 2] * w[2]  # float32, pyiqa's order
    return np.round(y * np.float32(255)).astype(np.float64)


@functools.lru_cache(maxsize=1)
def gaussian_window() -> np.ndarray:
    """MATLAB ``fspecial('gaussian', 7, 7/6)`` rounded to float32, as pyiqa keeps it (its sum is 1 + 1.1e-8)."""
    x = np.arange(MSCN_SIZE) - (MSCN_SIZE - 1) / 2
    window = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * MSCN_SIGMA**2))
    window = (window / window.sum()).astype(np.float32)
    window.setflags(write=False)
    return window


def mscn(y: np.ndarray, replicate: bool) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients ``(y - mu) / (sigma + 1)``, in ``y``'s precision.

    ``sigma = sqrt(|E[y^2] - mu^2| + eps)``. The window's sum is not exactly 1, and in flat regions that, and
    float32 rounding, set sigma; so both are kept as pyiqa has them. ``replicate`` pads by repeating the border,
    otherwise with zeros.
    """
    border = cv2.BORDER_REPLICATE if replicate else cv2.BORDER_CONSTANT
    window = gaussian_window().astype(y.dtype)
    mu = cv2.filter2D(y, -1, window, borderType=border)
    var = cv2.filter2D(y * y, -1, window, borderType=border) - mu * mu
    eps = np.finfo(y.dtype).eps
    return (y - mu) / (np.sqrt(np.abs(var) + eps) + y.dtype.type(MSCN_C))


def _half_axis0(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    m = (n + 1) // 2
    before, after = 3, 2 * m + 3 - n  # rows -3 .. 2m + 2, reflected with the border row repeated
    padded = np.pad(x, [(before, after)] + [(0, 0)] * (x.ndim - 1), mode="symmetric")
    taps = HALF_TAPS.astype(x.dtype)
    out = taps[0] * padded[0 : 2 * m : 2]
    for k in range(1, taps.size):  # summed in this order, as pyiqa does, so float32 results agree bit for bit
        out += taps[k] * padded[k : k + 2 * m : 2]
    return out


def imresize_half(y: np.ndarray) -> np.ndarray:
    """MATLAB ``imresize(y, 0.5)`` (bicubic, antialiasing): ceil(H / 2) x ceil(W / 2), rows first, in ``y``'s
    precision."""
    return np.ascontiguousarray(_half_axis0(np.ascontiguousarray(_half_axis0(y).T)).T)


# ----------------------------------------------------------------------------------------------------------------
# Distribution fits, one per row


def aggd_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric generalized Gaussian fit of each row of ``x``: (grid index of the shape, left std, right std).

    The stds are root mean squares of the negative and of the positive values (NaN for a side with none).
    """
    x2 = x * x
    negative, positive = x < 0, x > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.sqrt(np.where(negative, x2, 0.0).sum(axis=-1) / negative.sum(axis=-1))
        right = np.sqrt(np.where(positive, x2, 0.0).sum(axis=-1) / positive.sum(axis=-1))
        g = left / right
        r_hat = np.abs(x).mean(axis=-1) ** 2 / x2.mean(axis=-1)
        r_norm = r_hat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    return nearest_index(shape_grid().aggd_ratio, r_norm), left, right


# ----------------------------------------------------------------------------------------------------------------
# NIQE


def _patch_features(coefficients: np.ndarray, patch: int) -> np.ndarray:
    """NIQE's 18 features of every ``patch`` x ``patch`` block of an image cropped to whole blocks."""
    h, w = coefficients.shape
    blocks = coefficients.reshape(h // patch, patch, w // patch, patch).swapaxes(1, 2).reshape(-1, patch, patch)
    grid = shape_grid()
    features = []
    index, left, right = aggd_fit(blocks.reshape(len(blocks), -1))
    scale = np.exp(0.5 * (grid.lg1[index] - grid.lg3[index]))  # beta = std * sqrt(Gamma(1/a) / Gamma(3/a))
    features += [grid.shape[index], (left + right) * scale / 2]
    for shift in NIQE_SHIFTS:
        products = blocks * np.roll(blocks, shift, axis=(1, 2))
        index, left, right = aggd_fit(products.reshape(len(blocks), -1))
        scale = np.exp(0.5 * (grid.lg1[index] - grid.lg3[index]))
        beta_l, beta_r = left * scale, right * scale
        mean = (beta_r - beta_l) * np.exp(grid.lg2[index] - grid.lg1[index])
        features += [grid.shape[index], mean, beta_l, beta_r]
    return np.stack(features, axis=1)


def check_niqe_size(height: int, width: int) -> None:
    """Raises :class:`EvaluationError` for an image with no whole 96 x 96 patch."""
    if height < NIQE_PATCH or width < NIQE_PATCH:
        raise EvaluationError(
            f"too small for NIQE: {width}x{height} pixels (width x height); NIQE needs at least "
            f"{NIQE_PATCH}x{NIQE_PATCH}, one whole {NIQE_PATCH}-pixel patch"
        )


def niqe_features(image: np.ndarray) -> np.ndarray:
    """The (patches x 36) feature matrix of an 8-bit RGB or gray image: full scale, then half scale."""
    y = luminance(image)
    check_niqe_size(*y.shape)
    h, w = (s // NIQE_PATCH * NIQE_PATCH for s in y.shape)
    y = y[:h, :w]
    full = _patch_features(mscn(y, replicate=True), NIQE_PATCH)
    half = imresize_half((y / 255.0).astype(np.float32)).astype(np.float64) * 255.0  # pyiqa resizes in float32
    half = _patch_features(mscn(half, replicate=True), NIQE_PATCH // 2)
    return np.concatenate([full, half], axis=1)


def niqe(image: np.ndarray, params: NoRefParams | None = None) -> float:
    """NIQE of an 8-bit RGB (H x W x 3) or gray (H x W) image, at least 96 x 96; lower is better.

    Raises :class:`EvaluationError` for a smaller image, and for one where NIQE is undefined (no patch with
    texture, e.g. a constant image), rather than returning NaN.
    """
    params = params or load_params()
    features = niqe_features(image)
    complete = features[~np.isnan(features).any(axis=1)]
    if len(complete) == 0:
        raise EvaluationError("NIQE is undefined: every 96x96 patch is flat (no pixel differs from its surroundings)")
    with np.errstate(invalid="ignore"):
        mu = np.nanmean(features, axis=0)
    cov = np.cov(complete, rowvar=False) if len(complete) > 1 else np.zeros((features.shape[1],) * 2)
    d = params.niqe_mu - mu
    quality = float(d @ np.linalg.pinv((params.niqe_cov + cov) / 2) @ d)
    if not math.isfinite(quality) or quality < 0:
        raise EvaluationError("NIQE is undefined for this image (a feature has no finite value)")
    return math.sqrt(quality)


# ----------------------------------------------------------------------------------------------------------------
# BRISQUE
#
# pyiqa computes BRISQUE in torch float32, and float32 rounding moves its scores by up to about 0.01: the SVR's 774
# terms reach +-1024 and cancel to scores near 0, so differences in the last bits of the features move the sum by
# ~1e-3. To give pyiqa's numbers, not just close ones, the steps after the resize use the same torch
# operations, in the same order, on tensors of the same shapes (so the same convolution, reductions and BLAS call),
# on one thread: torch splits large reductions by thread, which changes their rounding (pyiqa's own scores moved by
# up to 0.006, 1.2e-2 relative, between 1 and 2 threads on the README's 35 images).


@contextlib.contextmanager
def _torch_one_thread():
    """torch on one thread inside the block, then as it was (torch's setting is process-wide)."""
    import torch

    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
    try:
        yield torch
    finally:
        if threads != 1:
            torch.set_num_threads(threads)


@functools.lru_cache(maxsize=1)
def _float32_shape_tables():
    """pyiqa's float32 tables: the shapes 0.2:0.001:10 and their GGD and AGGD moment ratios, computed in float32."""
    import torch

    shape = torch.arange(0.2, 10 + 0.001, 0.001, dtype=torch.float32)
    lg1, lg2, lg3 = (torch.lgamma(k / shape) for k in (1.0, 2.0, 3.0))
    ggd = torch.exp(lg1 + lg3 - 2 * lg2)
    aggd = torch.exp(2 * lg2 - (lg1 + lg3))
    return shape, ggd, aggd


def _mscn_float32(y):
    """BRISQUE's MSCN of a (1, 1, H, W) float32 tensor: the window over zero padding, as :func:`mscn`."""
    import torch
    import torch.nn.functional as F

    window = torch.tensor(gaussian_window()).reshape(1, 1, MSCN_SIZE, MSCN_SIZE)
    pad = (MSCN_SIZE // 2,) * 4
    mu = F.conv2d(F.pad(y, pad), window)
    second = F.conv2d(F.pad(y.pow(2), pad), window)
    sigma = torch.sqrt((second - mu.pow(2)).abs() + float(np.finfo(np.float32).eps))
    return (y - mu) / (sigma + MSCN_C)


def _scale_features(c) -> list:
    """The 18 features of one scale's MSCN coefficients ``c`` (a (1, 1, H, W) float32 tensor), as (1,) tensors."""
    import torch

    shape, ggd_table, aggd_table = _float32_shape_tables()
    whole = (-1, -2)
    mean_square = c.pow(2).mean(dim=whole)  # (1, 1)
    ratio = mean_square / c.abs().mean(dim=whole) ** 2
    # GGD shape, and the variance as pyiqa gives it: the square of the rounded standard deviation
    features = [shape[(ratio - ggd_table).abs().argmin(dim=-1)], mean_square.sqrt().squeeze(-1).pow(2)]
    for shift in BRISQUE_SHIFTS:
        products = c * torch.roll(c, shifts=shift, dims=(-2, -1))
        negative, positive = products < 0, products > 0
        left = torch.sqrt((products * negative).pow(2).sum(dim=whole) / negative.sum(dim=whole, dtype=torch.float32))
        right = torch.sqrt((products * positive).pow(2).sum(dim=whole) / positive.sum(dim=whole, dtype=torch.float32))
        g = left / right
        r_hat = products.abs().mean(dim=whole).pow(2) / products.pow(2).mean(dim=whole)
        r_norm = (r_hat * (g.pow(3) + 1) * (g + 1)) / (g.pow(2) + 1).pow(2)
        alpha = shape[(aggd_table - r_norm).abs().argmin(dim=-1)]
        left, right = left.squeeze(-1), right.squeeze(-1)
        lg = [torch.lgamma(k / alpha) for k in (1.0, 2.0, 3.0)]
        eta = (right - left) * torch.exp(lg[1] - (lg[0] + lg[2]) / 2)
        features += [alpha, eta, left.pow(2), right.pow(2)]
    return features


def brisque_features(image: np.ndarray) -> np.ndarray:
    """The 36 unscaled BRISQUE features of an 8-bit RGB or gray image: full scale, then half scale (float32 values,
    returned as float64)."""
    y = luminance(image)
    h, w = y.shape
    if min(h, w) < BRISQUE_MIN_SIZE:
        raise EvaluationError(
            f"too small for BRISQUE: {w}x{h} pixels (width x height); BRISQUE needs at least "
            f"{BRISQUE_MIN_SIZE}x{BRISQUE_MIN_SIZE}"
        )
    y = y.astype(np.float32)  # pyiqa computes BRISQUE in float32
    if y.min() == y.max():
        raise EvaluationError("BRISQUE is undefined for a flat image (every pixel has the same luminance)")
    with _torch_one_thread() as torch:
        features = []
        for luma in (y, imresize_half(y)):
            features += _scale_features(_mscn_float32(torch.from_numpy(luma)[None, None]))
        return torch.cat(features).numpy().astype(np.float64)


def brisque(image: np.ndarray, params: NoRefParams | None = None) -> float:
    """BRISQUE of an 8-bit RGB (H x W x 3) or gray (H x W) image, at least 7 x 7; lower is better (mostly 0 to 100;
    a very clean photo can score slightly below 0).

    Raises :class:`EvaluationError` for a smaller image or a flat one, rather than returning NaN.
    """
    return brisque_from_features(brisque_features(image), params)


def brisque_from_features(features: np.ndarray, params: NoRefParams | None = None) -> float:
    """The SVR's score of 36 unscaled BRISQUE features: scaled to [-1, 1] by the feature ranges, then
    ``sum_i coef_i exp(-gamma |f - sv_i|^2) - rho``, in float32 as pyiqa computes it (features, parameters and
    every step)."""
    params = params or load_params()
    with _torch_one_thread() as torch:
        sv, coef, ranges = (
            torch.tensor(a, dtype=torch.float32) for a in (params.brisque_sv, params.brisque_coef, params.brisque_range)
        )
        f = torch.from_numpy(np.asarray(features, dtype=np.float32)).reshape(1, -1)  # (1, 36): a batch of one
        scaled = -1 + 2 * (f - ranges[:, 0]) / (ranges[:, 1] - ranges[:, 0])
        # (1, 36, 1) - (1, 36, n), the second a transposed view of the (n, 36) support vectors; summed over the 36
        distance = (scaled.unsqueeze(-1) - sv.t().unsqueeze(0)).pow(2).sum(dim=1)
        kernel = torch.exp(-distance * params.brisque_gamma)  # (1, n)
        score = float((kernel @ coef - params.brisque_rho).item())
    if not math.isfinite(score):
        raise EvaluationError("BRISQUE is undefined for this image (a feature has no finite value)")
    return score


SCORERS = {"niqe": niqe, "brisque": brisque}


def score(image: np.ndarray, metrics: tuple[str, ...] = NOREF_METRICS) -> dict[str, float]:
    """``{metric: value}`` for each of ``metrics`` (names from :data:`NOREF_METRICS`)."""
    return {name: SCORERS[name](image) for name in metrics}
