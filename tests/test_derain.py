"""drsformer derain: formats, grayscale, alpha, 16-bit, EXIF orientation, failures, overwrite, training checkpoints."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image, ImageOps

from drsformer.archs import DRSformer
from drsformer.cli import main
from drsformer.data.io import read_image_with_alpha, write_image
from drsformer.inference import image_to_tensor, restore, tensor_to_image


def expected_rgb(model: DRSformer, rgb: np.ndarray, **options) -> np.ndarray:
    return tensor_to_image(restore(model, image_to_tensor(rgb), **options), rgb.dtype)


def _raw(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_folder_of_mixed_files(tmp_path, model_file, capsys) -> None:
    weights, model = model_file
    rng = np.random.default_rng(0)
    photos, out = tmp_path / "photos", tmp_path / "out"
    gray = rng.integers(0, 256, (21, 30), dtype=np.uint8)
    rgba = rng.integers(0, 256, (26, 19, 4), dtype=np.uint8)
    deep = rng.integers(0, 65536, (17, 23, 3), dtype=np.uint16)
    write_image(photos / "gray.png", gray)
    write_image(photos / "rgba.png", rgba)
    write_image(photos / "deep.png", deep)
    write_image(photos / "photo.jpg", rng.integers(0, 256, (33, 40, 3), dtype=np.uint8))
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")

    assert main(["derain", "--weights", str(weights), "-i", str(photos), "-o", str(out), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "broken.jpg: cannot decode image" in captured.err
    assert "derained 4 of 5 images" in captured.out and "1 failed: broken.jpg" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["deep.png", "gray.png", "photo.jpg", "rgba.png"]

    # grayscale in, grayscale out: the luma of the restored 3-channel image
    restored_gray = expected_rgb(model, cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB))
    assert np.array_equal(_raw(out / "gray.png"), cv2.cvtColor(restored_gray, cv2.COLOR_RGB2GRAY))
    # alpha passes through unchanged, the colour is restored
    written = cv2.cvtColor(_raw(out / "rgba.png"), cv2.COLOR_BGRA2RGBA)
    assert np.array_equal(written[..., 3], rgba[..., 3])
    assert np.array_equal(written[..., :3], expected_rgb(model, rgba[..., :3]))
    # 16-bit stays 16-bit
    deep_out = cv2.cvtColor(_raw(out / "deep.png"), cv2.COLOR_BGR2RGB)
    assert deep_out.dtype == np.uint16 and np.array_equal(deep_out, expected_rgb(model, deep))
    # JPEG: same size, encoded at quality 95
    jpeg_in = cv2.cvtColor(_raw(photos / "photo.jpg"), cv2.COLOR_BGR2RGB)
    expected = cv2.cvtColor(expected_rgb(model, jpeg_in), cv2.COLOR_RGB2BGR)
    _, encoded = cv2.imencode(".jpg", expected, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert (out / "photo.jpg").read_bytes() == encoded.tobytes()


def test_other_formats_keep_format_and_size(tmp_path, model_file) -> None:
    weights, model = model_file
    rgb = np.random.default_rng(4).integers(0, 256, (18, 13, 3), dtype=np.uint8)
    names = ["a.bmp", "b.tif", "c.webp", "d.PNG"]
    for name in names:
        write_image(tmp_path / "in" / name, rgb)
    assert (
        main(["derain", "--weights", str(weights), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--quiet"])
        == 0
    )
    expected = cv2.cvtColor(expected_rgb(model, rgb), cv2.COLOR_RGB2BGR)
    for name in names:
        data = (tmp_path / "o" / name).read_bytes()
        assert data == cv2.imencode(Path(name).suffix, expected)[1].tobytes()  # in the input's format
        assert np.array_equal(_raw(tmp_path / "o" / name), expected)  # and lossless


def test_existing_outputs_are_kept_unless_overwrite(tmp_path, model_file, capsys) -> None:
    weights, model = model_file
    photo = tmp_path / "a.png"
    write_image(photo, np.full((16, 16, 3), 90, np.uint8))
    out = tmp_path / "out"
    write_image(out / "a.png", np.zeros((4, 4, 3), np.uint8))
    argv = ["derain", "--weights", str(weights), "-i", str(photo), "-o", str(out), "--quiet"]
    assert main(argv) == 0
    assert "1 skipped, output exists (--overwrite replaces it): a.png" in capsys.readouterr().out
    assert _raw(out / "a.png").shape == (4, 4, 3)
    assert main([*argv, "--overwrite"]) == 0
    assert _raw(out / "a.png").shape == (16, 16, 3)


def test_tiles_and_self_ensemble_options_reach_restore(tmp_path, model_file) -> None:
    weights, model = model_file
    rgb = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)  # 2 x 2 tiles of 24
    write_image(tmp_path / "in" / "x.png", rgb)
    options = ["--tile", "24", "--self-ensemble", "--device", "cpu"]
    argv = ["derain", "--weights", str(weights), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out")]
    assert main([*argv, *options, "--quiet"]) == 0
    written = cv2.cvtColor(_raw(tmp_path / "out" / "x.png"), cv2.COLOR_BGR2RGB)
    assert np.array_equal(written, expected_rgb(model, rgb, tile=24, self_ensemble=True))
    # Tiles are exact: the whole image gives the same picture (a float32 rounding may move a value by one level).
    whole = expected_rgb(model, rgb, self_ensemble=True)
    assert np.abs(written.astype(int) - whole).max() <= 1 and np.mean(written == whole) > 0.999


def test_training_checkpoint_and_params_key(tmp_path, model_file) -> None:
    _, model = model_file
    torch.manual_seed(5)
    ema = DRSformer(**TINY).eval()  # a different architecture too: inferred from the weights
    weights = tmp_path / "net_g_latest.pth"
    torch.save({"params": model.state_dict(), "params_ema": ema.state_dict()}, weights)
    rgb = np.random.default_rng(2).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    write_image(tmp_path / "x.png", rgb)
    argv = ["derain", "--weights", str(weights), "-i", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"), "--quiet"]
    assert main([*argv, "--params-key", "params_ema"]) == 0
    written = cv2.cvtColor(_raw(tmp_path / "o" / "x.png"), cv2.COLOR_BGR2RGB)
    assert np.array_equal(written, expected_rgb(ema, rgb))
    assert not np.array_equal(written, expected_rgb(model, rgb))


def test_errors_are_one_line(tmp_path, model_file, capsys) -> None:
    weights, _ = model_file
    write_image(tmp_path / "in" / "x.png", np.zeros((8, 8, 3), np.uint8))

    def error(argv: list[str]) -> str:
        assert main(["derain", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("drsformer derain: error:") and "\n" not in err
        return err

    assert "missing.pth: no such file" in error(
        ["--weights", str(tmp_path / "missing.pth"), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "o")]
    )
    assert "nope: no such file or folder" in error(["--weights", str(weights), "-i", str(tmp_path / "nope"), "-o", "o"])
    assert "is the input folder" in error(
        ["--weights", str(weights), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "in")]
    )
    (tmp_path / "empty").mkdir()
    assert "holds no images" in error(["--weights", str(weights), "-i", str(tmp_path / "empty"), "-o", "o"])
    with pytest.raises(SystemExit):
        main(["derain", "--weights", str(weights), "-i", "x", "-o", "o", "--tile", "big"])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_pillow(tmp_path, orientation: int) -> None:
    pixels = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(tmp_path / "o.png", exif=exif.tobytes())
    loaded = read_image_with_alpha(tmp_path / "o.png")
    with Image.open(tmp_path / "o.png") as stored:
        upright = np.asarray(ImageOps.exif_transpose(stored))
    assert loaded.orientation == orientation and np.array_equal(loaded.rgb, upright)
    assert np.array_equal(read_image_with_alpha(tmp_path / "o.png", upright=False).rgb, pixels)


def test_read_image_with_alpha_kinds(tmp_path) -> None:
    rng = np.random.default_rng(3)
    rgba16 = rng.integers(0, 65536, (6, 9, 4), dtype=np.uint16)
    write_image(tmp_path / "a.png", rgba16)
    loaded = read_image_with_alpha(tmp_path / "a.png")
    assert loaded.rgb.dtype == np.uint16 and np.array_equal(loaded.rgb, rgba16[..., :3])
    assert np.array_equal(loaded.alpha, rgba16[..., 3]) and not loaded.gray
    gray = rng.integers(0, 256, (6, 9), dtype=np.uint8)
    write_image(tmp_path / "g.png", gray)
    loaded = read_image_with_alpha(tmp_path / "g.png")
    assert loaded.gray and loaded.alpha is None and np.array_equal(loaded.rgb, np.dstack([gray] * 3))


ALLOCATION_FAILURES = {  # as PyTorch's allocator, cuBLAS and cuDNN report running out of GPU memory
    "allocator": lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB"),
    "cublas": lambda: RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    "cudnn": lambda: RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
}


@pytest.mark.parametrize("failure", sorted(ALLOCATION_FAILURES))
def test_out_of_memory_on_one_photo_names_it_and_the_others_go_on(
    tmp_path, model_file, capsys, monkeypatch, failure: str
) -> None:
    weights, model = model_file
    forward = DRSformer.forward

    def limited(self, x):  # a GPU that cannot hold more than 1000 pixels at once
        if x.shape[-2] * x.shape[-1] > 1000:
            raise ALLOCATION_FAILURES[failure]()
        return forward(self, x)

    monkeypatch.setattr(DRSformer, "forward", limited)
    rng = np.random.default_rng(3)
    write_image(tmp_path / "in" / "big.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    write_image(tmp_path / "in" / "small.png", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    argv = ["derain", "--weights", str(weights), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--quiet"]
    assert main([*argv, "--tile", "0"]) == 1
    captured = capsys.readouterr()
    assert f"{tmp_path / 'in' / 'big.png'}: out of memory on cpu restoring 40x40 pixels; use --tile 256" in captured.err
    assert "1 failed: big.png" in captured.out and (tmp_path / "out" / "small.png").is_file()
    # With tiles the same photo fits: exact tiling never calls the whole network on the whole image.
    assert main([*argv, "--tile", "16", "--overwrite"]) == 0


def test_a_training_runs_ema_weights_are_used_by_default(tmp_path, model_file, capsys) -> None:
    _, model = model_file
    torch.manual_seed(7)
    ema = DRSformer(**TINY, mefc=False).eval()
    weights = tmp_path / "net_g_best.pth"
    torch.save({"params": model.state_dict(), "params_ema": ema.state_dict(), "validated": "params_ema"}, weights)
    rgb = np.random.default_rng(5).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    write_image(tmp_path / "x.png", rgb)
    argv = ["derain", "--weights", str(weights), "-i", str(tmp_path / "x.png"), "--quiet"]
    assert main([*argv, "-o", str(tmp_path / "a")]) == 0
    assert "using params_ema: the weights this run validated" in capsys.readouterr().err
    assert np.array_equal(cv2.cvtColor(_raw(tmp_path / "a" / "x.png"), cv2.COLOR_BGR2RGB), expected_rgb(ema, rgb))
    assert main([*argv, "-o", str(tmp_path / "b"), "--params-key", "params"]) == 0
    assert "using params_ema" not in capsys.readouterr().err
    assert np.array_equal(cv2.cvtColor(_raw(tmp_path / "b" / "x.png"), cv2.COLOR_BGR2RGB), expected_rgb(model, rgb))
