"""``drsformer demo``: make rainy photos, train a small DRSformer on them for a few minutes, and show the result
(see :mod:`drsformer.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..demo.run import DemoSettings, run_demo
from ..devices import resolve_device
from ..memory import prepare_host_memory
from .args import add_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_output", help="folder for everything the demo writes (demo_output)")
    parser.add_argument("--minutes", type=float, default=5.0, help="training time budget (default 5)")
    add_device(parser, default="cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rain and the training run")
    parser.add_argument("--size", type=int, default=256, help="short side of the demo photos in pixels (256)")
    parser.add_argument("--max-iterations", type=int, default=None, help="stop after this many iterations too")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    prepare_host_memory(inference=False)  # it trains
    device = str(resolve_device(args.device))
    settings = DemoSettings(
        Path(args.out), args.minutes, device, args.seed, args.size, args.max_iterations, not args.no_progress
    )
    run_demo(settings.check())
    return 0
