"""Image files in and out (always RGB, 3 channels, errors that name the file) and pairing files by name."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..errors import ImageReadError, ImageWriteError, MissingPathError, PairingError
from ..files import write_bytes_atomic

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "ImageWithAlpha",
    "Matching",
    "decode_image",
    "exif_orientation",
    "is_image_file",
    "list_images",
    "match_files",
    "name_list",
    "read_image",
    "read_image_with_alpha",
    "to_float32",
    "to_uint8",
    "write_image",
]


def is_image_file(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (symlinks followed)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingPathError(f"{folder}: no such folder")
    return sorted(p for p in folder.iterdir() if is_image_file(p.name) and p.is_file())


def name_list(names: list[str], shown: int = 5) -> str:
    """``a, b, c and 7 more``: the first few of a list of names, for messages."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


KeyFn = Callable[[str], "str | int | None"]
ROLES = ("input", "target")


def _stem(stem: str) -> str:
    return stem


@dataclass
class Matching:
    """Files of two folders matched by a key computed from each file's stem."""

    pairs: list[tuple[Path, Path]] = field(default_factory=list)  # (input, target), in target-key order
    inputs_without_target: list[Path] = field(default_factory=list)
    targets_without_input: list[Path] = field(default_factory=list)
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)  # two files of one folder with one key
    unfit: list[Path] = field(default_factory=list)  # names the key function rejected (returned None)

    def problems(self, input_dir: object, target_dir: object, roles: tuple[str, str] = ROLES) -> list[str]:
        """One sentence per kind of problem, naming the first few files. ``roles``: what to call each side."""
        out = [f"{a.parent} has two images with one name: {a.name} and {b.name}" for a, b in self.duplicates[:3]]
        for files, folder, (own, other) in (
            (self.inputs_without_target, input_dir, roles),
            (self.targets_without_input, target_dir, roles[::-1]),
        ):
            if files:
                names = [p.name for p in files]
                out.append(f"{len(names)} {own} images in {folder} have no {other} image: {name_list(names)}")
        return out

    def check(
        self, input_dir: object, target_dir: object, hint: str = "", roles: tuple[str, str] = ROLES
    ) -> list[tuple[Path, Path]]:
        """The pairs; raises :class:`PairingError` listing every problem when there is one."""
        problems = self.problems(input_dir, target_dir, roles)
        if problems:
            raise PairingError("; ".join(problems) + hint)
        return self.pairs


def match_files(
    inputs: list[Path],
    targets: list[Path],
    input_key: KeyFn = _stem,
    target_key: KeyFn = _stem,
    shared_targets: bool = False,
) -> Matching:
    """Matches ``inputs`` to ``targets`` by ``input_key(stem) == target_key(stem)``.

    A key function returns None for a name that does not fit (recorded in ``unfit``). ``shared_targets``
    lets several inputs share one target (DDN-Data: 14 rainy versions of each clean image).
    """
    result = Matching()
    by_key: dict[object, Path] = {}
    for path in targets:
        key = target_key(path.stem)
        if key is None:
            result.unfit.append(path)
        elif key in by_key:
            result.duplicates.append((by_key[key], path))
        else:
            by_key[key] = path
    used: dict[object, Path] = {}
    for path in inputs:
        key = input_key(path.stem)
        if key is None:
            result.unfit.append(path)
        elif key in used and not shared_targets:
            result.duplicates.append((used[key], path))
        elif key not in by_key:
            result.inputs_without_target.append(path)
        else:
            used.setdefault(key, path)
            result.pairs.append((path, by_key[key]))
    result.targets_without_input = [path for key, path in by_key.items() if key not in used]
    order = {key: i for i, key in enumerate(sorted(by_key, key=str))}
    result.pairs.sort(key=lambda pair: (order[target_key(pair[1].stem)], pair[0].name))
    return result


