"""NIQE and BRISQUE: pyiqa's values on fixtures, the published parameters, the resize against MATLAB's formula,
properties (rain raises NIQE; flat and small images are one-line errors), and ``evaluate`` without ground truth."""

import hashlib
import json
import math
import re

import numpy as np
import pytest
import torch
from conftest import DATA

from drsformer.cli import main
from drsformer.data.io import read_image, read_image_with_alpha, to_uint8, write_image
from drsformer.data.synth_rain import add_rain
from drsformer.errors import EvaluationError
from drsformer.evaluation.folders import evaluate_folder_noref, evaluate_folders, score_file
from drsformer.metrics import noref

REFERENCE = json.loads((DATA / "noref" / "pyiqa_reference.json").read_text())["images"]


def _photo(name: str = "didddn_2_gt.png") -> np.ndarray:
    return to_uint8(read_image(DATA / "metric_images" / name))


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_scores_equal_pyiqa(name: str) -> None:
    """Fixtures made once with pyiqa 0.1.16 (tests/data/README.md): RGB, gray, odd sizes, one patch, a JPEG."""
    reference = REFERENCE[name]
    image = to_uint8(read_image(DATA / name))
    assert noref.niqe(image) == pytest.approx(reference["niqe"], rel=1e-6)
    # pyiqa computes BRISQUE in float32 (the fixtures with torch on one thread); we repeat its float32 steps, which
    # gives its values bit for bit on the machine that made them. The bounds leave room for another CPU's rounding.
    features = noref.brisque_features(image)
    np.testing.assert_allclose(features, reference["brisque_features"], rtol=2e-5, atol=1e-9)
    assert noref.brisque(image) == pytest.approx(reference["brisque"], rel=1e-3, abs=0)


def test_brisque_does_not_depend_on_torch_threads() -> None:
    """torch's reductions round differently on more threads (pyiqa's BRISQUE moves with them); ours runs on one
    thread whatever the setting, and leaves the setting as it was."""
    image = _photo("rain200h_1_rainy.png")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = noref.brisque(image)
        torch.set_num_threads(3)
        assert noref.brisque(image) == one
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)


def test_fixtures_cover_gray_jpeg_odd_and_single_patch() -> None:
    shapes = {name: read_image(DATA / name).shape for name in REFERENCE}
    assert any(name.endswith(".jpg") for name in REFERENCE)
    assert any(h % 2 or w % 2 for h, w, _ in shapes.values())
    assert any(h < 2 * noref.NIQE_PATCH and w < 2 * noref.NIQE_PATCH for h, w, _ in shapes.values())
    assert any(read_image_with_alpha(DATA / name).gray for name in REFERENCE), "no single-channel fixture"


def test_parameters_are_the_published_ones() -> None:
    params = noref.load_params()
    assert params.niqe_mu.shape == (36,) and params.niqe_cov.shape == (36, 36)
    np.testing.assert_array_equal(params.niqe_cov, params.niqe_cov.T)
    assert params.brisque_sv.shape == (774, 36) and params.brisque_coef.shape == (774,)
    assert params.brisque_gamma == 0.05 and params.brisque_rho == -153.591
    assert params.brisque_range.shape == (36, 2) and np.all(params.brisque_range[:, 0] < params.brisque_range[:, 1])
    # the digest recorded in the note beside the file, computed as scripts/make_noref_params.py computes it
    keys = ("niqe_mu", "niqe_cov", "brisque_sv", "brisque_coef", "brisque_gamma", "brisque_rho", "brisque_range")
    digest = hashlib.sha256()
    with np.load(noref.PARAMS_FILE) as data:
        assert sorted(data.files) == sorted(keys)
        for key in keys:
            array = np.ascontiguousarray(data[key], dtype="<f8")
            digest.update(f"{key}{array.shape}".encode())
            digest.update(array.tobytes())
    note = noref.PARAMS_FILE.with_suffix(".md").read_text()
    assert re.search(r"Digest of the arrays.*?`([0-9a-f]{64})`", note, re.S).group(1) == digest.hexdigest()


