"""Image files in and out: always RGB, 3 channels, with errors that name the file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class ImageReadError(OSError):
    """An image that is missing, unreadable or corrupt; the message names it."""


def is_image_file(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (symlinks followed)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    return sorted(p for p in folder.iterdir() if is_image_file(p.name) and p.is_file())


def name_list(names: list[str], shown: int = 5) -> str:
    """``a, b, c and 7 more``: the first few of a list of names, for error messages."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def index_by_stem(files: list[Path], folder: str | os.PathLike) -> dict[str, Path]:
    """``{stem: path}``; two files with one stem (``a.png``, ``a.jpg``) are a ``ValueError`` naming both."""
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise ValueError(f"{folder} has two images named {path.stem}: {stems[path.stem].name} and {path.name}")
        stems[path.stem] = path
    return stems


def decode_image(data: bytes | np.ndarray, name: str = "image") -> np.ndarray:
    """Decodes encoded bytes to an H x W x 3 RGB array, uint8 or uint16 as stored.

    Grayscale becomes 3 equal channels, an alpha channel is dropped.
    """
    buffer = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
    if image is None:
        raise ImageReadError(f"{name}: cannot decode image (corrupt, truncated or not an image)")
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(f"{name}: unsupported pixel type {image.dtype}; expected 8- or 16-bit")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if channels == 2:  # gray + alpha
        return cv2.cvtColor(np.ascontiguousarray(image[:, :, 0]), cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)  # drops alpha
    raise ImageReadError(f"{name}: unsupported number of channels {channels}")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """H x W x 3 RGB array (uint8, or uint16 for 16-bit files); raises :class:`ImageReadError` naming ``path``."""
    path = os.fspath(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # also handles non-ASCII paths, unlike cv2.imread
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except OSError as err:
        raise ImageReadError(f"{path}: cannot read ({err.strerror or err})") from None
    return decode_image(data, path)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """8-bit copy of an 8- or 16-bit image (16-bit values are scaled by 255/65535 and rounded)."""
    if image.dtype == np.uint8:
        return image
    return np.round(image.astype(np.float64) / 257.0).astype(np.uint8)


def to_float32(image: np.ndarray) -> np.ndarray:
    """float32 image in [0, 1] from 8- or 16-bit storage."""
    scale = 255.0 if image.dtype == np.uint8 else 65535.0
    return image.astype(np.float32) / np.float32(scale)


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Writes an H x W x 3 RGB uint8/uint16 array atomically (temporary file, then rename)."""
    path = Path(path)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: expected an H x W x 3 uint8/uint16 RGB array, got {rgb.shape} {rgb.dtype}")
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(path.suffix or ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: cannot encode an image with this extension")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(encoded.tobytes())
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
