"""``drsformer derain``: remove rain from your own photos, any size, with memory bounded by the tile.

    drsformer derain --weights pretrained/Rain200H.pth -i photos/ -o derained/
    drsformer derain --weights experiments/run/models/net_g_latest.pth --params-key params_ema -i a.jpg -o out/

What happens to each photo is :mod:`drsformer.photos`'s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..devices import resolve_device
from ..errors import ConfigError, ExportError, ImageReadError, ImageWriteError, OutOfMemory
from ..inference import InferenceSettings
from ..memory import prepare_host_memory
from ..photos import DerainReport, derain_file, input_files, load_pytorch
from .args import add_device, add_precision, add_weights_key, parse_tile

BACKENDS = ("pytorch", "onnxruntime")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", help="a published checkpoint or a run's net_g_*.pth / .safetensors")
    add_weights_key(parser)
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
    add_precision(parser)
    add_device(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    parser.add_argument("--jpeg-quality", type=int, default=95, help="quality of JPEG outputs (95)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def pytorch_backend(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, InferenceSettings]:
    if args.model:
        raise ConfigError("--backend pytorch reads --weights; --model is the exported file of --backend onnxruntime")
    if not args.weights:
        raise ConfigError("--weights is required (or --backend onnxruntime --model FILE.onnx)")
    return load_pytorch(args.weights, args.params_key, device, args.tile, args.precision, args.self_ensemble)


def onnx_backend(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, InferenceSettings]:
    """An ONNX Runtime session of ``--model``. An exported graph holds the attention's sums over all pixels, which
    the exact tiler needs between steps, so it runs whole images; its precision was fixed by the export."""
    from ..deploy.runtime import OnnxModel

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
    prepare_host_memory(inference=True)
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
    model, settings = onnx_backend(args, device) if backend == "onnxruntime" else pytorch_backend(args, device)
    print(f"{len(files)} images, device {device}, {backend}, {settings.describe()}", file=sys.stderr)

    report, start = DerainReport(), time.perf_counter()
    for path in tqdm(files, desc="derain", unit="img", disable=args.quiet):
        target = out_dir / path.name
        if target.exists() and not args.overwrite:
            report.skipped.append(path)
            continue
        try:
            derain_file(model, path, target, settings, args.jpeg_quality, progress=not args.quiet)
        except (ImageReadError, ImageWriteError, OutOfMemory, ExportError) as err:  # reported; the next image goes on
            report.failed.append((path, str(err)))
            tqdm.write(f"drsformer derain: skipped {err}", file=sys.stderr)
            continue
        report.written.append(target)
    print(report.summary(out_dir, time.perf_counter() - start))
    return 1 if report.failed else 0
