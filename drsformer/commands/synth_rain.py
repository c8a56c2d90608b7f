"""``drsformer synth-rain``: rainy/clean training pairs from a folder of clean photos (see
:mod:`drsformer.data.synth_rain`)."""

from __future__ import annotations

import argparse

from ..data.synth_rain import BLENDS, DENSITIES, synthesize_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``drsformer synth-rain``."""
    parser.add_argument("--clean", required=True, metavar="DIR", help="folder of clean images")
    parser.add_argument("--out", required=True, metavar="DIR", help="writes DIR/input (rainy) and DIR/target (clean)")
    parser.add_argument("--density", choices=list(DENSITIES), default="medium")
    parser.add_argument("--angle", type=float, metavar="DEG", help="degrees from vertical (default: random -30..30)")
    parser.add_argument("--length", type=float, metavar="PX", help="streak length (default: 4-9%% of shorter side)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--blend", choices=BLENDS, default="screen")
    parser.add_argument("--haze", type=float, metavar="F", help="veil strength 0..1 (default: by density)")
    parser.add_argument("--per-image", type=int, default=1, metavar="N", help="rainy versions of each image")


def run(args: argparse.Namespace) -> int:
    """Runs ``synth-rain`` from parsed arguments; prints a one-line summary and returns 0."""
    count = synthesize_folder(
        args.clean,
        args.out,
        density=args.density,
        angle=args.angle,
        length=args.length,
        seed=args.seed,
        blend=args.blend,
        haze=args.haze,
        per_image=args.per_image,
    )
    print(f"wrote {count} {args.density} rain pairs to {args.out}/input and {args.out}/target")
    return 0
