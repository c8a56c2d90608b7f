"""``drsformer prepare``: a benchmark's original release, turned into ``train|test/{input,target}`` (see
:mod:`drsformer.data.prepare`)."""

from __future__ import annotations

import argparse
import os
import sys

from .. import benchmarks
from ..data.prepare import SPLITS, prepare_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``drsformer prepare``: NAME, --src, --dst, --train-dir, --test-dir, --copy, --overwrite, ..."""
    parser.add_argument("name", metavar="NAME", help=f"benchmark: {benchmarks.choices()}; case-insensitive")
    parser.add_argument("--src", required=True, metavar="RAW", help="folder holding the release as unpacked")
    parser.add_argument("--dst", metavar="DIR", help="output folder (default: datasets/NAME)")
    for split in SPLITS:
        parser.add_argument(
            f"--{split}-dir",
            metavar="DIR",
            help=f"the release's {split} folder, used as given instead of searching --src for it",
        )
    parser.add_argument("--copy", action="store_true", help="copy files instead of hard-linking them")
    parser.add_argument("--overwrite", action="store_true", help="replace entries in a non-empty destination")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Runs ``drsformer prepare`` and prints the report; returns 0 when every split is ok, else 1."""
    dst = args.dst or os.path.join("datasets", benchmarks.get(args.name).name)
    report = prepare_dataset(
        args.name,
        args.src,
        dst,
        copy=args.copy,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        train_dir=args.train_dir,
        test_dir=args.test_dir,
    )
    print(report.format())
    if report.ok:
        return 0
    bad = ", ".join(f"{r.split} ({r.status})" for r in report.splits.values() if not r.ok)
    print(f"drsformer prepare: check {bad}: see the notes above", file=sys.stderr)
    return 1
