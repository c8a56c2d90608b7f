from __future__ import annotations

import argparse
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from drsformer.commands.synth_rain import add_arguments, run
from drsformer.data.io import ImageReadError, read_image, write_image
from drsformer.data.synth_rain import add_rain, line_kernel, make_example_strip, synthesize_folder


def photo(height: int = 96, width: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth, mid-grey-ish uint8 RGB test image (no pure white, so rain can show)."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(40, 180, size=(height // 8, width // 8, 3)).astype(np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


def changed_fraction(a: np.ndarray, b: np.ndarray, levels: int = 4) -> float:
    """Fraction of pixels where some channel moved by more than ``levels``."""
    return float((np.abs(a.astype(int) - b.astype(int)).max(axis=2) > levels).mean())


def streak_angle(rainy: np.ndarray) -> tuple[float, float]:
    """Dominant streak angle in degrees from vertical (positive falls right), and the gradient anisotropy.

    From the image's gradient structure tensor: streaks have strong gradients across them and weak ones along.
    """
    gray = rainy.astype(np.float32).mean(axis=2)
    gx = cv2.Scharr(gray, cv2.CV_32F, 1, 0)  # Scharr: much less biased toward the axes than Sobel
    gy = cv2.Scharr(gray, cv2.CV_32F, 0, 1)
    jxx, jyy, jxy = (gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum()
    gradient_angle = 0.5 * math.degrees(math.atan2(2 * jxy, jxx - jyy))  # from the x axis, image y down
    spread = math.hypot(jxx - jyy, 2 * jxy) / (jxx + jyy)  # 0: no preferred direction, 1: all one way
    return -gradient_angle, spread


def test_same_seed_same_rain_and_different_seeds_differ() -> None:
    clean = photo()
    first = add_rain(clean, np.random.default_rng(7))
    again = add_rain(clean, np.random.default_rng(7))
    other = add_rain(clean, np.random.default_rng(8))
    assert first.tobytes() == again.tobytes()
    assert changed_fraction(first, other) > 0.01


@pytest.mark.parametrize("blend", ["screen", "additive"])
def test_rain_brightens_and_keeps_shape(blend: str) -> None:
    clean = photo(80, 120)
    rainy = add_rain(clean, np.random.default_rng(1), "medium", blend=blend, haze=0.0)
    assert rainy.shape == clean.shape and rainy.dtype == np.uint8
    assert changed_fraction(rainy, clean) > 0.02
    assert rainy.mean() > clean.mean() + 0.5
    assert (rainy >= clean).all()  # without haze, rain only adds light


def test_heavier_rain_changes_more_pixels() -> None:
    clean = photo(128, 128)
    fractions = [
        changed_fraction(add_rain(clean, np.random.default_rng(3), density, haze=0.0), clean)
        for density in ("light", "medium", "heavy")
    ]
    assert fractions[0] > 0.01
    assert fractions[0] * 1.5 < fractions[1] and fractions[1] * 1.3 < fractions[2]


def test_haze_veils_the_whole_image() -> None:
    clean = np.zeros((64, 64, 3), np.uint8)
    hazy = add_rain(clean, np.random.default_rng(0), "light", haze=0.5)
    assert hazy.min() >= 0.5 * 0.75 * 255 - 1  # at least half-way to the dimmest airlight everywhere


def test_line_kernel_is_a_normalised_line() -> None:
    vertical = line_kernel(9, 0.0)
    assert vertical.sum() == pytest.approx(1.0)
    centre = vertical.shape[1] // 2
    assert vertical[:, centre].sum() == pytest.approx(1.0)  # all weight in the centre column
    assert (vertical[:, centre] > 0).sum() in (9, 10, 11)  # 9 pixels, plus anti-aliased ends
    np.testing.assert_allclose(line_kernel(9, 90.0), vertical.T, atol=1e-6)


@pytest.mark.parametrize("angle", [0.0, 20.0, -35.0, 90.0])
def test_streaks_follow_the_angle(angle: float) -> None:
    black = np.zeros((192, 192, 3), np.uint8)
    rainy = add_rain(black, np.random.default_rng(5), "medium", angle=angle, length=30, haze=0.0)
    measured, spread = streak_angle(rainy)
    assert spread > 0.6  # clearly oriented, not isotropic noise
    difference = (measured - angle + 90) % 180 - 90  # orientations are defined modulo 180 degrees
    assert abs(difference) < 4  # per-layer jitter is at most 3 degrees


def test_vertical_rain_is_correlated_vertically() -> None:
    black = np.zeros((160, 160, 3), np.uint8)
    rain = add_rain(black, np.random.default_rng(2), "heavy", angle=0.0, haze=0.0).astype(np.float32).mean(axis=2)
    rain -= rain.mean()
    vertical = (rain[4:, :] * rain[:-4, :]).mean()  # correlation at a 4-pixel shift
    horizontal = (rain[:, 4:] * rain[:, :-4]).mean()
    assert vertical > 5 * abs(horizontal)


def test_longer_streaks_for_longer_length() -> None:
    black = np.zeros((160, 160, 3), np.uint8)

    def vertical_correlation(length: float) -> float:
        rain = add_rain(black, np.random.default_rng(4), "light", angle=0.0, length=length, haze=0.0)
        rain = rain.astype(np.float32).mean(axis=2)
        rain -= rain.mean()
        return float((rain[12:, :] * rain[:-12, :]).mean() / (rain * rain).mean())

    assert vertical_correlation(40) > vertical_correlation(8) + 0.3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"density": "torrential"}, "density"),
        ({"blend": "multiply"}, "blend"),
        ({"haze": 1.5}, "haze"),
        ({"length": 0}, "length"),
        ({"layers": 9}, "layers"),
    ],
)
def test_invalid_options_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        add_rain(photo(), np.random.default_rng(0), **kwargs)


