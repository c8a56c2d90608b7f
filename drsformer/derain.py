"""``drsformer derain``: remove rain from your own photos, any size, with memory bounded by the tile.

    drsformer derain --weights pretrained/Rain200H.pth -i photos/ -o derained/
    drsformer derain --weights experiments/run/models/net_g_latest.pth --params-key params_ema -i a.jpg -o out/

Every output keeps its input's name, format and pixel size: grayscale stays grayscale (BT.601 luma of the
restored RGB), an alpha channel is copied unchanged (gray + alpha is written as RGBA), 16-bit files stay 16-bit,
JPEGs are written at quality 95 (``--jpeg-quality``). Photos with an EXIF orientation are turned upright first
(as viewers show them), and written upright without EXIF data. An unreadable file is reported and skipped, the
others are processed, and the exit status is then 1; an existing output is left alone unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from torch import nn
from tqdm import tqdm

from .data.io import ImageWithAlpha, list_images, name_list, read_image_with_alpha, write_image
from .devices import resolve_device
from .errors import ConfigError, ExportError, ImageReadError, ImageWriteError, MissingPathError, OutOfMemory
from .inference import InferenceSettings, image_to_tensor, pick_tile, restore_or_explain, tensor_to_image
from .memory import prefer_huge_pages
from .precision import PRECISIONS

JPEG_EXTENSIONS = (".jpg", ".jpeg")
BACKENDS = ("pytorch", "onnxruntime")


def parse_tile(text: str) -> int | str:
    """``auto``, or a tile size in pixels (0: whole images)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number of pixels, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"tile must be auto, 0 (whole images) or positive, got {value}")
    return value


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
    model: nn.Module, image: ImageWithAlpha, settings: InferenceSettings, progress: bool, name: str = "image"
) -> np.ndarray:
    """The restored image as it is to be written: the input's bit depth, gray or RGB, alpha copied back."""
    dtype = image.rgb.dtype
    # The image stays on the CPU; tiles go to the model's device one at a time.
    restored = restore_or_explain(model, image_to_tensor(image.rgb), settings, name, progress=progress)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", help="a published checkpoint or a run's net_g_*.pth / .safetensors")
    parser.add_argument(
        "--params-key",
        default=None,
        help="weights inside the checkpoint: params or params_ema (default: the ones a training run validated, "
        "params_ema with EMA, else params)",
    )
    parser.add_argument(
        "--backend",
        choices=("auto", *BACKENDS),
        default="auto",
        help="pytorch: the model from --weights, exact tiles; onnxruntime: an exported file (--model FILE.onnx, "
        "see drsformer export), whole images at the precision it was exported with; auto (default): "
        "onnxruntime when --model is given, else pytorch",
    )
    parser.add_argument("--model", help="the .onnx file for --backend onnxruntime")
    parser.add_argument("-i", "--input", required=True, help="a photo, or a folder of photos")
    parser.add_argument("-o", "--output", required=True, help="folder for the derained photos (same names)")
    parser.add_argument(
        "--tile",
        type=parse_tile,
        default="auto",
        help="tile size in pixels, 0 for whole images, or auto (default): the largest that fits the free GPU "
        "memory, 256 on CPU. Tiles are exact: they change memory and speed, never the pixels",
    )
    parser.add_argument("--self-ensemble", action="store_true", help="average the 8 flips and rotations (8x slower)")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="fp32", help="autocast precision")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    parser.add_argument("--jpeg-quality", type=int, default=95, help="quality of JPEG outputs (95)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def pytorch_backend(args: argparse.Namespace, device) -> tuple[nn.Module, InferenceSettings]:
    """The model from ``--weights`` on ``device``, and the settings it runs with (``--tile auto`` resolved)."""
    from .archs.checkpoint import load_model

    if args.model:
        raise ConfigError("--backend pytorch reads --weights; --model is the exported file of --backend onnxruntime")
    if not args.weights:
        raise ConfigError("--weights is required (or --backend onnxruntime --model FILE.onnx)")
    model, note = load_model(args.weights, args.params_key)
    model = model.eval().to(device)
    if note:
        print(f"{args.weights}: {note}", file=sys.stderr)
    tile = args.tile
    if tile == "auto":
        tile, reason = pick_tile(model, device, args.precision)
        print(f"--tile auto: {reason}", file=sys.stderr)
    return model, InferenceSettings(args.precision, tile or None, args.self_ensemble).check()


def onnx_backend(args: argparse.Namespace, device) -> tuple[nn.Module, InferenceSettings]:
    """An ONNX Runtime session of ``--model``. An exported graph holds the attention's sums over all pixels, which
    the exact tiler needs between steps, so it runs whole images; its precision was fixed by the export."""
    from .deploy.runtime import OnnxModel

    if not args.model:
        raise ConfigError("--backend onnxruntime needs --model FILE.onnx (write one with drsformer export)")
    if args.weights or args.params_key:
        raise ConfigError(
            "--backend onnxruntime runs --model; --weights and --params-key belong to the pytorch backend"
        )
    if args.tile not in ("auto", 0):
        raise ConfigError(
            f"--tile {args.tile}: an ONNX file runs whole images (exact tiles need the model's steps, which only "
            "--backend pytorch has); use --tile 0, or the pytorch backend to bound the memory"
        )
    if args.precision != "fp32":
        raise ConfigError(
            f"--precision {args.precision}: an ONNX file computes at the precision it was exported with "
            "(drsformer export --precision)"
        )
    return OnnxModel(args.model, device=str(device)), InferenceSettings("fp32", None, args.self_ensemble).check()


def run(args: argparse.Namespace) -> int:
    prefer_huge_pages()
    files = input_files(args.input)
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"-o {out_dir}: is a file; give a folder for the derained photos")
    if any(p.parent.resolve() == out_dir.resolve() for p in files):
        raise ConfigError(f"-o {out_dir}: is the input folder; outputs keep their names, so choose another folder")
    if not 1 <= args.jpeg_quality <= 100:
        raise ConfigError(f"--jpeg-quality must be between 1 and 100, got {args.jpeg_quality}")
    device = resolve_device(args.device)
    InferenceSettings(args.precision, None, args.self_ensemble).check()
    backend = args.backend if args.backend != "auto" else ("onnxruntime" if args.model else "pytorch")
    if backend == "onnxruntime":
        model, settings = onnx_backend(args, device)
    else:
        model, settings = pytorch_backend(args, device)
    print(f"{len(files)} images, device {device}, {backend}, {settings.describe()}", file=sys.stderr)

    report, start = DerainReport(), time.perf_counter()
    for path in tqdm(files, desc="derain", unit="img", disable=args.quiet):
        target = out_dir / path.name
        if target.exists() and not args.overwrite:
            report.skipped.append(path)
            continue
        try:
            image = read_image_with_alpha(path)
            out = derain_image(model, image, settings, progress=not args.quiet, name=str(path))
            write_image(target, out, encode_params(target, args.jpeg_quality))
        except (ImageReadError, ImageWriteError, OutOfMemory, ExportError) as err:  # reported; the next image goes on
            report.failed.append((path, str(err)))
            tqdm.write(f"drsformer derain: skipped {err}", file=sys.stderr)
            continue
        report.written.append(target)
    print(report.summary(out_dir, time.perf_counter() - start))
    return 1 if report.failed else 0
