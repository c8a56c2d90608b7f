"""Time and peak memory of tiled inference by image size, and how far tiled outputs are from untiled ones.

    python scripts/bench_tiling.py                                   # full model, random weights, the README table
    python scripts/bench_tiling.py --weights pretrained/Rain200H.pth --sizes 512 1024 --tiles 256 512
    python scripts/bench_tiling.py --dim 8 --num-blocks 1 1 1 1 --sizes 64 96x80 --tiles 32 --overlap 8  # quick

Each measurement runs in a fresh process, so its peak resident memory (Linux ``VmHWM``; on CUDA,
``torch.cuda.max_memory_allocated``) is its own. The input is a rainy test photo (tests/data/metric_images)
resized to each size, or ``--image``. "untiled" rows run the whole image at once, for sizes up to
``--untiled-max``; tiled rows of those sizes also report the largest and the mean absolute difference from the
untiled output in uint8 levels. DRSformer's channel attention and MEFC pooling are global over what they see,
so with any weights tiled and untiled outputs differ somewhat; random weights say little about the size of that
difference for trained ones, so pass ``--weights`` for the number that matters.
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

from drsformer.cli import add_model_arguments, model_from_args, parse_size
from drsformer.data.io import read_image
from drsformer.inference import PRECISIONS, count_tiles, image_to_tensor, restore, tensor_to_image

PHOTO = Path(__file__).resolve().parents[1] / "tests" / "data" / "metric_images" / "rain200h_1_rainy.png"


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    try:  # writing 5 resets the peak resident set size (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # then the peak also covers building the model and the input


def make_input(size: tuple[int, int], image: str | None) -> np.ndarray:
    """The test photo (or ``image``) resized to ``size`` = (H, W) with bicubic interpolation, uint8 RGB."""
    photo = read_image(image or PHOTO)
    if photo.dtype != np.uint8:
        photo = (photo // 257).astype(np.uint8)
    return cv2.resize(photo, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)


def measure_one(args: argparse.Namespace) -> None:
    """Child process: one size and tile; prints a JSON line and saves the uint8 output to ``args.child_out``."""
    size, tile = parse_size(args.child_size), args.child_tile
    torch.manual_seed(args.seed)  # every child builds the same random weights
    model, _ = model_from_args(args)
    device = torch.device(args.device)
    model = model.eval().to(device)
    image = image_to_tensor(make_input(size, args.image))
    base = _status_mb("VmRSS")
    _reset_peak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = restore(model, image, args.precision, tile=tile or None, tile_overlap=args.overlap, batch=args.batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _status_mb("VmHWM")
    np.save(args.child_out, tensor_to_image(out))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--sizes", nargs="+", default=["512", "1024", "2048", "2000x3000"], help="N or HxW")
    parser.add_argument("--tiles", type=int, nargs="+", default=[256], help="tile sizes to measure")
    parser.add_argument("--overlap", type=int, default=32, help="tile overlap")
    parser.add_argument("--batch", type=int, default=1, help="tiles per forward pass")
    parser.add_argument("--untiled-max", type=int, default=1024, help="run untiled for sizes up to this side")
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

    argv = list(sys.argv[1:])
    what = args.weights or f"{args.variant}, random weights"
    print(
        f"# {what}; {args.device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads), {args.precision}, overlap {args.overlap}, "
        f"batch {args.batch}"
    )
    header = f"{'size (HxW)':>11} {'tile':>8} {'tiles':>6} {'seconds':>9} {'s/MP':>7} {'peak MB':>8} {'base MB':>8}"
    print(header + f" {'max diff':>9} {'mean diff':>10}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for text in args.sizes:
            h, w = parse_size(text)
            label = f"{h}x{w}"
            untiled = None
            runs = ([0] if max(h, w) <= args.untiled_max else []) + list(args.tiles)
            for tile in runs:
                out = Path(tmp) / f"{label}_{tile}.npy"
                result = run_child(argv, label, tile, out)
                row = {
                    "size": label,
                    "tile": tile or None,
                    "tiles": count_tiles(h, w, tile, args.overlap) if tile else 1,
                }
                row.update(result)
                if "error" not in result:
                    output = np.load(out).astype(np.int16)
                    if tile == 0:
                        untiled = output
                    elif untiled is not None:
                        diff = np.abs(output - untiled)
                        row.update(max_diff=int(diff.max()), mean_diff=float(diff.mean()))
                    out.unlink()
                rows.append(row)
                print(format_row(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def format_row(row: dict) -> str:
    tile = "untiled" if row["tile"] is None else str(row["tile"])
    start = f"{row['size']:>11} {tile:>8} {row['tiles']:>6}"
    if "error" in row:
        return f"{start} failed: {row['error']}"
    h, w = parse_size(row["size"])
    per_mp = row["seconds"] / (h * w / 1e6)
    text = f"{start} {row['seconds']:>9.2f} {per_mp:>7.2f} {row['peak_mb']:>8.0f} {row['base_mb']:>8.0f}"
    if "max_diff" in row:
        text += f" {row['max_diff']:>9d} {row['mean_diff']:>10.3f}"
    return text


if __name__ == "__main__":
    main()