def test_rejects_non_uint8_images() -> None:
    with pytest.raises(ValueError, match="uint8"):
        add_rain(photo().astype(np.uint16), np.random.default_rng(0))


def make_clean_folder(folder: Path) -> dict[str, np.ndarray]:
    """Two 8-bit images and a 16-bit one; returns the 8-bit pixels each should have as a target."""
    images = {"a.png": photo(48, 64, 1), "b.jpg": photo(40, 56, 2)}
    for name, image in images.items():
        write_image(folder / name, image)
    images = {name: read_image(folder / name) for name in images}  # JPEG is lossy: targets are what was decoded
    deep = (photo(32, 48, 3).astype(np.uint16) * 257).astype(np.uint16)
    write_image(folder / "c.png", deep)
    images["c.png"] = photo(32, 48, 3)
    return images


def test_synthesize_folder_writes_matching_pairs(tmp_path: Path) -> None:
    clean_dir = tmp_path / "clean"
    images = make_clean_folder(clean_dir)
    assert synthesize_folder(clean_dir, tmp_path / "out", seed=3, progress=False) == 3
    inputs = sorted(p.name for p in (tmp_path / "out" / "input").iterdir())
    targets = sorted(p.name for p in (tmp_path / "out" / "target").iterdir())
    assert inputs == targets == ["a.png", "b.png", "c.png"]
    for name, clean in images.items():
        stem = Path(name).stem
        target = read_image(tmp_path / "out" / "target" / f"{stem}.png")
        rainy = read_image(tmp_path / "out" / "input" / f"{stem}.png")
        assert target.dtype == np.uint8 and np.array_equal(target, clean)
        assert rainy.shape == clean.shape and changed_fraction(rainy, clean) > 0.01


def test_synthesize_folder_is_reproducible_and_independent_of_other_files(tmp_path: Path) -> None:
    clean_dir = tmp_path / "clean"
    make_clean_folder(clean_dir)
    synthesize_folder(clean_dir, tmp_path / "one", seed=11, progress=False)
    synthesize_folder(clean_dir, tmp_path / "two", seed=11, progress=False)
    write_image(clean_dir / "0_first.png", photo(48, 64, 9))  # sorts before the others
    assert synthesize_folder(clean_dir, tmp_path / "three", seed=11, progress=False) == 4
    synthesize_folder(clean_dir, tmp_path / "other_seed", seed=12, progress=False)
    for name in ("a.png", "b.png", "c.png"):
        first = (tmp_path / "one" / "input" / name).read_bytes()
        assert (tmp_path / "two" / "input" / name).read_bytes() == first
        assert (tmp_path / "three" / "input" / name).read_bytes() == first
        assert (tmp_path / "other_seed" / "input" / name).read_bytes() != first