def _matlab_imresize_half(x: np.ndarray) -> np.ndarray:
    """MATLAB's imresize(x, 0.5) along axis 0 from its definition: bicubic a = -0.5, kernel stretched by 2
    (antialiasing), width 4 / 0.5 + 2 taps, weights normalised, symmetric border; one output at a time."""

    def cubic(t: float) -> float:
        t = abs(t)
        if t <= 1:
            return 1.5 * t**3 - 2.5 * t**2 + 1
        return -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2 if t <= 2 else 0.0

    n = x.shape[0]
    out = []
    for i in range(math.ceil(n / 2)):
        u = (i + 1) / 0.5 + 0.5 * (1 - 1 / 0.5)  # MATLAB's 1-based input coordinate
        left = math.floor(u - 8 / 2)  # kernel width 4 / 0.5
        taps = range(left, left + 10)
        weights = np.array([0.5 * cubic(0.5 * (u - j)) for j in taps])
        rows = [(j - 1) if 1 <= j <= n else (-j if j < 1 else 2 * n - j) for j in taps]  # symmetric, 0-based
        out.append((weights / weights.sum()) @ x[rows])
    return np.array(out)


@pytest.mark.parametrize("shape", [(12, 9), (13, 8), (31, 20)])
def test_half_size_resize_is_matlab_imresize(shape) -> None:
    x = np.random.default_rng(0).uniform(0, 255, shape)
    expected = _matlab_imresize_half(_matlab_imresize_half(x).T).T
    np.testing.assert_allclose(noref.imresize_half(x), expected, rtol=0, atol=1e-10)


def test_luminance_of_gray_is_the_gray_value() -> None:
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(noref.luminance(gray), gray.astype(np.float64))
    np.testing.assert_array_equal(noref.luminance(np.stack([gray] * 3, axis=2)), gray)


@pytest.mark.parametrize("clean", ["didddn_2_gt.png", "rain200h_3_gt.png"])
def test_rain_raises_niqe_and_brisque(clean: str) -> None:
    photo = _photo(clean)
    rainy = add_rain(photo, np.random.default_rng(0), "heavy")
    assert noref.niqe(rainy) > noref.niqe(photo) + 1.0
    assert noref.brisque(rainy) > noref.brisque(photo) + 10.0


@pytest.mark.parametrize("value", [0, 128, 255])
def test_flat_image_is_an_error_not_nan(value: int) -> None:
    flat = np.full((200, 300, 3), value, np.uint8)
    with pytest.raises(EvaluationError, match="NIQE is undefined: every 96x96 patch is flat"):
        noref.niqe(flat)
    with pytest.raises(EvaluationError, match="BRISQUE is undefined for a flat image"):
        noref.brisque(flat)


def test_too_small_images_give_the_minimum() -> None:
    with pytest.raises(EvaluationError, match=r"too small for NIQE: 200x95 pixels .* at least 96x96"):
        noref.niqe(np.zeros((95, 200, 3), np.uint8))
    with pytest.raises(EvaluationError, match=r"too small for BRISQUE: 6x30 pixels .* at least 7x7"):
        noref.brisque(np.zeros((30, 6, 3), np.uint8))


def _real_rain_folder(tmp_path, n: int = 4):
    """A folder of rainy crops (112 x 136) of the test photos, written as PNG."""
    folder = tmp_path / "derained"
    photo = _photo()
    for i in range(n):
        crop = photo[40 * i : 40 * i + 112, 50 * i : 50 * i + 136]
        write_image(folder / f"{i}.png", add_rain(np.ascontiguousarray(crop), np.random.default_rng(i), "light"))
    return folder


@pytest.mark.parametrize("workers", [1, 2])
def test_folder_scores_are_the_image_scores(tmp_path, workers: int) -> None:
    folder = _real_rain_folder(tmp_path)
    report = evaluate_folder_noref(folder, workers=workers, progress=False).to_dict()
    assert report["count"] == 4 and report["failed"] == [] and report["metrics"] == ["niqe", "brisque"]
    for entry in report["images"]:
        image = read_image(folder / entry["name"])
        assert entry == {"name": entry["name"], "niqe": noref.niqe(image), "brisque": noref.brisque(image)}
    assert report["niqe"] == pytest.approx(np.mean([e["niqe"] for e in report["images"]]), rel=1e-12)
    assert report["brisque"] == pytest.approx(np.mean([e["brisque"] for e in report["images"]]), rel=1e-12)


