"""Time, peak memory and exactness of tiled inference against the whole image, by image size.

    python scripts/bench_tiling.py                                   # full model, random weights: the README table
    python scripts/bench_tiling.py --weights demo_output/run/models/net_g_latest.pth --sizes 512 1024 \\
        --pairs demo_output/data/test                                # a trained model, and PSNR on real pairs
    python scripts/bench_tiling.py --dim 8 --num-blocks 1 1 1 1 --sizes 64 96x80 --tiles 32   # quick

Each measurement runs in a fresh process, so its peak memory is its own: the resident set's high-water mark
(Linux ``VmHWM``, reset after the model and the input are built; "base" is the resident set then) on CPU,
``torch.cuda.max_memory_allocated`` on CUDA. The input is a rainy test photo (tests/data/metric_images)
resized to each size, or ``--image``. "whole" runs the image at once (for sides up to ``--whole-max``), "exact
N" tiles of N pixels, "one piece" the tiled executor with tiles as large as the image (its cost without
halos). For tiled rows, "max diff" is the largest difference from the whole-image output, in uint8 levels and
in float; "halo" is how many pixels the Transformer blocks and MEFC compute per pixel they output, halos
included (1.00: none).

With ``--pairs DIR`` (``DIR/input`` and ``DIR/target``), each pair is also restored whole and tiled and scored
(Y-PSNR, ``restormer`` protocol): tiled must equal whole.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from drsformer import tiling
from drsformer.archs import DRSformer
from drsformer.commands.args import add_model, model_from_args, parse_size
from drsformer.data.io import list_images, match_files, read_image, to_uint8
from drsformer.inference import PRECISIONS, image_to_tensor, restore, tensor_to_image
from drsformer.memory import peak_mb, prefer_huge_pages, reset_peak, resident_mb
from drsformer.metrics import evaluate_pair

PHOTO = Path(__file__).resolve().parents[1] / "tests" / "data" / "metric_images" / "rain200h_1_rainy.png"
ONE_PIECE = 1 << 20  # a tile side no image reaches: every level in one piece


def make_input(size: tuple[int, int], image: str | None) -> np.ndarray:
    """The test photo (or ``image``) resized to ``size`` = (H, W) with bicubic interpolation, uint8 RGB."""
    photo = to_uint8(read_image(image or PHOTO))
    return cv2.resize(photo, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)


def halo_ratio(model: DRSformer, height: int, width: int, tile: int) -> float:
    """Pixels the blocks and MEFC steps compute (halos included) per output pixel, weighted by each step's
    channels (a proxy for its cost)."""
    padded = (-(-height // 8) * 8, -(-width // 8) * 8)
    computed = output = 0.0
    for step in model.plan:
        if step.kind not in ("block", "mefc"):
            continue
        module = model.get_submodule(step.module)
        scale = 2 ** (step.level - 1)
        h, w = padded[0] // scale, padded[1] // scale
        radius = tiling.step_radius(step, module)
        weight = model.config["dim"] * scale * (2 if step.module.startswith(("decoder_level1", "refinement")) else 1)
        for window in tiling.grid(h, w, tiling.level_tile(tile, step.level)):
            computed += window.grown(radius, h, w).area * weight
            output += window.area * weight
    return computed / output


def measure_one(args: argparse.Namespace) -> None:
    """Child process: one size and mode; prints a JSON line and saves the float output to ``args.child_out``."""
    size, tile = parse_size(args.child_size), args.child_tile
    prefer_huge_pages()  # as derain does; THP_MEM_ALLOC_ENABLE=0 compares without
    torch.manual_seed(args.seed)  # every child builds the same random weights
    model, _ = model_from_args(args)
    device = torch.device(args.device)
    model = model.eval().to(device)
    image = image_to_tensor(make_input(size, args.image))
    base = resident_mb()
    reset_peak(device)
    start = time.perf_counter()
    out = restore(model, image, args.precision, tile=tile or None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = peak_mb(device)
    np.save(args.child_out, out[0].numpy())
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "base_mb": base}))


def run_child(argv: list[str], size: str, tile: int, out: Path) -> dict:
    command = [
        sys.executable,
        __file__,
        *argv,
        "--child-size",
        size,
        "--child-tile",
        str(tile),
        "--child-out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _levels(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 255).astype(np.int16)


def sizes_table(args: argparse.Namespace, argv: list[str]) -> list[dict]:
    torch.manual_seed(args.seed)
    model, _ = model_from_args(args)
    header = f"{'size (HxW)':>11} {'mode':>10} {'seconds':>9} {'s/MP':>7} {'peak MB':>8} {'base MB':>8}"
    print(header + f" {'MB/MP':>7} {'halo':>5} {'max diff':>9} {'float diff':>10}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for text in args.sizes:
            h, w = parse_size(text)
            label = f"{h}x{w}"
            whole = None
            modes = ([0] if max(h, w) <= args.whole_max else []) + list(args.tiles)
            modes += [ONE_PIECE] if args.one_piece else []
            for tile in modes:
                out = Path(tmp) / f"{label}_{tile}.npy"
                row = {"size": label, "tile": tile or None}
                row.update(run_child(argv, label, tile, out))
                if tile:
                    row["halo"] = halo_ratio(model, h, w, tile)
                if "error" not in row:
                    output = np.load(out)
                    if tile == 0:
                        whole = output
                    elif whole is not None:
                        row["max_diff"] = int(np.abs(_levels(output) - _levels(whole)).max())
                        row["float_diff"] = float(np.abs(output - whole).max())
                    out.unlink()
                rows.append(row)
                print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    tile = row["tile"]
    mode = "whole" if tile is None else "one piece" if tile == ONE_PIECE else f"exact {tile}"
    start = f"{row['size']:>11} {mode:>10}"
    if "error" in row:
        return f"{start} failed: {row['error']}"
    h, w = parse_size(row["size"])
    megapixels = h * w / 1e6
    text = f"{start} {row['seconds']:>9.2f} {row['seconds'] / megapixels:>7.2f} {row['peak_mb']:>8.0f}"
    text += f" {row['base_mb']:>8.0f} {(row['peak_mb'] - row['base_mb']) / megapixels:>7.0f}"
    text += f" {row['halo']:>5.2f}" if "halo" in row else f" {'':>5}"
    if "max_diff" in row:
        text += f" {row['max_diff']:>9d} {row['float_diff']:>10.1e}"
    return text


def pairs_table(args: argparse.Namespace) -> list[dict]:
    """Y-PSNR of whole and tiled restorations of every pair in ``args.pairs``."""
    torch.manual_seed(args.seed)
    model, _ = model_from_args(args)
    model = model.eval().to(args.device)
    root = Path(args.pairs)
    pairs = match_files(list_images(root / "input"), list_images(root / "target")).check(
        root / "input", root / "target"
    )
    print(
        f"\n{'photo':>28} {'size':>9} {'input':>8} {'whole':>8} "
        + " ".join(f"{'exact ' + str(t):>9}" for t in args.tiles)
    )
    rows = []
    for rainy_path, clean_path in pairs:
        rainy, clean = to_uint8(read_image(rainy_path)), to_uint8(read_image(clean_path))
        x = image_to_tensor(rainy)
        scores = {"input": evaluate_pair(rainy, clean, "restormer").psnr}
        for tile in [0, *args.tiles]:
            restored = tensor_to_image(restore(model, x, args.precision, tile=tile or None))
            scores["whole" if not tile else f"exact {tile}"] = evaluate_pair(restored, clean, "restormer").psnr
        size = f"{rainy.shape[0]}x{rainy.shape[1]}"
        print(
            f"{rainy_path.name:>28} {size:>9} "
            + " ".join(f"{v:>8.4f}" if k in ("input", "whole") else f"{v:>9.4f}" for k, v in scores.items())
        )
        rows.append({"photo": rainy_path.name, "size": size, **scores})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model(parser)
    parser.add_argument("--sizes", nargs="+", default=["512", "1024", "2048", "2000x3000"], help="N or HxW")
    parser.add_argument("--tiles", type=int, nargs="+", default=[256, 512], help="tile sizes to measure")
    parser.add_argument("--whole-max", type=int, default=1024, help="run whole images for sides up to this")
    parser.add_argument("--one-piece", action="store_true", help="also run the executor with one tile per level")
    parser.add_argument("--pairs", metavar="DIR", help="also score DIR/input against DIR/target, whole and tiled")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="fp32")
    parser.add_argument("--image", help="photo to resize (default: a Rain200H test image)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--child-size", help=argparse.SUPPRESS)
    parser.add_argument("--child-tile", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_size:
        measure_one(args)
        return
    what = args.weights or f"{args.variant}, random weights"
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else platform.machine()
    print(
        f"# {what}; {args.device} ({device}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads), {args.precision}"
    )
    argv = [a for a in sys.argv[1:] if a != "--one-piece"]
    report = {"sizes": sizes_table(args, argv) if args.sizes else []}
    if args.pairs:
        report["pairs"] = pairs_table(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
