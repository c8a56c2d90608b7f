"""Checking an upload by its content, before anything decodes it: what format its bytes are (never its name), and
how many pixels its header announces, so that a decompression bomb is refused unread."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from ..optional import require

# Formats the derain writer keeps, by Pillow's name for what it found in the bytes -> the suffix it is saved as.
SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp", "PPM": ".ppm"}


class UploadError(Exception):
    """An upload the server refuses; the message is the one line the page shows. ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Header:
    suffix: str
    width: int
    height: int


def inspect(path: Path, max_pixels: int) -> Header:
    """The format and size ``path``'s header announces (Pillow reads only the header here); an
    :class:`UploadError` for bytes that are no image this server derains, or for more than ``max_pixels``."""
    image_module = require("PIL.Image", "drsformer serve")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own decompression-bomb warning: the limit here is ours
            with image_module.open(path) as image:
                fmt, (width, height) = image.format, image.size
    except (image_module.UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise UploadError("not an image: its content is no format this server reads", 415) from None
    except image_module.DecompressionBombError:  # more pixels than Pillow itself will open
        raise UploadError(f"too large: its header announces more than this server's limit of {max_pixels:,} "
                          "pixels (--max-pixels)", 413) from None  # fmt: skip
    if fmt not in SUFFIXES:
        raise UploadError(f"not a supported image ({fmt}); send PNG, JPEG, BMP, TIFF, WebP or PPM", 415)
    if width * height > max_pixels:
        raise UploadError(
            f"too large: {width} x {height} is {width * height:,} pixels, more than this server's limit of "
            f"{max_pixels:,} pixels (--max-pixels)",
            413,
        )
    return Header(SUFFIXES[fmt], width, height)