def test_synthesize_folder_several_versions_per_image(tmp_path: Path) -> None:
    clean_dir = tmp_path / "clean"
    images = make_clean_folder(clean_dir)
    assert synthesize_folder(clean_dir, tmp_path / "out", per_image=3, progress=False) == 9
    names = sorted(p.name for p in (tmp_path / "out" / "input").iterdir())
    assert names == sorted(f"{s}_r{k}.png" for s in "abc" for k in range(3))
    assert names == sorted(p.name for p in (tmp_path / "out" / "target").iterdir())
    versions = [read_image(tmp_path / "out" / "input" / f"a_r{k}.png") for k in range(3)]
    assert changed_fraction(versions[0], versions[1]) > 0.01 and changed_fraction(versions[1], versions[2]) > 0.01
    assert np.array_equal(read_image(tmp_path / "out" / "target" / "a_r2.png"), images["a.png"])
    # Version 0 is what a single-version run writes.
    synthesize_folder(clean_dir, tmp_path / "single", progress=False)
    single = (tmp_path / "single" / "input" / "a.png").read_bytes()
    assert (tmp_path / "out" / "input" / "a_r0.png").read_bytes() == single


def test_synthesize_folder_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty"):
        synthesize_folder(empty, tmp_path / "out", progress=False)

    corrupt = tmp_path / "corrupt"
    make_clean_folder(corrupt)
    (corrupt / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(ImageReadError, match="broken.png"):
        synthesize_folder(corrupt, tmp_path / "out", progress=False)

    clash = tmp_path / "clash"
    write_image(clash / "x.png", photo())
    write_image(clash / "x.bmp", photo())
    with pytest.raises(ValueError, match="x.bmp"):
        synthesize_folder(clash, tmp_path / "out", progress=False)

    with pytest.raises(ValueError, match="per_image"):
        synthesize_folder(clash, tmp_path / "out", per_image=0, progress=False)


def test_cli_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clean_dir = tmp_path / "clean"
    make_clean_folder(clean_dir)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--clean", str(clean_dir), "--out", str(tmp_path / "cli"), "--density", "heavy", "--angle", "15"]
    args = parser.parse_args([*argv, "--length", "12", "--seed", "4", "--haze", "0.2", "--per-image", "2"])
    assert run(args) == 0
    assert "wrote 6 heavy rain pairs" in capsys.readouterr().out
    # Same files as calling the library directly with the same options.
    synthesize_folder(
        clean_dir, tmp_path / "lib", "heavy", angle=15, length=12, seed=4, haze=0.2, per_image=2, progress=False
    )
    for name in ("a_r0.png", "b_r1.png", "c_r1.png"):
        assert (tmp_path / "cli" / "input" / name).read_bytes() == (tmp_path / "lib" / "input" / name).read_bytes()

    defaults = parser.parse_args(["--clean", "c", "--out", "o"])
    assert (defaults.density, defaults.blend, defaults.seed, defaults.per_image) == ("medium", "screen", 0, 1)
    assert defaults.angle is None and defaults.length is None and defaults.haze is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--clean", "c", "--out", "o", "--density", "torrential"])


def test_example_strip() -> None:
    clean = photo(60, 90)
    strip = make_example_strip(clean, seed=1, panel_width=90)
    assert strip.shape == (60, 4 * 90 + 3 * 4, 3) and strip.dtype == np.uint8
    panels = [strip[:, i * 94 : i * 94 + 90] for i in range(4)]
    below_label = slice(24, None)  # rows under the text labels
    assert np.array_equal(panels[0][below_label], clean[below_label])
    assert panels[1].mean() < panels[2].mean() < panels[3].mean()
