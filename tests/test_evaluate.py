"""drsformer evaluate: pairing, the JSON report, several processes, and errors that name the files."""

import json
import shutil

import numpy as np
import pytest
from conftest import DATA, make_pairs, noisy

from drsformer.cli import main
from drsformer.data.io import read_image, write_image
from drsformer.errors import EvaluationError
from drsformer.evaluation.folders import evaluate_folders, pair_files
from drsformer.metrics import evaluate_pair

IMAGES = DATA / "metric_images"


def _folders(tmp_path, n: int = 5, size=(24, 30)):
    """``restored/`` (the noisy inputs) and ``gt/``, and each pair's arrays by name."""
    root = make_pairs(tmp_path / "set", n, size, rain=noisy(9), levels=(0, 256))
    restored, gt = (root / "input").rename(tmp_path / "restored"), (root / "target").rename(tmp_path / "gt")
    images = {p.name: (read_image(p), read_image(gt / p.name)) for p in sorted(restored.iterdir())}
    return restored, gt, images


@pytest.mark.parametrize("workers", [1, 2])
def test_report_means_and_per_image_scores(tmp_path, workers: int) -> None:
    restored, gt, images = _folders(tmp_path)
    report = evaluate_folders(restored, gt, "restormer", workers=workers, progress=False).to_dict()
    assert report["protocol"] == "restormer" and report["count"] == 5
    expected = {name: evaluate_pair(a, b, "restormer") for name, (a, b) in images.items()}
    for entry in report["images"]:
        assert entry["psnr"] == pytest.approx(expected[entry["name"]].psnr, abs=1e-12)
        assert entry["ssim"] == pytest.approx(expected[entry["name"]].ssim, abs=1e-12)
    assert report["psnr"] == pytest.approx(np.mean([s.psnr for s in expected.values()]))
    assert report["ssim"] == pytest.approx(np.mean([s.ssim for s in expected.values()]))


def test_pairing_by_stem_and_by_matlab_order(tmp_path) -> None:
    restored, gt = tmp_path / "r", tmp_path / "g"
    image = np.zeros((12, 12, 3), np.uint8)
    for name in ("b.png", "a.png", "c.jpg"):
        write_image(restored / name, image)
    for name in ("1gt.png", "0gt.png", "2gt.jpg"):
        write_image(gt / name, image)
    with pytest.raises(
        EvaluationError, match="3 restored images in .* have no ground-truth image: a.png, b.png, c.jpg"
    ):
        pair_files(restored, gt)
    pairs = pair_files(restored, gt, "sorted")  # [dir('*.jpg'); dir('*.png')] on both sides
    assert [(r.name, g.name) for r, g in pairs] == [("c.jpg", "2gt.jpg"), ("a.png", "0gt.png"), ("b.png", "1gt.png")]


def test_missing_counterparts_are_listed(tmp_path) -> None:
    restored, gt, _ = _folders(tmp_path, n=8)
    for i in range(7):
        (gt / f"{i}.png").rename(gt / f"x{i}.png")
    with pytest.raises(EvaluationError) as info:
        pair_files(restored, gt)
    message = str(info.value)
    assert "7 restored images in" in message and "0.png, 1.png, 2.png, 3.png, 4.png and 2 more" in message
    assert "7 ground-truth images in" in message and "have no restored image: x0.png" in message


def test_size_mismatch_names_both_files(tmp_path) -> None:
    restored, gt, _ = _folders(tmp_path, n=2)
    write_image(gt / "1.png", np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(EvaluationError, match=r"size mismatch: .*restored/1.png is 30x24 but .*gt/1.png is 30x20"):
        evaluate_folders(restored, gt, "rcdnet", workers=1, progress=False)


def test_unreadable_image_and_empty_folder(tmp_path) -> None:
    restored, gt, _ = _folders(tmp_path, n=4)
    (restored / "2.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(EvaluationError, match=r"restored/2.png: cannot decode image"):
        evaluate_folders(restored, gt, "restormer", workers=2, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EvaluationError, match="restored folder .*empty holds no images"):
        pair_files(empty, gt)
    with pytest.raises(EvaluationError, match="ground-truth folder .*nowhere does not exist"):
        pair_files(restored, tmp_path / "nowhere")


def test_cli_with_dataset_protocol_and_json(tmp_path, capsys) -> None:
    restored, gt = tmp_path / "restored", tmp_path / "gt"
    restored.mkdir()
    gt.mkdir()
    for i in (1, 2, 3):
        shutil.copy(IMAGES / f"didddn_{i}_drsformer.png", restored / f"{i}.png")
        shutil.copy(IMAGES / f"didddn_{i}_gt.png", gt / f"{i}.png")
    out = tmp_path / "scores.json"
    assert (
        main(
            [
                "evaluate",
                "--restored",
                str(restored),
                "--gt",
                str(gt),
                "--dataset",
                "DDN-Data",
                "--json",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert "DDN: 3 pairs, rcdnet protocol" in capsys.readouterr().out
    report = json.loads(out.read_text())
    reference = [json.loads(line) for line in (IMAGES / "octave_reference.jsonl").read_text().splitlines()][:3]
    assert report["psnr"] == pytest.approx(np.mean([r["y_double_psnr"] for r in reference]), abs=1e-4)
    assert report["ssim"] == pytest.approx(np.mean([r["y_double_ssim_downsampled"] for r in reference]), abs=1e-6)
    assert set(report) == {"name", "protocol", "metrics", "count", "psnr", "ssim", "seconds", "failed", "images"}
    assert report["name"] == "DDN" and report["failed"] == []


def test_cli_errors_are_one_line(tmp_path, capsys) -> None:
    assert main(["evaluate", "--restored", str(tmp_path / "a"), "--gt", str(tmp_path / "b"), "--dataset", "x"]) == 2
    assert "unknown --dataset 'x'; known benchmarks: Rain200L" in capsys.readouterr().err
    assert main(["evaluate", "--restored", str(tmp_path), "--gt", str(tmp_path)]) == 2
    assert "no protocol: give --protocol restormer|rcdnet|skimage" in capsys.readouterr().err


def test_module_entry_point_with_worker_processes(tmp_path) -> None:
    import subprocess
    import sys

    restored, gt, _ = _folders(tmp_path, n=4)
    command = [
        sys.executable,
        "-m",
        "drsformer",
        "evaluate",
        "--restored",
        str(restored),
        "--gt",
        str(gt),
        "--protocol",
        "rcdnet",
        "--workers",
        "2",
        "--quiet",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("images: 4 pairs, rcdnet protocol") == 1
