"""``drsformer test``: restore benchmark test sets, save the results and print the paper's table.

    drsformer test -opt options/test/Rain200H.yml
    drsformer test --weights W --data Rain200H=datasets/Rain200H/test --data DID=datasets/DID/test
    python -m drsformer.test -opt options/test/all.yml

Arguments -> :func:`drsformer.config.testing.plan_sets` -> :func:`drsformer.evaluation.testing.run_tests` -> the
tables. A set without ``target/`` (real rain) is scored with NIQE and BRISQUE of input and output.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .benchmarks import PROTOCOLS
from .commands.args import add_device, add_precision, add_weights_key
from .commands.running import module_main
from .config.testing import FLAG_SETTINGS, plan_sets
from .evaluation.report import SCORES_FILE
from .evaluation.testing import TestRun, run_tests
from .memory import prepare_host_memory

DESCRIPTION = (
    "restore benchmark test sets, save the results and print PSNR/SSIM beside the paper's (NIQE/BRISQUE of "
    "input and output for real rain without target/)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-opt", "--opt", metavar="FILE", help="test options file (options/test/*.yml)")
    parser.add_argument("--weights", help="checkpoint for every dataset (overrides the options file)")
    add_weights_key(parser)
    parser.add_argument(
        "--data",
        action="append",
        metavar="NAME=DIR",
        help="a test set: DIR holds input/ and target/, NAME picks the protocol; without target/ (real rain) its "
        "input/ or its images are scored with NIQE/BRISQUE (repeatable)",
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=None,
        help="score every set with this protocol (default: the paper's for each benchmark; "
        "skimage: skimage.metrics on float Y, as many Python-only papers report)",
    )
    parser.add_argument("--out", default=None, help="folder for the restored images, one subfolder per set (results)")
    parser.add_argument("--json", metavar="FILE", default=None, help="write per-image and mean scores as JSON")
    add_device(parser)
    add_precision(parser, default=None)
    parser.add_argument(
        "--tile", type=int, default=None,
        help="tile size in pixels (default: whole images); tiles are exact, so the scores do not change",
    )  # fmt: skip
    parser.add_argument(
        "--self-ensemble", action="store_true", default=None, help="average the 8 flips and rotations (8x slower)"
    )
    parser.add_argument(
        "--report", action="store_true", default=None,
        help="also write <out>/<NAME>/report.html: one page per set, every image as rainy | derained | ground "
        "truth with its scores, worst first (thumbnails in <out>/<NAME>/thumbs/)",
    )  # fmt: skip
    parser.add_argument(
        "--compare-to", metavar="DIR", default=None,
        help="the --out folder of another test run: the report adds its derained image and the per-image "
        f"difference, worst first (implies --report). Scores come from DIR/<NAME>/{SCORES_FILE}, which "
        "every run writes, when it used the same protocol; otherwise DIR/<NAME>/<stem>.png are scored",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    prepare_host_memory(inference=True)
    flags = {key: getattr(args, key) for key in FLAG_SETTINGS}
    sets, settings = plan_sets(args.opt, flags, args.data)
    return run_tests(TestRun.from_settings(sets, settings, progress=not args.quiet))


def main(argv: Sequence[str] | None = None) -> int:
    return module_main("test", "python -m drsformer.test", DESCRIPTION, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
