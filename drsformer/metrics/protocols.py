"""The scoring protocols by name: PSNR and SSIM of a restored image against its target, as one result type.

``restormer`` and ``rcdnet`` are the two MATLAB scripts behind the paper's tables (:mod:`.matlab`); ``skimage``
is what many Python-only papers report (:mod:`.skimage_protocol`). :mod:`drsformer.benchmarks` says which one
scores which set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..benchmarks import PROTOCOLS
from .matlab import rcdnet_scores, restormer_scores
from .skimage_protocol import skimage_scores

SCORERS: dict[str, Callable[[np.ndarray, np.ndarray], tuple[float, float]]] = {
    "restormer": restormer_scores,
    "rcdnet": rcdnet_scores,
    "skimage": skimage_scores,
}
assert tuple(SCORERS) == PROTOCOLS


@dataclass(frozen=True)
class Score:
    psnr: float
    ssim: float


def evaluate_pair(restored: np.ndarray, target: np.ndarray, protocol: str) -> Score:
    """PSNR (dB) and SSIM of two uint8 RGB images (or 2-D grayscale) under ``protocol``."""
    if restored.shape != target.shape:
        raise ValueError(f"images differ in size: {restored.shape} vs {target.shape}")
    if protocol not in SCORERS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    return Score(*SCORERS[protocol](restored, target))
