"""drsformer demo, shortened: data, training through the trainer, evaluation, pictures, summary."""

import json
import math

import numpy as np

from drsformer.archs import from_checkpoint
from drsformer.cli import main
from drsformer.data.io import read_image
from drsformer.demo.data import HELD_OUT_PHOTOS, TRAIN_PHOTOS, make_data
from drsformer.demo.pictures import curve_picture


def test_a_short_demo_writes_pictures_a_loadable_checkpoint_and_a_summary(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--minutes", "10", "--size", "32", "--max-iterations", "3", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    for key in ("psnr_before", "psnr_after", "ssim_before", "ssim_after", "seconds_per_iteration"):
        assert math.isfinite(summary[key]), key
    assert summary["iterations"] == 3 and summary["budget_minutes"] == 10  # the iteration cap ends it
    assert summary["model"]["mefc"] is False and summary["parameters"] > 0
    assert f"{summary['psnr_before']:.2f} dB -> {summary['psnr_after']:.2f} dB" in printed
    assert "drsformer derain --weights" in printed and "drsformer train -opt options/train/Rain200H.yml" in printed
    comparison = read_image(out / "comparison.png")
    assert comparison.shape[0] > 3 * 32 and comparison.shape[1] >= 3 * 200
    assert read_image(out / "training_curve.png").shape == (360, 640, 3)
    model = from_checkpoint(out / "run" / "models" / "net_g_latest.pth")
    assert model.config["dim"] == 8
    assert list((out / "run" / "tb").glob("events.out.tfevents.*"))
    # The checkpoint derains a photo through the derain command.
    assert (
        main(
            [
                "derain",
                "--weights",
                summary["checkpoint"],
                "-i",
                str(out / "data/test/input"),
                "-o",
                str(tmp_path / "d"),
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "d").iterdir())) == len(HELD_OUT_PHOTOS) * 2

    # A rerun replaces the demo's own folder; a folder it did not make is refused.
    assert main(argv) == 0
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    assert main(["demo", "--out", str(foreign), "--minutes", "0.1"]) == 2
    assert "was not made by drsformer demo" in capsys.readouterr().err
    assert (foreign / "thesis.tex").read_text() == "keep me"


def test_the_data_depend_on_the_seed_only(tmp_path) -> None:
    counts = make_data(tmp_path / "a", seed=4, short_side=24)
    assert counts == {"train": len(TRAIN_PHOTOS) * 2 * 3, "test": len(HELD_OUT_PHOTOS) * 2}
    make_data(tmp_path / "b", seed=4, short_side=24)
    make_data(tmp_path / "c", seed=5, short_side=24)
    names = sorted(p.name for p in (tmp_path / "a/train/input").iterdir())
    same = [
        np.array_equal(read_image(tmp_path / "a/train/input" / n), read_image(tmp_path / "b/train/input" / n))
        for n in names
    ]
    other = [
        np.array_equal(read_image(tmp_path / "a/train/input" / n), read_image(tmp_path / "c/train/input" / n))
        for n in names
    ]
    assert all(same) and not any(other)
    held_out = {p.name.split("_")[0] for p in (tmp_path / "a/test/input").iterdir()}
    trained = {p.name.split("_")[0] for p in (tmp_path / "a/train/input").iterdir()}
    assert held_out and not held_out & trained


def test_curve_marks_the_rainy_baseline_and_every_point() -> None:
    picture = curve_picture([(10.0, 22.0), (20.0, 25.0), (40.0, 26.5)], baseline=20.3)
    blue = np.all(picture == (31, 119, 180), axis=-1)
    assert blue.sum() > 100  # the line and its points are drawn
    # A non-finite PSNR (an image restored exactly gives inf) is left out rather than breaking the axes.
    assert curve_picture([(1.0, float("inf")), (2.0, 21.0)], baseline=20.0).shape == (360, 640, 3)
