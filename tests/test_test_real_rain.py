"""drsformer test on real rain (no target/): restored, saved, and scored with NIQE/BRISQUE beside the input's."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA

from drsformer.cli import main
from drsformer.config.testing import load_options
from drsformer.data.io import read_image, to_uint8, write_image
from drsformer.data.synth_rain import add_rain
from drsformer.metrics import noref

REPO = Path(__file__).resolve().parents[1]


def rainy_photos(folder: Path, sizes=((104, 120), (97, 131))) -> Path:
    """Rainy crops of a test photo, at sizes NIQE accepts (one 96-pixel patch)."""
    photo = to_uint8(read_image(DATA / "metric_images" / "didddn_2_gt.png"))
    for i, (h, w) in enumerate(sizes):
        crop = np.ascontiguousarray(photo[30 * i : 30 * i + h, 40 * i : 40 * i + w])
        write_image(folder / f"real{i}.png", add_rain(crop, np.random.default_rng(i), "medium"))
    return folder


@pytest.mark.parametrize("layout", ["input", "flat"])
def test_targetless_set_is_restored_and_scored_side_by_side(tmp_path, weights, capsys, layout) -> None:
    data = tmp_path / "TestReal"
    rainy_photos(data / "input" if layout == "input" else data)
    out, report = tmp_path / "results", tmp_path / "r.json"
    argv = ["test", "--weights", str(weights), "--data", f"TestReal={data}", "--out", str(out)]
    assert main([*argv, "--json", str(report), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "| dataset | images | NIQE ↓ rainy | NIQE ↓ derained | BRISQUE ↓ rainy | BRISQUE ↓ derained |" in (
        captured.out
    )
    assert "lower is better for both" in captured.out and "PSNR" not in captured.out
    assert "(no target/: NIQE and BRISQUE of input and output)" in captured.err
    (entry,) = json.loads(report.read_text())["datasets"]
    assert entry["protocol"] == "no-reference" and entry["count"] == 2 and entry["failed"] == []
    inputs = data / "input" if layout == "input" else data
    for image in entry["images"]:
        restored = read_image(out / "TestReal" / image["name"])
        rainy = read_image(inputs / image["name"])
        assert image["niqe"] == noref.niqe(restored) and image["brisque"] == noref.brisque(restored)
        assert image["rainy_niqe"] == noref.niqe(rainy) and image["rainy_brisque"] == noref.brisque(rainy)
    for key in ("niqe", "rainy_niqe", "brisque", "rainy_brisque"):
        assert entry[key] == pytest.approx(np.mean([i[key] for i in entry["images"]]), rel=1e-12)
        assert f"{entry[key]:.4f}" in captured.out


def test_too_small_image_is_saved_named_and_skipped(tmp_path, weights, capsys) -> None:
    data = rainy_photos(tmp_path / "real" / "input", sizes=((104, 120), (64, 80)))
    out, report = tmp_path / "o", tmp_path / "r.json"
    argv = ["test", "--weights", str(weights), "--data", f"mine={data.parent}", "--out", str(out)]
    assert main([*argv, "--json", str(report), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "skipped real1.png: " in captured.err and "real1.png: too small for NIQE: 80x64 pixels" in captured.err
    assert "1 image(s) could not be processed: mine/real1.png" in captured.err
    assert "| mine | 1 (1 failed) |" in captured.out
    assert (out / "mine" / "real1.png").is_file()  # restored before it could not be scored
    (entry,) = json.loads(report.read_text())["datasets"]
    assert [i["name"] for i in entry["images"]] == ["real0.png"] and entry["failed"][0]["name"] == "real1.png"


def test_paired_and_real_sets_in_one_run(tmp_path, weights, capsys) -> None:
    paired = tmp_path / "paired"
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    write_image(paired / "target" / "a.png", clean)
    write_image(paired / "input" / "a.png", clean // 2 + 60)
    real = rainy_photos(tmp_path / "real" / "input", sizes=((100, 100),)).parent
    argv = ["test", "--weights", str(weights), "--data", f"Rain200L={paired}", "--data", f"Outdoor={real}"]
    assert main([*argv, "--out", str(tmp_path / "o"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| Rain200L | restormer | 1 |" in out and "| Outdoor | 1 |" in out


def test_unknown_name_needs_a_protocol_only_with_ground_truth(tmp_path, weights, capsys) -> None:
    data = tmp_path / "set"
    write_image(data / "input" / "a.png", np.zeros((16, 16, 3), np.uint8))
    write_image(data / "target" / "a.png", np.zeros((16, 16, 3), np.uint8))
    assert main(["test", "--weights", str(weights), "--data", f"Mine={data}", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset name 'Mine', so its protocol is unknown" in err and "--data Mine=" in err


def test_empty_real_rain_folder_says_what_a_test_folder_holds(tmp_path, weights, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["test", "--weights", str(weights), "--data", f"R={tmp_path / 'empty'}", "--out", "o"]) == 2
    err = capsys.readouterr().err.strip()
    assert "empty/input: no such folder; a test folder holds input/ and target/, or for real rain" in err
    assert "\n" not in err


def test_shipped_real_rain_options_file() -> None:
    options = load_options(REPO / "options" / "test" / "TestReal.yml")
    assert options["datasets"] == {
        "TestReal": {"path": "datasets/TestReal", "weights": None, "params_key": None, "protocol": None}
    }
    assert options["weights"] == "pretrained/SPA.pth" and options["json"] == "results/TestReal.json"


def test_report_and_compare_to_on_real_rain(tmp_path, weights, capsys) -> None:
    from html.parser import HTMLParser

    data = rainy_photos(tmp_path / "real" / "input").parent
    argv = ["test", "--weights", str(weights), "--data", f"mine={data}", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert main([*argv, "--out", str(tmp_path / "b"), "--report", "--compare-to", str(tmp_path / "a")]) == 0
    page = (tmp_path / "b" / "mine" / "report.html").read_text()
    texts: list[str] = []

    class Text(HTMLParser):
        def handle_data(self, data: str) -> None:
            texts.append(data.strip())

    Text().feed(page)
    assert "NIQE" in texts and "BRISQUE" in texts and "PSNR" not in texts
    scores = json.loads((tmp_path / "a" / "mine" / "scores.json").read_text())
    assert scores["protocol"] == "no-reference"
    assert f"{scores['images'][0]['niqe']:.3f}" in texts  # the other run's scores, from its scores.json
    capsys.readouterr()