def truncation(data: bytes) -> str | None:
    """Why an encoded JPEG or WebP file is cut short, or None when it is complete (or another format).

    Older OpenCV builds decode a truncated JPEG with grey where the data ends; this check makes every version
    refuse it. PNG (CRC per chunk) and TIFF decoders notice truncation themselves.
    """
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg_truncation(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        declared = int.from_bytes(data[4:8], "little") + 8
        if len(data) < declared:
            return f"{len(data)} of the {declared} bytes its header declares"
    return None


def _jpeg_truncation(data: bytes) -> str | None:
    """Walks the marker segments to the first scan, then looks for the end-of-image marker after it."""
    pos, size = 2, len(data)
    while True:
        if pos + 4 > size:
            return "it ends inside its headers"
        if data[pos] != 0xFF:
            return None  # not a marker where one belongs: the decoder will judge the file
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xDA:  # start of scan: entropy-coded data follows
            break
        elif marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    # Entropy-coded data stuffs every 0xFF with 0x00, so 0xFFD9 after the scan header can only be the end marker.
    return None if data.find(b"\xff\xd9", pos) >= 0 else "no end-of-image marker after the image data"


def _decode_unchanged(data: bytes, name: str) -> np.ndarray:
    """``cv2.imdecode(IMREAD_UNCHANGED)`` of a complete 8- or 16-bit file with 1 to 4 channels.

    Every failure (empty, truncated, corrupt, unsupported) is an :class:`ImageReadError` naming ``name``.
    """
    if not data:
        raise ImageReadError(f"{name}: empty file")
    cut = truncation(data)
    if cut:
        raise ImageReadError(f"{name}: cannot decode image (truncated: {cut})")
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as err:  # OpenCV's decoders raise for some malformed headers instead of returning None
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else "decoder error"
        raise ImageReadError(f"{name}: cannot decode image ({reason[:160]})") from None
    if image is None:
        raise ImageReadError(f"{name}: cannot decode image (corrupt, truncated or not an image)")
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(f"{name}: unsupported pixel type {image.dtype}; expected 8- or 16-bit")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels not in (1, 2, 3, 4) or image.ndim > 3:
        raise ImageReadError(f"{name}: unsupported number of channels {channels}")
    return image


def decode_image(data: bytes | np.ndarray, name: str = "image") -> np.ndarray:
    """Decodes encoded bytes to an H x W x 3 RGB array, uint8 or uint16 as stored.

    Grayscale becomes 3 equal channels, an alpha channel is dropped.
    """
    image = _decode_unchanged(data if isinstance(data, bytes) else data.tobytes(), name)
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if channels == 2:  # gray + alpha
        return cv2.cvtColor(np.ascontiguousarray(image[:, :, 0]), cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)  # drops alpha


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:  # also handles non-ASCII paths, unlike cv2.imread
            return f.read()
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a folder, not an image file") from None
    except OSError as err:
        raise ImageReadError(f"{path}: cannot read ({err.strerror or err})") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """H x W x 3 RGB array (uint8, or uint16 for 16-bit files); raises :class:`ImageReadError` naming ``path``."""
    path = os.fspath(path)
    return decode_image(_read_bytes(path), path)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """8-bit copy of an 8- or 16-bit image (16-bit values are scaled by 255/65535 and rounded)."""
    if image.dtype == np.uint8:
        return image
    return np.round(image.astype(np.float64) / 257.0).astype(np.uint8)


def to_float32(image: np.ndarray) -> np.ndarray:
    """float32 image in [0, 1] from 8- or 16-bit storage."""
    scale = 255.0 if image.dtype == np.uint8 else 65535.0
    return image.astype(np.float32) / np.float32(scale)


def encode_image(rgb: np.ndarray, extension: str, params: list[int] | None = None) -> bytes:
    """Encodes an H x W x 3 RGB (or H x W x 4 RGBA, or H x W gray) uint8/uint16 array in ``extension``'s format."""
    if rgb.dtype not in (np.uint8, np.uint16) or not (rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] in (3, 4))):
        raise ImageWriteError(
            f"expected an H x W x 3 (or x 4, or gray) uint8/uint16 array, got {rgb.shape} {rgb.dtype}"
        )
    if rgb.ndim == 3:
        rgb = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR if rgb.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    try:
        ok, encoded = cv2.imencode(extension or ".png", rgb, params or [])
    except cv2.error:
        ok = False
    if not ok:
        raise ImageWriteError(f"cannot encode a {rgb.dtype} image as {extension or '.png'}")
    return encoded.tobytes()


def write_image(path: str | os.PathLike, rgb: np.ndarray, params: list[int] | None = None) -> None:
    """Writes an RGB (or RGBA, or gray) uint8/uint16 array atomically; the format follows the extension."""
    path = Path(path)
    try:
        data = encode_image(rgb, path.suffix, params)
    except ImageWriteError as err:
        raise ImageWriteError(f"{path}: {err}") from None
    write_bytes_atomic(path, data)


# EXIF orientation (tag 0x0112) -> the NumPy operation that makes the stored pixels upright (as viewers show them).
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def exif_orientation(path: str | os.PathLike) -> int:
    """The EXIF orientation of an image file (1..8; 1 when it has none or Pillow cannot tell)."""
    try:
        from PIL import Image  # Pillow comes with torchvision; only orientation needs it

        with Image.open(path) as image:
            value = image.getexif().get(0x0112, 1)
    except Exception:  # no Pillow, or a file Pillow cannot parse: OpenCV decides readability
        return 1
    return value if value in _ORIENT else 1


@dataclass
class ImageWithAlpha:
    """A decoded image file: RGB for the model, plus what writing the result back needs."""

    rgb: np.ndarray  # H x W x 3, uint8 or uint16 as stored
    alpha: np.ndarray | None  # H x W, same dtype as rgb; None without an alpha channel
    gray: bool  # the file stores one colour channel (rgb then holds three equal channels)
    orientation: int = 1  # the EXIF orientation applied to rgb and alpha (1: none)


def read_image_with_alpha(path: str | os.PathLike, upright: bool = True) -> ImageWithAlpha:
    """Reads an image file keeping its alpha channel, bit depth (8 or 16) and whether it is grayscale.

    ``upright`` applies the EXIF orientation, so the pixels are as a viewer shows them. Raises
    :class:`ImageReadError` naming ``path`` for a missing, corrupt or unsupported file.
    """
    path = os.fspath(path)
    image = _decode_unchanged(_read_bytes(path), path)
    channels = 1 if image.ndim == 2 else image.shape[2]
    alpha = np.ascontiguousarray(image[:, :, -1]) if channels in (2, 4) else None
    if channels <= 2:
        gray = image if channels == 1 else np.ascontiguousarray(image[:, :, 0])
        rgb = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    else:
        rgb = cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_BGR2RGB)
    orientation = exif_orientation(path) if upright else 1
    if orientation != 1:
        rgb = np.ascontiguousarray(_ORIENT[orientation](rgb))
        alpha = None if alpha is None else np.ascontiguousarray(_ORIENT[orientation](alpha))
    return ImageWithAlpha(rgb, alpha, channels <= 2, orientation)
