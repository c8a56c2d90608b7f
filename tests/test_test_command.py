"""drsformer test: saved images, scores equal to drsformer evaluate, options files, errors before any image runs;
and the skimage protocol it offers."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import TINY, make_pairs, noisy
from skimage import img_as_ubyte
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from drsformer import benchmarks
from drsformer.archs import DRSformer
from drsformer.cli import main
from drsformer.config.testing import load_options
from drsformer.data.io import read_image, write_image
from drsformer.errors import ConfigError
from drsformer.metrics import evaluate_pair
from drsformer.metrics.matlab import rgb_to_y
from drsformer.metrics.skimage_protocol import luma

REPO = Path(__file__).resolve().parents[1]
SIZES = [(37, 45), (24, 33), (40, 40)]  # odd sizes: the model pads to 40 x 48, 24 x 40


def make_set(root: Path, sizes=SIZES, seed: int = 0) -> Path:
    """input/ and target/ with equal names: a clean image and a noisier copy as the rainy one."""
    return make_pairs(root, seed=seed, rain=noisy(59, low=0), sizes=sizes, name="im{i}", levels=(0, 256))


def authors_procedure(model: torch.nn.Module, rainy: np.ndarray) -> np.ndarray:
    """Pad to a multiple of 8 by reflection, run, clamp, crop, img_as_ubyte, written out by hand."""
    x = torch.from_numpy(rainy).permute(2, 0, 1)[None].float() / 255
    h, w = rainy.shape[:2]
    with torch.no_grad():
        out = model(F.pad(x, (0, -w % 8, 0, -h % 8), mode="reflect"))
    return img_as_ubyte(torch.clamp(out, 0, 1)[0, :, :h, :w].permute(1, 2, 0).numpy())


def test_saved_images_and_scores_equal_evaluate(tmp_path, weights, capsys) -> None:
    data, out, report = make_set(tmp_path / "Rain200H"), tmp_path / "results", tmp_path / "r.json"
    argv = ["test", "--weights", str(weights), "--data", f"Rain200H={data}", "--out", str(out), "--json", str(report)]
    assert main([*argv, "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "| dataset | protocol | images | PSNR | SSIM | seconds | images/s | paper PSNR |" in table
    assert "| Rain200H | restormer | 3 | " in table and "| 32.17 | 0.9326 |" in table

    result = json.loads(report.read_text())
    assert result["weights"] == str(weights)
    (entry,) = result["datasets"]
    assert {"name", "protocol", "count", "psnr", "ssim", "seconds", "images"} <= set(entry)
    assert (entry["name"], entry["protocol"], entry["count"]) == ("Rain200H", "restormer", 3)

    # drsformer evaluate on the saved images gives the same numbers
    scores = tmp_path / "evaluate.json"
    evaluate = ["evaluate", "--restored", str(out / "Rain200H"), "--gt", str(data / "target"), "--dataset", "Rain200H"]
    assert main([*evaluate, "--json", str(scores), "--workers", "1", "--quiet"]) == 0
    evaluated = json.loads(scores.read_text())
    assert entry["psnr"] == pytest.approx(evaluated["psnr"], abs=1e-12)
    assert entry["ssim"] == pytest.approx(evaluated["ssim"], abs=1e-12)
    by_name = {i["name"]: i for i in evaluated["images"]}
    for image in entry["images"]:
        assert image["psnr"] == pytest.approx(by_name[image["name"]]["psnr"], abs=1e-12)
        assert image["ssim"] == pytest.approx(by_name[image["name"]]["ssim"], abs=1e-12)

    # the saved images are the authors' procedure on the same weights
    model = DRSformer(**TINY)
    model.load_state_dict(torch.load(weights, weights_only=True)["params"])
    model.eval()
    for i, (h, w) in enumerate(SIZES):
        saved = read_image(out / "Rain200H" / f"im{i}.png")
        expected = authors_procedure(model, read_image(data / "input" / f"im{i}.png"))
        assert saved.shape == (h, w, 3)
        assert np.abs(saved.astype(int) - expected.astype(int)).max() <= 1


def test_protocol_follows_the_name_unless_given(tmp_path, weights) -> None:
    data = make_set(tmp_path / "set", sizes=[(24, 24)])
    report = tmp_path / "r.json"
    argv = ["test", "--weights", str(weights), "--data", f"ddn-data={data}", "--data", f"Rain200L={data}"]
    assert main([*argv, "--out", str(tmp_path / "o"), "--json", str(report), "--quiet"]) == 0
    names = [(d["name"], d["protocol"]) for d in json.loads(report.read_text())["datasets"]]
    assert names == [("DDN", "rcdnet"), ("Rain200L", "restormer")]  # catalogue names and protocols
    assert (tmp_path / "o" / "DDN" / "im0.png").is_file()

    argv = ["test", "--weights", str(weights), "--data", f"mine={data}", "--protocol", "skimage"]
    assert main([*argv, "--out", str(tmp_path / "o"), "--json", str(report), "--quiet"]) == 0
    (entry,) = json.loads(report.read_text())["datasets"]
    restored, target = read_image(tmp_path / "o" / "mine" / "im0.png"), read_image(data / "target" / "im0.png")
    assert entry["protocol"] == "skimage" and entry["psnr"] == evaluate_pair(restored, target, "skimage").psnr


def test_corrupt_image_is_skipped_and_reported(tmp_path, weights, capsys) -> None:
    data = make_set(tmp_path / "set", sizes=[(24, 24), (24, 32)])
    (data / "input" / "im1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    report = tmp_path / "r.json"
    argv = ["test", "--weights", str(weights), "--data", f"SPA={data}", "--out", str(tmp_path / "o")]
    assert main([*argv, "--json", str(report), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "| SPA | restormer | 1 (1 failed) |" in captured.out  # the table of what did run
    assert "im1.png: cannot decode image" in captured.err and "1 image(s) could not be processed: SPA/im1.png" in (
        captured.err
    )
    (entry,) = json.loads(report.read_text())["datasets"]
    assert entry["count"] == 1 and [f["name"] for f in entry["failed"]] == ["im1.png"]


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("drsformer test: error:") and "\n" not in err
    return err


def test_errors_come_before_any_image(tmp_path, weights, capsys) -> None:
    data = make_set(tmp_path / "set", sizes=[(24, 24)])
    out = ["--out", str(tmp_path / "o")]
    err = _error(capsys, ["test", "--weights", str(tmp_path / "none.pth"), "--data", f"DID={data}", *out])
    assert "none.pth: no such checkpoint" in err
    err = _error(capsys, ["test", "--weights", str(weights), "--data", f"Rain300={data}", *out])
    assert "unknown dataset name 'Rain300'" in err and "Rain200L, Rain200H, DID (DID-Data)" in err
    assert "--protocol restormer|rcdnet|skimage" in err
    err = _error(capsys, ["test", "--weights", str(weights), "--data", str(data), *out])
    assert "expected NAME=DIR" in err
    err = _error(capsys, ["test", "--weights", str(weights), "--data", f"DID={tmp_path / 'nowhere'}", *out])
    assert "nowhere: no such folder for dataset DID" in err
    (tmp_path / "empty" / "input").mkdir(parents=True)
    (tmp_path / "empty" / "target").mkdir()
    err = _error(capsys, ["test", "--weights", str(weights), "--data", f"DID={tmp_path / 'empty'}", *out])
    assert "empty/input: holds no images" in err
    (data / "target" / "im0.png").rename(data / "target" / "other.png")
    err = _error(capsys, ["test", "--weights", str(weights), "--data", f"DID={data}", *out])
    assert "1 input images in" in err and "have no target image: im0.png" in err
    # a good set before a bad one: nothing ran
    good = make_set(tmp_path / "good", sizes=[(24, 24)])
    _error(capsys, ["test", "--weights", str(weights), "--data", f"DID={good}", "--data", f"DDN={data}", *out])
    assert not (tmp_path / "o").exists()


def test_options_file_with_per_dataset_weights_through_python_m(tmp_path, weights) -> None:
    data = make_set(tmp_path / "set", sizes=[(24, 24)])
    options = {
        "out": "res",
        "json": "res/scores.json",
        "datasets": {"Rain200H": {"path": str(data), "weights": str(weights)}, "mine": str(data)},
        "protocol": "rcdnet",
        "weights": str(weights),
    }
    (tmp_path / "t.yml").write_text(yaml.safe_dump(options, sort_keys=False))
    command = [sys.executable, "-m", "drsformer.test", "-opt", "t.yml", "--quiet"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| Rain200H | rcdnet | 1 |" in result.stdout and "| mine | rcdnet | 1 |" in result.stdout
    report = json.loads((tmp_path / "res" / "scores.json").read_text())  # paths relative to the current folder
    assert [d["name"] for d in report["datasets"]] == ["Rain200H", "mine"]


def test_options_file_keys_are_checked(tmp_path) -> None:
    path = tmp_path / "t.yml"
    path.write_text("weigths: a.pth\ndatasets: {DID: d}\n")
    with pytest.raises(ConfigError, match=r"t.yml: weigths: unknown key; did you mean weights\?"):
        load_options(path)
    path.write_text("datasets:\n  DID:\n    paht: d\n")
    with pytest.raises(ConfigError, match=r"t.yml: datasets.DID.paht: unknown key; did you mean path\?"):
        load_options(path)
    path.write_text("datasets:\n  DID:\n    weights: w.pth\n")
    with pytest.raises(ConfigError, match=r"t.yml: datasets.DID.path: missing required key"):
        load_options(path)
    path.write_text("tile: yes\ndatasets: {DID: d}\n")
    with pytest.raises(ConfigError, match=r"t.yml: tile: expected an integer, got bool True"):
        load_options(path)
    path.write_text("precision: fp8\ndatasets: {DID: d}\n")
    with pytest.raises(ConfigError, match=r"t.yml: precision: expected one of fp32, bf16, fp16"):
        load_options(path)


def test_options_file_overlays_a_base_and_fills_defaults(tmp_path) -> None:
    (tmp_path / "base.yml").write_text("weights: a.pth\ntile: 256\ndatasets: {DID: d}\n")
    (tmp_path / "t.yml").write_text(
        "base: base.yml\ntile: !!float 5.12e2\ndatasets: {DDN: {path: e, weights: b.pth}}\n"
    )
    options = load_options(tmp_path / "t.yml")
    assert options["weights"] == "a.pth" and options["tile"] == 512 and "tile_overlap" not in options
    assert options["datasets"]["DID"]["path"] == "d" and options["datasets"]["DID"]["weights"] is None
    assert options["datasets"]["DDN"] == {"path": "e", "weights": "b.pth", "params_key": None, "protocol": None}


@pytest.mark.parametrize("bench", list(benchmarks.BENCHMARKS.values()), ids=lambda b: b.name)
def test_shipped_options_files_name_the_catalogue_paths(bench) -> None:
    options = load_options(REPO / "options" / "test" / f"{bench.name}.yml")
    assert options["weights"] == bench.checkpoint
    assert list(options["datasets"]) == [bench.name]
    assert options["datasets"][bench.name]["path"] == f"datasets/{bench.name}/test"
    table1 = load_options(REPO / "options" / "test" / "all.yml")["datasets"]
    assert table1[bench.name]["path"] == f"datasets/{bench.name}/test"
    assert table1[bench.name]["weights"] == bench.checkpoint


def test_table1_run_without_data_names_the_missing_folder(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    table1 = ["test", "-opt", str(REPO / "options" / "test" / "all.yml")]
    err = _error(capsys, table1)
    assert "datasets/Rain200L/test: no such folder for dataset Rain200L (prepare it with: drsformer prepare " in err
    assert "--dst datasets/Rain200L)" in err
    # --data replaces the file's entry for that benchmark, whatever the spelling
    make_set(tmp_path / "mine", sizes=[(16, 16)])
    err = _error(capsys, [*table1, "--data", "rain200-light=mine"])
    assert "datasets/Rain200H/test: no such folder for dataset Rain200H" in err


def test_skimage_protocol_is_skimage_metrics_on_float_y() -> None:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)
    restored = np.clip(target.astype(int) + rng.integers(-12, 13, target.shape), 0, 255).astype(np.uint8)
    # BT.601 studio-swing Y, unrounded, written out
    y = lambda im: 16 + im.astype(np.float64) @ np.array([65.481, 128.553, 24.966]) / 255  # noqa: E731
    assert np.abs(luma(target) - y(target)).max() < 1e-10
    assert np.abs(luma(target) - rgb_to_y(target, rounded=False)).max() < 1e-10
    score = evaluate_pair(restored, target, "skimage")
    assert score.psnr == pytest.approx(peak_signal_noise_ratio(y(target), y(restored), data_range=255), abs=1e-9)
    ssim = structural_similarity(
        y(target), y(restored), data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert score.ssim == pytest.approx(ssim, abs=1e-12)
    assert evaluate_pair(target, target, "skimage").psnr == float("inf")
    # Same Y as rcdnet; reflect-filter-then-crop equals MATLAB's 'valid' filtering, so below 384 pixels (where
    # rcdnet does not downsample) the two protocols agree, and the uint8 Y of restormer makes it differ.
    rcdnet, restormer = evaluate_pair(restored, target, "rcdnet"), evaluate_pair(restored, target, "restormer")
    assert score.psnr == pytest.approx(rcdnet.psnr, abs=1e-9) and score.ssim == pytest.approx(rcdnet.ssim, abs=1e-12)
    assert abs(score.psnr - restormer.psnr) > 1e-3
    big = np.kron(target, np.ones((14, 10, 1), np.uint8))  # 420 x 410: rcdnet downsamples by 2, skimage does not
    noisy = np.clip(big.astype(int) + rng.integers(-12, 13, big.shape), 0, 255).astype(np.uint8)
    assert abs(evaluate_pair(noisy, big, "skimage").ssim - evaluate_pair(noisy, big, "rcdnet").ssim) > 1e-3


def test_evaluate_command_offers_skimage(tmp_path, capsys) -> None:
    data = make_set(tmp_path / "set", sizes=[(24, 30), (31, 24)])
    argv = ["evaluate", "--restored", str(data / "input"), "--gt", str(data / "target"), "--protocol", "skimage"]
    assert main([*argv, "--workers", "1", "--quiet"]) == 0
    assert "images: 2 pairs, skimage protocol" in capsys.readouterr().out


def test_out_of_memory_stops_with_one_line_naming_the_image_and_tile(tmp_path, weights, capsys, monkeypatch) -> None:
    forward = DRSformer.forward

    def limited(self, x):
        if x.shape[-2] * x.shape[-1] > 1000:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")
        return forward(self, x)

    monkeypatch.setattr(DRSformer, "forward", limited)
    data = tmp_path / "Rain200H"
    rng = np.random.default_rng(0)
    for folder in ("input", "target"):
        write_image(data / folder / "1.png", rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    argv = ["test", "--weights", str(weights), "--data", f"Rain200H={data}", "--out", str(tmp_path / "r"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("drsformer test: error: Rain200H/1.png: out of memory on cpu restoring 40x48 pixels")
    assert "use --tile 256 (tiles are exact" in err
    assert main([*argv, "--tile", "16"]) == 0  # exact tiles: the same scores, in less memory
