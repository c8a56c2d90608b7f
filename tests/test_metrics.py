"""PSNR/SSIM equal the MATLAB scripts (Octave-run reference values); the torch version agrees."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import DATA

from drsformer.data.io import read_image
from drsformer.metrics import evaluate_pair
from drsformer.metrics.matlab import (
    downsample_factor,
    filter_valid,
    matlab_round,
    mean_filter_symmetric,
    rgb_to_y,
    ssim_map,
)
from drsformer.metrics.torch_metrics import psnr_ssim

IMAGES = DATA / "metric_images"
REFERENCE = [json.loads(line) for line in (IMAGES / "octave_reference.jsonl").read_text().splitlines()]


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].double() / 255


@pytest.mark.parametrize("line", REFERENCE, ids=lambda r: r["image"])
def test_octave_agreement(line: dict) -> None:
    restored, gt = read_image(IMAGES / line["image"]), read_image(IMAGES / line["gt"])
    restormer = evaluate_pair(restored, gt, "restormer")
    rcdnet = evaluate_pair(restored, gt, "rcdnet")
    assert abs(restormer.psnr - line["y_uint8_psnr"]) < 1e-4
    assert abs(restormer.ssim - line["y_uint8_ssim"]) < 1e-6
    assert abs(rcdnet.psnr - line["y_double_psnr"]) < 1e-4
    assert abs(rcdnet.ssim - line["y_double_ssim_downsampled"]) < 1e-6
    for protocol, score in (("restormer", restormer), ("rcdnet", rcdnet)):
        psnr, ssim = psnr_ssim(_tensor(restored), _tensor(gt), protocol)
        assert abs(psnr.item() - score.psnr) < 1e-4 and abs(ssim.item() - score.ssim) < 1e-6


def test_the_two_protocols_differ_on_did_images() -> None:
    line = REFERENCE[0]
    restored, gt = read_image(IMAGES / line["image"]), read_image(IMAGES / line["gt"])
    assert abs(evaluate_pair(restored, gt, "restormer").ssim - evaluate_pair(restored, gt, "rcdnet").ssim) > 0.01


def test_matlab_rounding() -> None:
    assert matlab_round(2.5) == 3 and matlab_round(-2.5) == -3 and matlab_round(1.49) == 1
    assert round(2.5) == 2  # why Python's round cannot be used
    assert downsample_factor(640, 960) == 3  # 640 / 256 = 2.5
    assert downsample_factor(1152, 2000) == 5  # 4.5
    assert downsample_factor(384, 512) == 2  # 1.5
    assert downsample_factor(512, 512) == 2
    assert downsample_factor(321, 481) == 1
    assert downsample_factor(128, 128) == 1  # 0.5 rounds to 1
    assert downsample_factor(100, 100) == 1  # max(1, 0)


def test_rgb_to_y_studio_swing() -> None:
    white, black = np.full((1, 1, 3), 255, np.uint8), np.zeros((1, 1, 3), np.uint8)
    assert rgb_to_y(white, rounded=True)[0, 0] == 235 and rgb_to_y(black, rounded=True)[0, 0] == 16
    assert rgb_to_y(white, rounded=False)[0, 0] == pytest.approx(235.0, abs=1e-12)
    red = np.array([[[255, 0, 0]]], np.uint8)
    assert rgb_to_y(red, rounded=False)[0, 0] == pytest.approx(16 + 65.481)
    assert rgb_to_y(red, rounded=True)[0, 0] == 81  # 81.481 rounds down


def _octave_imfilter_mean(image: np.ndarray, f: int) -> np.ndarray:
    """Octave's imfilter(I, ones(f)/f^2, 'symmetric', 'same'), written out the way its source does it."""
    padded = np.pad(image, f // 2, mode="symmetric")
    if f % 2 == 0:
        padded = padded[1:, 1:]
    h, w = image.shape
    out = np.zeros_like(image)
    for i in range(h):
        for j in range(w):
            out[i, j] = padded[i : i + f, j : j + f].mean()
    return out


@pytest.mark.parametrize("f", [2, 3, 4, 5])
def test_mean_filter_matches_imfilter_semantics(f: int) -> None:
    image = np.random.default_rng(f).random((9, 13))
    np.testing.assert_allclose(mean_filter_symmetric(image, f), _octave_imfilter_mean(image, f), atol=1e-12)


def test_separable_filter_equals_2d_correlation() -> None:
    rng = np.random.default_rng(0)
    image, taps = rng.random((20, 17)), rng.random(5)
    kernel = np.outer(taps, taps)
    direct = np.array([[np.sum(image[i : i + 5, j : j + 5] * kernel) for j in range(13)] for i in range(16)])
    np.testing.assert_allclose(filter_valid(image, taps), direct, atol=1e-12)


@pytest.mark.parametrize("size", [(37, 53), (128, 150), (384, 400), (640, 645)])
def test_torch_agrees_with_numpy(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(size))
    gt = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    noise = rng.integers(-20, 21, gt.shape)
    restored = np.clip(gt.astype(int) + noise, 0, 255).astype(np.uint8)
    for protocol in ("restormer", "rcdnet"):
        reference = evaluate_pair(restored, gt, protocol)
        psnr, ssim = psnr_ssim(_tensor(restored), _tensor(gt), protocol)
        assert abs(psnr.item() - reference.psnr) < 1e-4, protocol
        assert abs(ssim.item() - reference.ssim) < 1e-6, protocol
        psnr32, _ = psnr_ssim(_tensor(restored).float(), _tensor(gt).float(), protocol, dtype=torch.float32)
        assert abs(psnr32.item() - reference.psnr) < 1e-3


def test_torch_batches_and_quantises() -> None:
    gt = torch.randint(0, 256, (3, 3, 24, 30), dtype=torch.float64) / 255
    restored = (gt + 0.3 / 255).clamp(0, 1)  # below half a grey level: identical once saved as 8 bits
    psnr, ssim = psnr_ssim(restored, gt, "restormer")
    assert psnr.shape == (3,) and torch.isinf(psnr).all() and torch.allclose(ssim, torch.ones(3, dtype=torch.float64))


def test_identical_and_invalid_inputs() -> None:
    image = np.random.default_rng(1).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    score = evaluate_pair(image, image, "rcdnet")
    assert math.isinf(score.psnr) and score.ssim == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in size"):
        evaluate_pair(image, image[:-1], "restormer")
    with pytest.raises(ValueError, match="at least 11 x 11"):
        ssim_map(np.zeros((10, 40)), np.zeros((10, 40)))
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate_pair(image, image, "bogus")
