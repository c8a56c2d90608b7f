"""Folder evaluation (the ``evaluate`` subcommand): PSNR/SSIM against ground truth with either MATLAB protocol or
skimage's, and the no-reference NIQE/BRISQUE of real rain, which has no ground truth."""

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
from ..benchmarks import PROTOCOLS
from ..data.io import ImageReadError, list_images, match_files, name_list, read_image, to_uint8
from ..errors import DrsformerError, EvaluationError, MissingPathError, PairingError
from . import noref
from .protocols import evaluate_pair

FULL_REFERENCE = ("psnr", "ssim")
METRICS = FULL_REFERENCE + noref.NOREF_METRICS


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


def score_image(path: str | os.PathLike, metrics: tuple[str, ...] = noref.NOREF_METRICS) -> dict[str, Any]:
    """``{"name": file name, metric: value, ...}``: no-reference scores of one image file (read as 8-bit RGB, as
    pyiqa reads files); errors name the file."""
    path = Path(path)
    try:
        image = to_uint8(read_image(path))
    except ImageReadError as err:
        raise EvaluationError(str(err)) from None
    return {"name": path.name, **_noref_scores(image, metrics, path)}


def _noref_scores(image: Any, metrics: tuple[str, ...], path: Path) -> dict[str, float]:
    try:
        return noref.score(image, metrics)
    except EvaluationError as err:
        raise EvaluationError(f"{path}: {err}") from None


def score_pair(pair: tuple[Path, Path], protocol: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """PSNR/SSIM of one pair, plus the no-reference ``extra`` metrics of the restored image; errors name the files."""
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
    return {
        "name": restored_path.name,
        "psnr": score.psnr,
        "ssim": score.ssim,
        **_noref_scores(restored, extra, restored_path),
    }


def _score_job(job: tuple[tuple[Path, Path], str, tuple[str, ...]]) -> dict[str, Any]:
    return score_pair(*job)


def _noref_job(job: tuple[Path, tuple[str, ...]]) -> dict[str, Any]:
    """Like :func:`score_image`, but a bad image becomes ``{"name", "error"}`` so that the others go on."""
    path, metrics = job
    try:
        return score_image(path, metrics)
    except DrsformerError as err:
        return {"name": path.name, "error": str(err)}


def _one_thread() -> None:
    """Worker start-up: one thread per process for OpenCV and torch, since the processes share the cores."""
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def parallel_map(fn: Any, jobs: list[Any], workers: int | None, progress: bool, chunksize: int = 4) -> list[Any]:
    """``[fn(job) for job in jobs]`` in order, over ``workers`` spawned processes (default: all cores, at most 8)
    when there are enough jobs; ``fn`` must be a module-level function."""
    workers = workers or min(8, os.cpu_count() or 1)
    bar = dict(total=len(jobs), desc="evaluating", unit="img", disable=not progress)
    if workers <= 1 or len(jobs) < 4:
        return [fn(job) for job in tqdm(jobs, **bar)]
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_one_thread) as pool:
        return list(tqdm(pool.imap(fn, jobs, chunksize=chunksize), **bar))


def _mean(images: list[dict[str, Any]], key: str) -> float:
    return math.fsum(i[key] for i in images) / len(images) if images else math.nan


@dataclass
class EvaluationReport:
    protocol: str
    images: list[dict[str, Any]] = field(default_factory=list)
    dataset: str | None = None
    extra: tuple[str, ...] = ()  # no-reference metrics scored beside PSNR/SSIM

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
        out.update({name: _mean(self.images, name) for name in self.extra})
        if self.dataset:
            out["dataset"] = self.dataset
        out["images"] = self.images
        return out

    def summary(self) -> str:
        label = self.dataset or "images"
        extra = "".join(f", {name.upper()} {_mean(self.images, name):.4f}" for name in self.extra)
        return (
            f"{label}: {self.count} pairs, {self.protocol} protocol: PSNR {self.psnr:.4f} dB, SSIM {self.ssim:.6f}"
            f"{extra}" + (" (NIQE, BRISQUE: lower is better)" if self.extra else "")
        )


@dataclass
class NoReferenceReport:
    """No-reference scores of a folder; ``failed`` lists (file name, reason) of the images that were skipped."""

    metrics: tuple[str, ...]
    images: list[dict[str, Any]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    folder: str | None = None

    @property
    def count(self) -> int:
        return len(self.images)

    def mean(self, metric: str) -> float:
        """The mean over the scored images (NaN when none was scored)."""
        return _mean(self.images, metric)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"metrics": list(self.metrics), "count": self.count}
        out.update({name: self.mean(name) for name in self.metrics})
        out["failed"] = [{"name": name, "error": reason} for name, reason in self.failed]
        out["images"] = self.images
        return out

    def summary(self) -> str:
        skipped = f" ({len(self.failed)} skipped)" if self.failed else ""
        means = ", ".join(f"{name.upper()} {self.mean(name):.4f}" for name in self.metrics)
        return f"{self.folder or 'images'}: {self.count} images{skipped}: {means} (lower is better)"


def evaluate_folders(
    restored_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    protocol: str,
    pair_by: str = "stem",
    workers: int | None = None,
    progress: bool = True,
    dataset: str | None = None,
    extra: tuple[str, ...] = (),
) -> EvaluationReport:
    """Scores every pair with several processes (``workers``; default: all cores, at most 8); ``extra`` adds
    no-reference metrics of the restored images. Any image that cannot be scored stops it with an error."""
    benchmarks.check_protocol(protocol, "protocol")
    extra = check_metrics(extra, gt=True)
    jobs = [(pair, protocol, extra) for pair in pair_files(restored_dir, gt_dir, pair_by)]
    return EvaluationReport(protocol, parallel_map(_score_job, jobs, workers, progress), dataset, extra)


def check_metrics(names: tuple[str, ...] | list[str], gt: bool) -> tuple[str, ...]:
    """The no-reference metrics among ``names``, in the order given; unknown names, and PSNR/SSIM without ground
    truth, are errors."""
    for name in names:
        if name not in METRICS:
            raise EvaluationError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
        if name in FULL_REFERENCE and not gt:
            raise EvaluationError(
                f"{name} needs ground truth (--gt); without it choose from {', '.join(noref.NOREF_METRICS)}"
            )
    return tuple(dict.fromkeys(n for n in names if n in noref.NOREF_METRICS))


def evaluate_folder_noref(
    folder: str | os.PathLike,
    metrics: tuple[str, ...] = noref.NOREF_METRICS,
    workers: int | None = None,
    progress: bool = True,
) -> NoReferenceReport:
    """No-reference scores of every image in ``folder`` with several processes (``workers``; default: all cores,
    at most 8). An image that cannot be read or scored is skipped and recorded in ``failed`` with the reason."""
    metrics = check_metrics(metrics, gt=False)
    if not metrics:
        raise EvaluationError(f"no metric to compute; choose from {', '.join(noref.NOREF_METRICS)}")
    jobs = [(path, metrics) for path in _images(folder, "restored")]
    report = NoReferenceReport(metrics, folder=str(folder))
    for entry in parallel_map(_noref_job, jobs, workers, progress, chunksize=1):
        if "error" in entry:
            report.failed.append((entry["name"], entry["error"]))
        else:
            report.images.append(entry)
    return report


def write_json(report: EvaluationReport | NoReferenceReport, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report.to_dict(), indent=2))


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
