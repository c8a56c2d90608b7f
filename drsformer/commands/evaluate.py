"""``drsformer evaluate``: Y-channel PSNR/SSIM of restored images as the paper's MATLAB scripts compute them, or
NIQE/BRISQUE of real rain without ground truth (see :mod:`drsformer.evaluation.folders`)."""

from __future__ import annotations

import argparse
import sys

from .. import benchmarks
from ..benchmarks import PROTOCOLS
from ..data.io import name_list
from ..errors import EvaluationError
from ..evaluation.folders import evaluate_folder_noref, evaluate_folders, write_json
from ..metrics import noref


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--restored", required=True, help="folder of restored (derained) images")
    parser.add_argument(
        "--gt", help="folder of ground-truth images (for PSNR/SSIM); without it NIQE and BRISQUE are computed"
    )
    parser.add_argument(
        "--metrics",
        type=lambda text: [m.strip().lower() for m in text.split(",") if m.strip()],
        default=None,
        help="no-reference metrics, comma-separated: niqe,brisque (the default without --gt; with --gt they are "
        "added beside PSNR/SSIM). pyiqa's definitions, as the DRSformer authors score real rain; lower is better",
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="restormer: uint8 Y, 2003 SSIM (Rain200L/H, SPA); rcdnet: float Y, 2009 SSIM (DID, DDN); "
        "skimage: skimage.metrics on float Y (what many Python-only papers report)",
    )
    parser.add_argument("--dataset", help=f"{benchmarks.choices()}: picks the paper's protocol for it")
    parser.add_argument(
        "--pair-by",
        choices=["stem", "sorted"],
        default="stem",
        help="stem: match file names; sorted: pair by position like the MATLAB scripts",
    )
    parser.add_argument("--workers", type=int, default=None, help="processes (default: cores, at most 8)")
    parser.add_argument("--json", metavar="FILE", help="write per-image and mean scores as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_noref(args: argparse.Namespace) -> int:
    """``evaluate`` without ``--gt``: skipped images are reported by name and make the exit status 1."""
    if args.protocol or args.dataset or args.pair_by != "stem":
        raise EvaluationError(
            "--protocol, --dataset and --pair-by choose how PSNR/SSIM compare with --gt; without --gt only the "
            f"no-reference metrics ({', '.join(noref.NOREF_METRICS)}) are computed"
        )
    metrics = tuple(args.metrics) if args.metrics is not None else noref.NOREF_METRICS
    report = evaluate_folder_noref(args.restored, metrics, args.workers, not args.quiet)
    for name, reason in report.failed:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    print(report.summary())
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    if report.failed:
        names = [name for name, _ in report.failed]
        print(f"drsformer evaluate: {len(names)} image(s) could not be scored: {name_list(names)}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    if args.gt is None:
        return run_noref(args)
    bench = benchmarks.get(args.dataset, "--dataset") if args.dataset else None
    protocol = benchmarks.resolve_protocol(args.protocol, [bench.name] if bench else [], "--protocol", "")
    if bench and args.protocol and args.protocol != bench.protocol:
        print(
            f"note: the paper evaluates {bench.title} with the {bench.protocol} protocol; "
            f"using {args.protocol} as asked",
            file=sys.stderr,
        )
    name = bench.name if bench else None
    extra = tuple(args.metrics or ())
    report = evaluate_folders(args.restored, args.gt, protocol, args.pair_by, args.workers, not args.quiet, name, extra)
    print(report.summary())
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0
