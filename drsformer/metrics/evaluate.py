"""Folder-against-folder evaluation with either MATLAB protocol or skimage's (the ``evaluate`` subcommand)."""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .. import benchmarks
from ..data.io import ImageReadError, list_images, match_files, read_image, to_uint8
from ..errors import EvaluationError, MissingPathError, PairingError
from .matlab import PROTOCOLS, evaluate_pair


def _images(folder: str | os.PathLike, role: str) -> list[Path]:
    try:
        files = list_images(folder)
    except MissingPathError:
        raise EvaluationError(f"{role} folder {folder} does not exist") from None
    if not files:
        raise EvaluationError(f"{role} folder {folder} holds no images")
    return files


def matlab_dir_order(files: list[Path]) -> list[Path]:
    """The order of ``[dir('*.jpg'); dir('*.png')]`` in the scripts: JPEGs, then PNGs, each sorted by name."""
    jpgs = sorted((p for p in files if p.suffix.lower() == ".jpg"), key=lambda p: p.name)
    pngs = sorted((p for p in files if p.suffix.lower() == ".png"), key=lambda p: p.name)
    return jpgs + pngs


def pair_files(
    restored_dir: str | os.PathLike, gt_dir: str | os.PathLike, pair_by: str = "stem"
) -> list[tuple[Path, Path]]:
    """Restored/ground-truth pairs: by file name stem, or (``sorted``) by position as the MATLAB scripts do."""
    restored, gt = _images(restored_dir, "restored"), _images(gt_dir, "ground-truth")
    if pair_by == "sorted":
        restored, gt = matlab_dir_order(restored), matlab_dir_order(gt)
        if len(restored) != len(gt):
            raise EvaluationError(
                f"--pair-by sorted needs equal counts: {len(restored)} .jpg/.png images in {restored_dir}, "
                f"{len(gt)} in {gt_dir}"
            )
        return list(zip(restored, gt, strict=True))
    if pair_by != "stem":
        raise EvaluationError(f"unknown pairing {pair_by!r}; choose stem or sorted")
    matching = match_files(restored, gt)
    hint = " (use --pair-by sorted to pair by position)"
    try:
        return matching.check(restored_dir, gt_dir, hint, roles=("restored", "ground-truth"))
    except PairingError as err:
        raise EvaluationError(str(err)) from None


def score_pair(pair: tuple[Path, Path], protocol: str) -> dict[str, Any]:
    """PSNR/SSIM of one pair; errors name both files."""
    restored_path, gt_path = pair
    try:
        restored, gt = to_uint8(read_image(restored_path)), to_uint8(read_image(gt_path))
    except ImageReadError as err:
        raise EvaluationError(str(err)) from None
    if restored.shape != gt.shape:
        raise EvaluationError(
            f"size mismatch: {restored_path} is {restored.shape[1]}x{restored.shape[0]} but "
            f"{gt_path} is {gt.shape[1]}x{gt.shape[0]} (width x height)"
        )
    try:
        score = evaluate_pair(restored, gt, protocol)
    except ValueError as err:
        raise EvaluationError(f"{restored_path}: {err}") from None
    return {"name": restored_path.name, "psnr": score.psnr, "ssim": score.ssim}


def _score_job(job: tuple[tuple[Path, Path], str]) -> dict[str, Any]:
    return score_pair(*job)


@dataclass
class EvaluationReport:
    protocol: str
    images: list[dict[str, Any]] = field(default_factory=list)
    dataset: str | None = None

    @property
    def count(self) -> int:
        return len(self.images)

    @property
    def psnr(self) -> float:
        return math.fsum(i["psnr"] for i in self.images) / self.count

    @property
    def ssim(self) -> float:
        return math.fsum(i["ssim"] for i in self.images) / self.count

    def to_dict(self) -> dict[str, Any]:
        out = {"protocol": self.protocol, "count": self.count, "psnr": self.psnr, "ssim": self.ssim}
        if self.dataset:
            out["dataset"] = self.dataset
        out["images"] = self.images
        return out

    def summary(self) -> str:
        label = self.dataset or "images"
        return f"{label}: {self.count} pairs, {self.protocol} protocol: PSNR {self.psnr:.4f} dB, SSIM {self.ssim:.6f}"


def evaluate_folders(
    restored_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    protocol: str,
    pair_by: str = "stem",
    workers: int | None = None,
    progress: bool = True,
    dataset: str | None = None,
) -> EvaluationReport:
    """Scores every pair with several processes (``workers``; default: all cores, at most 8)."""
    if protocol not in PROTOCOLS:
        raise EvaluationError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    pairs = pair_files(restored_dir, gt_dir, pair_by)
    workers = workers or min(8, os.cpu_count() or 1)
    jobs = [(pair, protocol) for pair in pairs]
    bar = dict(total=len(jobs), desc="evaluating", unit="img", disable=not progress)
    if workers <= 1 or len(jobs) < 4:
        images = [score_pair(*job) for job in tqdm(jobs, **bar)]
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            images = list(tqdm(pool.imap(_score_job, jobs, chunksize=4), **bar))
    return EvaluationReport(protocol, images, dataset)


def write_json(report: EvaluationReport, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report.to_dict(), indent=2))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--restored", required=True, help="folder of restored (derained) images")
    parser.add_argument("--gt", required=True, help="folder of ground-truth images")
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


def run(args: argparse.Namespace) -> int:
    bench = benchmarks.get(args.dataset, "--dataset") if args.dataset else None
    protocol = args.protocol or (bench.protocol if bench else None)
    if protocol is None:
        raise EvaluationError(
            "choose --protocol restormer|rcdnet|skimage, or --dataset to use the paper's protocol for it"
        )
    if bench and args.protocol and args.protocol != bench.protocol:
        print(
            f"note: the paper evaluates {bench.title} with the {bench.protocol} protocol; "
            f"using {args.protocol} as asked",
            file=sys.stderr,
        )
    name = bench.name if bench else None
    report = evaluate_folders(args.restored, args.gt, protocol, args.pair_by, args.workers, not args.quiet, name)
    print(report.summary())
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0
