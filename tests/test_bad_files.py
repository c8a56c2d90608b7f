"""Files we did not write: each one reads correctly or ends in one DrsformerError that names it.

Deterministic fuzzing (every random choice comes from a fixed seed) of the four kinds of file a user hands us:
checkpoints, images, options files and dataset meta-info files. A file that still decodes must decode to what
it held (weights equal, pixels equal) or, where the format cannot tell (a flipped bit inside JPEG data), to an
image of a usable shape; a truncated image is never returned as a picture.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from conftest import TINY

from drsformer.archs import DRSformer, from_checkpoint
from drsformer.config import read_training_options
from drsformer.data.io import read_image, read_image_with_alpha, truncation
from drsformer.data.paired import pair_paths
from drsformer.errors import DrsformerError, ImageReadError

ROOT = Path(__file__).resolve().parents[1]


def outcomes(path: Path, blobs: Iterator[bytes], read: Callable[[Path], object]) -> Iterator[object | None]:
    """Writes each blob to ``path`` and reads it: yields what was read, or None after a DrsformerError naming
    ``path``. Any other exception propagates, with its traceback, and fails the test."""
    for blob in blobs:
        path.write_bytes(blob)
        try:
            value = read(path)
        except DrsformerError as err:
            message = str(err)
            assert path.name in message and "\n" not in message, message
            yield None
        else:
            yield value


def bit_flips(data: bytes, count: int, seed: int, start: int = 0) -> Iterator[bytes]:
    rng = np.random.default_rng(seed)
    for _ in range(count):
        flipped = bytearray(data)
        flipped[int(rng.integers(start, len(data)))] ^= 1 << int(rng.integers(0, 8))
        yield bytes(flipped)


def truncations(data: bytes, count: int) -> Iterator[bytes]:
    """``count`` prefixes, from one byte to all but the last, denser near both ends."""
    cuts = (
        set(np.linspace(1, len(data) - 1, count).astype(int))
        | set(range(1, 17))
        | set(range(len(data) - 16, len(data)))
    )
    return (data[:cut] for cut in sorted(cuts))


# ---------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def tiny_weights(weights) -> dict[str, torch.Tensor]:
    return torch.load(weights, weights_only=True)["params"]


@pytest.fixture(scope="module")
def checkpoint_bytes(weights) -> bytes:
    return weights.read_bytes()


def _weights_of(path: Path) -> dict[str, torch.Tensor]:
    return from_checkpoint(path).state_dict()


def test_random_bytes_are_never_weights(tmp_path) -> None:
    rng = np.random.default_rng(13)
    prefixes = [b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x02\x8a\x0a", b"PK\x05\x06"]
    blobs = [
        prefix + rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        for length in (1, 2, 3, 8, 64, 511, 4096, 65536)
        for prefix in prefixes
        for _ in range(8)
    ]
    results = list(outcomes(tmp_path / "noise.pth", iter(blobs), _weights_of))
    assert len(results) == 320 and all(r is None for r in results)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_truncated_checkpoints_are_refused(tmp_path, tiny_weights, zip_format: bool) -> None:
    buffer = io.BytesIO()
    torch.save({"params": tiny_weights}, buffer, _use_new_zipfile_serialization=zip_format)
    count = 120 if zip_format else 30  # the legacy reader is slower to fail
    results = list(outcomes(tmp_path / "cut.pth", truncations(buffer.getvalue(), count), _weights_of))
    assert len(results) > count and all(r is None for r in results)


def test_bit_flips_in_a_zip_checkpoint_are_caught_or_harmless(tmp_path, checkpoint_bytes, tiny_weights) -> None:
    flips = bit_flips(checkpoint_bytes, 250, seed=7)
    results = list(outcomes(tmp_path / "flipped.pth", flips, _weights_of))
    loaded = [r for r in results if r is not None]
    # A flip in a field nothing reads (a timestamp, say) still loads: then it must be the very same weights.
    for state in loaded:
        assert state.keys() == tiny_weights.keys()
        assert all(torch.equal(state[k], tiny_weights[k]) for k in state)
    assert len(results) == 250 and len(loaded) < 25  # the CRC-32 check catches every flip of tensor data


def _not_weights(tiny: dict[str, torch.Tensor]) -> dict[str, object]:
    reshaped = dict(tiny, **{"encoder_level1.0.attn.qkv.weight": torch.zeros(24, 8, 3, 3)})
    return {
        "bare_tensor": torch.zeros(3, 3),
        "list": [torch.zeros(2)],
        "params_is_int": {"params": 3},
        "empty_dict": {},
        "empty_params": {"params": {}},
        "none": None,
        "string": "weights",
        "wrong_shape": {"params": reshaped},
        "embedding_without_dimensions": dict(tiny, **{"patch_embed.proj.weight": torch.zeros(())}),
        "zero_width": dict(tiny, **{"patch_embed.proj.weight": torch.zeros(0, 3, 3, 3)}),
        "scalar_temperature": dict(tiny, **{"encoder_level1.0.attn.temperature": torch.zeros(())}),
        "heads_not_dividing": dict(tiny, **{"encoder_level1.0.attn.temperature": torch.zeros(3, 1, 1)}),
        "no_hidden_channels": dict(
            tiny,
            **{
                f"{s}.0.ffn.project_in.weight": torch.zeros(1, 8, 1, 1)
                for s in ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
            },
        ),
        "integer_tensor": dict(tiny, **{"output.weight": tiny["output.weight"].to(torch.int32)}),
        "complex_tensor": dict(tiny, **{"output.weight": tiny["output.weight"].to(torch.complex64)}),
        "sparse_tensor": dict(tiny, **{"output.weight": tiny["output.weight"].to_sparse()}),
        "integer_key": {**tiny, 7: torch.zeros(1)},
        "value_not_tensor": {"params": dict(tiny, extra=3)},
        "other_model": {"params": {"conv.weight": torch.zeros(3, 3, 3, 3)}},
    }


@pytest.mark.parametrize("case", list(_not_weights(DRSformer(**TINY).state_dict())))
def test_objects_that_are_not_weights_are_named(tmp_path, tiny_weights, case: str) -> None:
    path = tmp_path / f"{case}.pth"
    torch.save(_not_weights(tiny_weights)[case], path)
    (result,) = outcomes(path, iter([path.read_bytes()]), _weights_of)
    assert result is None


# ---------------------------------------------------------------- images


def _photo(channels: int = 3, dtype: type = np.uint8) -> np.ndarray:
    rng = np.random.default_rng(3)
    image = cv2.GaussianBlur(rng.integers(0, 256, (48, 64, channels), dtype=np.uint8), (7, 7), 2)
    image = image.reshape(48, 64, channels)
    return (image.astype(np.uint16) * 257) if dtype == np.uint16 else image


ENCODED = {
    "png": (".png", _photo(), []),
    "png16": (".png", _photo(dtype=np.uint16), []),
    "png_gray_alpha": (".png", _photo(4), []),
    "jpg": (".jpg", _photo(), [cv2.IMWRITE_JPEG_QUALITY, 90]),
    "jpg_progressive": (".jpg", _photo(), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
    "tif": (".tif", _photo(), []),
    "webp_lossless": (".webp", _photo(), [cv2.IMWRITE_WEBP_QUALITY, 101]),
    "webp": (".webp", _photo(), [cv2.IMWRITE_WEBP_QUALITY, 80]),
}


def _encoded(kind: str) -> tuple[str, bytes]:
    extension, image, params = ENCODED[kind]
    ok, data = cv2.imencode(extension, image, params)
    assert ok
    return extension, data.tobytes()


@pytest.mark.parametrize("reader", [read_image, lambda p: read_image_with_alpha(p).rgb], ids=["rgb", "with_alpha"])
@pytest.mark.parametrize("kind", list(ENCODED))
def test_truncated_images_are_never_pictures(tmp_path, kind: str, reader) -> None:
    extension, data = _encoded(kind)
    whole = read_image(_write(tmp_path / f"whole{extension}", data))
    results = list(outcomes(tmp_path / f"cut{extension}", truncations(data, 80), reader))
    # A cut that removes only bytes no decoder needs may still read, and then exactly as the whole file.
    assert all(r is None or np.array_equal(r, whole) for r in results)
    assert sum(r is None for r in results) >= len(results) - 2


@pytest.mark.parametrize("kind", list(ENCODED))
def test_byte_flipped_images_fail_clearly_or_decode_to_an_image(tmp_path, kind: str) -> None:
    extension, data = _encoded(kind)
    shape, dtype = (
        read_image(_write(tmp_path / f"whole{extension}", data)).shape,
        read_image(tmp_path / f"whole{extension}").dtype,
    )
    for result in outcomes(tmp_path / f"flipped{extension}", bit_flips(data, 60, seed=11), read_image):
        if result is not None:  # JPEG/WebP/TIFF data has no checksum: another picture, of a usable kind
            assert result.ndim == 3 and result.shape[2] == 3 and result.dtype in (np.uint8, np.uint16)
            if kind.startswith("png"):
                assert result.shape == shape and result.dtype == dtype


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_jpeg_truncation_is_found_whatever_the_decoder_does() -> None:
    """OpenCV 4 decodes a cut JPEG with grey where the data ends; the marker walk must refuse every cut."""
    _, data = _encoded("jpg")
    assert truncation(data) is None
    assert all(truncation(data[:cut]) for cut in range(3, len(data) - 1))
    # Data after the end marker (some cameras append their own) is not a truncation ...
    assert truncation(data + b"\x00trailer\xff\xd8") is None
    # ... and an end marker inside an embedded thumbnail, before the scan, does not hide one.
    thumbnail = b"\xff\xe1" + (2 + len(data)).to_bytes(2, "big") + data
    with_thumbnail = data[:2] + thumbnail + data[2:]
    assert truncation(with_thumbnail) is None and truncation(with_thumbnail[:-100])
    _, webp = _encoded("webp")
    assert truncation(webp) is None and truncation(webp[:-1])


def test_an_unreadable_path_is_an_image_error(tmp_path) -> None:
    with pytest.raises(ImageReadError, match="is a folder, not an image file"):
        read_image(tmp_path)
    with pytest.raises(ImageReadError, match="empty file"):
        read_image(_write(tmp_path / "empty.png", b""))


# ---------------------------------------------------------------- options files


@pytest.fixture
def options_files(tmp_path) -> tuple[Path, Path]:
    folder = tmp_path / "options"
    folder.mkdir()
    for name in ("_base.yml", "Rain200H.yml"):
        (folder / name).write_bytes((ROOT / "options" / "train" / name).read_bytes())
    return folder / "Rain200H.yml", folder / "_base.yml"


def _resolve(path: Path) -> dict:
    return read_training_options(path).options


def _check_options(path: Path, variants: Iterator[bytes], target: Path | None = None) -> list[object | None]:
    """Writes each variant to ``target`` (default ``path``) and resolves ``path``; the error must name one of
    the two files."""
    target = target or path
    original = target.read_bytes()
    results = []
    for blob in variants:
        target.write_bytes(blob)
        try:
            results.append(_resolve(path))
        except DrsformerError as err:
            message = str(err)
            assert (path.name in message or target.name in message) and "\n" not in message, message
            results.append(None)
    target.write_bytes(original)
    return results


def test_mutated_options_files_resolve_or_name_the_file(options_files) -> None:
    overlay, base = options_files
    expected = _resolve(overlay)
    for target in (overlay, base):
        data = target.read_bytes()
        results = _check_options(overlay, truncations(data, 150), target)
        results += _check_options(overlay, bit_flips(data, 150, seed=5), target)
        # Whatever still resolves is a complete set of options.
        assert all(r is None or r.keys() == expected.keys() for r in results)
        assert any(r is None for r in results)


def test_tabs_in_indentation_name_the_line(options_files) -> None:
    overlay, base = options_files
    lines = base.read_text().splitlines(keepends=True)
    indented = [i for i, line in enumerate(lines) if line.startswith("  ")]
    variants = ("".join(lines[:i] + ["\t" + lines[i][2:]] + lines[i + 1 :]).encode() for i in indented[::3])
    results = _check_options(overlay, variants, base)
    assert results and all(r is None for r in results)


@pytest.mark.parametrize(
    "text, message",
    [
        ("base: bad.yml\nname: x\n", "'base' files include each other"),
        ("base: nowhere.yml\nname: x\n", "base: nowhere\\.yml: no such options file"),
        ("base: [Rain200H.yml, 3]\n", "base: expected a file name or a list"),
        ("- name: x\n- train: {}\n", "expected a mapping of options at the top level, found list"),
        ("train: [1, 2]\n", "train: expected a section"),
        ("val: [1, 2]\n", "val: expected a section"),
        ("datasets: [1, 2]\n", "datasets: expected a section"),
        ("datasets: {train: [1]}\n", "datasets\\.train: expected a dataset section"),
        ("network_g: [DRSformer]\n", "network_g: expected a section with a 'type' key"),
        ("train: {optim_g: [1]}\n", "train\\.optim_g: expected a section with a 'type' key"),
        ("logger: 3\n", "logger: expected a section"),
        ("date: 2023-13-45\n", "not valid YAML"),
        ("name: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n", "line 3 not valid YAML"),
    ],
)
def test_options_structure_errors_name_the_file(options_files, text: str, message: str) -> None:
    overlay, _ = options_files
    bad = overlay.with_name("bad.yml")
    bad.write_text(text if text.startswith(("base:", "-")) else f"base: {overlay.name}\n{text}")
    with pytest.raises(DrsformerError, match=r"bad\.yml:.*" + message) as info:
        _resolve(bad)
    assert "\n" not in str(info.value)


def test_a_base_cycle_through_two_files_is_named(options_files) -> None:
    overlay, base = options_files
    base.write_text("base: Rain200H.yml\n")
    with pytest.raises(DrsformerError, match=r"include each other \(Rain200H\.yml -> _base\.yml\)"):
        _resolve(overlay)


def test_binary_options_file_is_named(options_files) -> None:
    overlay, _ = options_files
    overlay.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(DrsformerError, match=r"Rain200H\.yml: not UTF-8 text \(byte 6\)"):
        _resolve(overlay)


# ---------------------------------------------------------------- dataset meta-info files


def test_mutated_meta_info_files_pair_or_name_the_file(tmp_path) -> None:
    for role in ("input", "target"):
        (tmp_path / role).mkdir()
        for i in range(4):
            (tmp_path / role / f"{i}.png").write_bytes(b"")
    meta = tmp_path / "meta_info.txt"
    data = b"".join(f"{i}.png {i}.png\n".encode() for i in range(4))
    meta.write_bytes(data)
    whole = pair_paths(tmp_path / "input", tmp_path / "target", meta_info_file=meta)
    variants = [*truncations(data, 30), *bit_flips(data, 80, seed=2), b"\xff\xfe\x00", yaml.safe_dump([1]).encode()]
    read = lambda p: pair_paths(tmp_path / "input", tmp_path / "target", meta_info_file=p)  # noqa: E731
    results = list(outcomes(meta, iter(variants), read))
    assert any(r is None for r in results) and whole in results
    for pairs in filter(None, results):  # what a mutated file still lists exists, pair by pair
        assert all(lq.is_file() and gt.is_file() for lq, gt in pairs)
