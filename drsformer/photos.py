"""Deraining your own photos (``drsformer derain`` and ``drsformer serve``): any size, memory bounded by the tile.

Every output keeps its input's name, format and pixel size: grayscale stays grayscale (BT.601 luma of the
restored RGB), an alpha channel is copied unchanged (gray + alpha is written as RGBA), 16-bit files stay 16-bit,
JPEGs are written at quality 95 (``--jpeg-quality``). Photos with an EXIF orientation are turned upright first
(as viewers show them), and written upright without EXIF data. An unreadable file is reported and skipped, the
others are processed, and the exit status is then 1; an existing output is left alone unless ``--overwrite``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from .data.io import ImageWithAlpha, list_images, name_list, read_image_with_alpha, write_image
from .errors import ConfigError, MissingPathError
from .inference import (
    InferenceSettings,
    ProgressFn,
    image_to_tensor,
    pick_tile,
    restore_or_explain,
    tensor_to_image,
)

JPEG_EXTENSIONS = (".jpg", ".jpeg")
BACKENDS = ("pytorch", "onnxruntime")


def input_files(path: str | os.PathLike) -> list[Path]:
    """The images to derain: ``path`` itself, or the images directly inside the folder ``path``."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.exists():
        raise MissingPathError(f"{path}: no such file or folder (-i takes a photo or a folder of photos)")
    files = list_images(path)
    if not files:
        raise ConfigError(f"{path}: holds no images (png, jpg, bmp, tif, webp) directly inside it")
    return files


def derain_image(
    model: nn.Module,
    image: ImageWithAlpha,
    settings: InferenceSettings,
    progress: bool,
    name: str = "image",
    on_progress: ProgressFn | None = None,
) -> np.ndarray:
    """The restored image as it is to be written: the input's bit depth, gray or RGB, alpha copied back."""
    dtype = image.rgb.dtype
    # The image stays on the CPU; tiles go to the model's device one at a time.
    restored = restore_or_explain(
        model, image_to_tensor(image.rgb), settings, name, progress=progress, on_progress=on_progress
    )
    out = tensor_to_image(restored, dtype)
    if image.alpha is not None:
        return np.dstack([out, image.alpha])  # gray + alpha: RGBA (the encoders do not write gray + alpha)
    if image.gray:
        return cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
    return out


def encode_params(path: Path, jpeg_quality: int) -> list[int]:
    """Encoder settings for the output's format: JPEG quality; lossless defaults for the others."""
    return [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if path.suffix.lower() in JPEG_EXTENSIONS else []


@dataclass
class DerainReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # output already there, no --overwrite
    failed: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self, out_dir: Path, seconds: float) -> str:
        total = len(self.written) + len(self.skipped) + len(self.failed)
        parts = [f"derained {len(self.written)} of {total} images into {out_dir} in {seconds:.1f} s"]
        if self.skipped:
            names = name_list([p.name for p in self.skipped])
            parts.append(f"{len(self.skipped)} skipped, output exists (--overwrite replaces it): {names}")
        if self.failed:
            names = name_list([p.name for p, _ in self.failed])
            parts.append(f"{len(self.failed)} failed: {names}")
        return "; ".join(parts)


def derain_file(
    model: nn.Module,
    path: Path,
    target: Path,
    settings: InferenceSettings,
    jpeg_quality: int = 95,
    progress: bool = False,
    on_progress: ProgressFn | None = None,
) -> None:
    """Reads the photo ``path``, derains it and writes it to ``target`` in the input's format, bit depth and alpha
    (JPEG at ``jpeg_quality``). Raises the one-line errors of reading, memory and writing, naming the file.
    ``on_progress(done, total)`` follows the tiles (see :func:`~drsformer.inference.restore`)."""
    image = read_image_with_alpha(path)
    out = derain_image(model, image, settings, progress=progress, name=str(path), on_progress=on_progress)
    write_image(target, out, encode_params(target, jpeg_quality))


def load_pytorch(
    weights: str, params_key: str | None, device: torch.device, tile: int | str, precision: str, self_ensemble: bool
) -> tuple[nn.Module, InferenceSettings]:
    """The model of ``weights`` on ``device`` (weights inside chosen by the one rule; its note to stderr), and the
    settings it runs with (``tile="auto"`` resolved by :func:`~drsformer.inference.pick_tile`, said on stderr)."""
    from .archs.checkpoint import load_model

    model, note = load_model(weights, params_key)
    model = model.eval().to(device)
    if note:
        print(f"{weights}: {note}", file=sys.stderr)
    if tile == "auto":
        tile, reason = pick_tile(model, device, precision)
        print(f"--tile auto: {reason}", file=sys.stderr)
    assert isinstance(tile, int)
    return model, InferenceSettings(precision, tile or None, self_ensemble).check()
