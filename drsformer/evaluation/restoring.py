"""Restoring a test set with a model, saving each result and scoring it: ``drsformer test`` and the demo.

Every input is restored as the authors' test script does (reflect-pad to a multiple of 8, run, clamp to [0, 1],
crop, round to uint8), saved losslessly as ``<out>/<input stem>.png`` and scored from the same uint8 array, so
``drsformer evaluate`` on the saved folder gives the same numbers. An unreadable image is recorded by name and
the others go on.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..config.testing import TestSet
from ..data.io import read_image, to_uint8, write_image
from ..errors import EvaluationError, ImageReadError, ImageWriteError
from ..inference import InferenceSettings, image_to_tensor, restore_or_explain, tensor_to_image
from .scores import FULL_REFERENCE, NO_REFERENCE, NOREF_KEYS, SetScores, score_image

RAINY_KEYS = ("rainy_psnr", "rainy_ssim")


def restore_set(
    test_set: TestSet,
    model: nn.Module,
    out_dir: Path,
    settings: InferenceSettings,
    device: str | torch.device,
    progress: bool = True,
) -> SetScores:
    """Restores, saves and scores every pair of ``test_set`` (checked by
    :func:`~drsformer.evaluation.sets.check_folders`); unreadable images are recorded in ``failed``."""
    if test_set.targetless:
        scores = SetScores(test_set.name, NO_REFERENCE, NOREF_KEYS)
    else:
        assert test_set.protocol is not None
        scores = SetScores(test_set.name, test_set.protocol, FULL_REFERENCE + RAINY_KEYS)
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    for input_path, target_path in tqdm(test_set.pairs, desc=test_set.name, unit="img", disable=not progress):
        try:
            rainy = read_image(input_path)
            target = None if target_path is None else to_uint8(read_image(target_path))
            if target is not None and rainy.shape[:2] != target.shape[:2]:
                raise EvaluationError(
                    f"size mismatch: {input_path} is {rainy.shape[1]}x{rainy.shape[0]} but {target_path} is "
                    f"{target.shape[1]}x{target.shape[0]} (width x height)"
                )
            tensor = image_to_tensor(rainy).to(device)
            where = f"{test_set.name}/{input_path.name}"
            restored = tensor_to_image(restore_or_explain(model, tensor, settings, where))
            write_image(out_dir / f"{input_path.stem}.png", restored)  # kept even if it cannot be scored
            entry = score_image(restored, target, scores.protocol, to_uint8(rainy), name=str(input_path))
        except (ImageReadError, ImageWriteError, EvaluationError) as err:
            scores.fail(input_path.name, str(err))
            tqdm.write(f"skipped {input_path.name}: {err}", file=sys.stderr)
            continue
        scores.add(f"{input_path.stem}.png", entry)
    scores.seconds = time.perf_counter() - start
    scores.info = {"weights": test_set.weights, "folder": str(test_set.root)}
    bench = test_set.benchmark
    if bench is not None and bench.protocol == test_set.protocol:
        scores.info.update(paper_psnr=bench.paper_psnr, paper_ssim=bench.paper_ssim)
    return scores