def test_bad_images_are_named_and_skipped_and_the_mean_stays_finite(tmp_path, capsys) -> None:
    folder = _real_rain_folder(tmp_path, n=2)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    write_image(folder / "flat.png", np.full((120, 120, 3), 90, np.uint8))
    write_image(folder / "tiny.png", _photo()[:80, :300])
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--restored", str(folder), "--json", str(out), "--quiet", "--workers", "1"]) == 1
    captured = capsys.readouterr()
    assert "broken.png: cannot decode image" in captured.err
    assert re.search(r"skipped flat.png: .*flat.png: NIQE is undefined", captured.err)
    assert re.search(r"skipped tiny.png: .*tiny.png: too small for NIQE: 300x80 pixels", captured.err)
    assert "3 image(s) could not be scored: broken.png, flat.png, tiny.png" in captured.err
    assert "2 images (3 skipped): NIQE" in captured.out and "(lower is better)" in captured.out
    report = json.loads(out.read_text())
    assert list(report) == ["name", "protocol", "metrics", "count", "niqe", "brisque", "seconds", "failed", "images"]
    assert report["count"] == 2 and all(math.isfinite(report[k]) for k in ("niqe", "brisque"))
    assert [f["name"] for f in report["failed"]] == ["broken.png", "flat.png", "tiny.png"]
    assert [i["name"] for i in report["images"]] == ["0.png", "1.png"]


def test_score_image_names_the_file(tmp_path) -> None:
    path = tmp_path / "small.png"
    write_image(path, np.zeros((50, 50, 3), np.uint8))
    with pytest.raises(EvaluationError, match=r"small.png: too small for NIQE"):
        score_file(path)
    with pytest.raises(EvaluationError, match=r"small.png: BRISQUE is undefined for a flat image"):
        score_file(path, ("brisque",))
    write_image(path, _photo()[:50, :50])
    assert set(score_file(path, ("brisque",))) == {"name", "brisque"}


def test_metrics_beside_psnr_ssim_with_ground_truth(tmp_path, capsys) -> None:
    restored, gt = tmp_path / "restored", tmp_path / "gt"
    for i in (1, 2):
        write_image(restored / f"{i}.png", _photo(f"didddn_{i}_drsformer.png"))
        write_image(gt / f"{i}.png", _photo(f"didddn_{i}_gt.png"))
    report = evaluate_folders(restored, gt, "rcdnet", workers=1, progress=False, extra=("niqe",)).to_dict()
    keys = ["name", "protocol", "metrics", "count", "psnr", "ssim", "niqe", "seconds", "failed", "images"]
    assert list(report) == keys
    for entry in report["images"]:
        assert entry["niqe"] == noref.niqe(read_image(restored / entry["name"]))
    out = tmp_path / "s.json"
    argv = ["evaluate", "--restored", str(restored), "--gt", str(gt), "--protocol", "restormer"]
    assert main([*argv, "--metrics", "niqe,brisque", "--json", str(out), "--quiet"]) == 0
    assert "NIQE" in capsys.readouterr().out
    assert {"psnr", "ssim", "niqe", "brisque"} <= set(json.loads(out.read_text())["images"][0])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--metrics", "psnr"], "psnr needs ground truth (--gt)"),
        (["--metrics", "niqe,piqe"], "unknown metric 'piqe'; choose from psnr, ssim, niqe, brisque"),
        (["--protocol", "restormer"], "--protocol, --dataset and --pair-by choose how PSNR/SSIM compare with --gt"),
    ],
)
def test_evaluate_without_gt_rejects_what_needs_it(tmp_path, capsys, argv, message) -> None:
    folder = _real_rain_folder(tmp_path, n=1)
    assert main(["evaluate", "--restored", str(folder), *argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("drsformer evaluate: error:") and "\n" not in err and message in err
