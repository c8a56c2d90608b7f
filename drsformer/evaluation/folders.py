"""Scoring folders of images (what ``drsformer evaluate`` runs): PSNR/SSIM of restored images against ground truth
under a protocol, or the no-reference NIQE/BRISQUE of real rain, which has no ground truth. Several processes
share the images; the result is one :class:`~drsformer.evaluation.scores.SetScores`."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .. import benchmarks
from ..data.io import ImageReadError, list_images, match_files, read_image, to_uint8
from ..errors import EvaluationError, MissingPathError, PairingError
from ..files import write_bytes_atomic
from ..metrics import noref
from .scores import FULL_REFERENCE, NO_REFERENCE, SetScores, score_image

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


def _read(path: Path) -> Any:
    try:
        return to_uint8(read_image(path))
    except ImageReadError as err:
        raise EvaluationError(str(err)) from None


def score_pair(pair: tuple[Path, Path], protocol: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """``{"name", "psnr", "ssim", ...}`` of one restored/ground-truth file pair, plus the no-reference ``extra``
    metrics of the restored image; errors name the files."""
    restored_path, gt_path = pair
    restored, gt = _read(restored_path), _read(gt_path)
    if restored.shape != gt.shape:
        raise EvaluationError(
            f"size mismatch: {restored_path} is {restored.shape[1]}x{restored.shape[0]} but "
            f"{gt_path} is {gt.shape[1]}x{gt.shape[0]} (width x height)"
        )
    return {"name": restored_path.name, **score_image(restored, gt, protocol, extra=extra, name=str(restored_path))}


def score_file(path: str | os.PathLike, metrics: tuple[str, ...] = noref.NOREF_METRICS) -> dict[str, Any]:
    """``{"name", metric: value, ...}``: no-reference scores of one image file (read as 8-bit RGB, as pyiqa reads
    files); errors name the file."""
    path = Path(path)
    return {"name": path.name, **score_image(_read(path), None, NO_REFERENCE, extra=metrics, name=str(path))}


def _score_job(job: tuple[tuple[Path, Path], str, tuple[str, ...]]) -> dict[str, Any]:
    return score_pair(*job)


def _noref_job(job: tuple[Path, tuple[str, ...]]) -> dict[str, Any]:
    """Like :func:`score_file`, but a bad image becomes ``{"name", "error"}`` so that the others go on."""
    path, metrics = job
    try:
        return score_file(path, metrics)
    except EvaluationError as err:
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


def evaluate_folders(
    restored_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    protocol: str,
    pair_by: str = "stem",
    workers: int | None = None,
    progress: bool = True,
    dataset: str | None = None,
    extra: tuple[str, ...] = (),
) -> SetScores:
    """Scores every pair with several processes (``workers``; default: all cores, at most 8); ``extra`` adds
    no-reference metrics of the restored images. Any image that cannot be scored stops it with an error."""
    benchmarks.check_protocol(protocol, "protocol")
    extra = check_metrics(extra, gt=True)
    jobs = [(pair, protocol, extra) for pair in pair_files(restored_dir, gt_dir, pair_by)]
    scores, start = SetScores(dataset or "images", protocol, FULL_REFERENCE + extra), time.perf_counter()
    for entry in parallel_map(_score_job, jobs, workers, progress):
        scores.add(entry.pop("name"), entry)
    scores.seconds = time.perf_counter() - start
    return scores


def evaluate_folder_noref(
    folder: str | os.PathLike,
    metrics: tuple[str, ...] = noref.NOREF_METRICS,
    workers: int | None = None,
    progress: bool = True,
) -> SetScores:
    """No-reference scores of every image in ``folder`` with several processes (``workers``; default: all cores,
    at most 8). An image that cannot be read or scored is skipped and recorded in ``failed`` with the reason."""
    metrics = check_metrics(metrics, gt=False)
    if not metrics:
        raise EvaluationError(f"no metric to compute; choose from {', '.join(noref.NOREF_METRICS)}")
    jobs = [(path, metrics) for path in _images(folder, "restored")]
    scores, start = SetScores(str(folder), NO_REFERENCE, metrics), time.perf_counter()
    for entry in parallel_map(_noref_job, jobs, workers, progress, chunksize=1):
        name = entry.pop("name")
        if "error" in entry:
            scores.fail(name, entry["error"])
        else:
            scores.add(name, entry)
    scores.seconds = time.perf_counter() - start
    return scores


def write_json(scores: SetScores, path: str | os.PathLike) -> None:
    write_bytes_atomic(path, json.dumps(scores.to_dict(), indent=2).encode())
