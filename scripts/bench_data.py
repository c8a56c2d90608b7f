"""Measures training-data throughput: random pair-crops per second through the real DataLoader pipeline.

    python scripts/bench_data.py                       # 200 Rain200-sized (321x481) PNG pairs, made here
    python scripts/bench_data.py --src datasets/Rain200H/train --workers 4 --crop 128

Without --src, clean images are cut from the photos in tests/data/metric_images (random 321x481 windows,
flips) and given synthetic rain, so the PNGs compress like real benchmark images do.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from drsformer.data.io import list_images, read_image, write_image
from drsformer.data.paired import PairedImageDataset
from drsformer.data.sampler import ProgressiveBatchSampler, Stage
from drsformer.data.synth_rain import add_rain

PHOTOS = Path(__file__).resolve().parents[1] / "tests" / "data" / "metric_images"


def make_pairs(root: Path, count: int, height: int = 321, width: int = 481) -> Path:
    rng = np.random.default_rng(0)
    photos = [read_image(p) for p in list_images(PHOTOS) if p.stem.endswith("_gt")]
    for i in range(count):
        photo = photos[i % len(photos)]
        top = rng.integers(0, max(1, photo.shape[0] - height + 1))
        left = rng.integers(0, max(1, photo.shape[1] - width + 1))
        clean = photo[top : top + height, left : left + width]
        clean = np.ascontiguousarray(clean[:, ::-1] if i % 2 else clean)
        write_image(root / "target" / f"{i}.png", clean)
        write_image(root / "input" / f"{i}.png", add_rain(clean, rng, "heavy"))
    return root


def measure(dataset: PairedImageDataset, workers: int, batch: int, crop: int, seconds: float) -> list[float]:
    """Crops per second over consecutive 1-second windows, after a warm-up of one window."""
    iterations = 10**6
    sampler = ProgressiveBatchSampler(
        DistributedSampler(dataset, num_replicas=1, rank=0), [Stage(iterations, batch, crop)]
    )
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0)
    rates, count, window_start = [], 0, time.perf_counter()
    begin = window_start
    for batch_data in loader:
        count += batch_data["lq"].shape[0]
        now = time.perf_counter()
        if now - window_start >= 1.0:
            rates.append(count / (now - window_start))
            count, window_start = 0, now
            if now - begin >= seconds + 1.0:
                break
    return rates[1:]  # drop the warm-up window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", help="a folder with input/ and target/ (default: make Rain200-sized pairs)")
    parser.add_argument("--pairs", type=int, default=200, help="pairs to make when --src is not given")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.src) if args.src else make_pairs(Path(tmp), args.pairs)
        rows = []
        for cache in (False, True):
            dataset = PairedImageDataset(
                str(root / "input"), str(root / "target"), gt_size=args.crop, geometric_augs=True, cache=cache
            )
            rates = measure(dataset, args.workers, args.batch, args.crop, args.seconds)
            rows.append((cache, statistics.median(rates), min(rates), max(rates)))
        size = "x".join(map(str, read_image(dataset.pairs[0][1]).shape[:2]))
        print(
            f"{len(dataset)} pairs of {size} PNGs, {args.crop}x{args.crop} crops, batch {args.batch}, "
            f"{args.workers} workers, geometric augs on"
        )
        print(f"{'decoded-image cache':<20} {'crops/s (median)':>17} {'min':>7} {'max':>7}")
        for cache, median, low, high in rows:
            print(f"{'on' if cache else 'off':<20} {median:>17.0f} {low:>7.0f} {high:>7.0f}")


if __name__ == "__main__":
    main()
