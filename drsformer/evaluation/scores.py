"""Scoring a set of images: the one function that scores a restored image, and the one result type of a set.

:func:`score_image` scores one restored 8-bit image: PSNR and SSIM against its target under a protocol
(:func:`drsformer.metrics.evaluate_pair`), with the rainy input's own scores beside them when it is given, or
NIQE and BRISQUE of input and output when there is no target. :class:`SetScores` gathers a set's images (or,
in validation, the sums that several processes added up) and gives the means, a summary line and the JSON.
``drsformer test``, ``drsformer evaluate``, validation during training, the demo and the benchmark scripts all
report through it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import EvaluationError
from ..metrics import evaluate_pair, noref

FULL_REFERENCE = ("psnr", "ssim")
NO_REFERENCE = "no-reference"  # the protocol of a set without ground truth, in the JSON
# A set without ground truth: each no-reference metric of the rainy input, then of the restored output.
NOREF_KEYS = tuple(f"{side}{m}" for m in noref.NOREF_METRICS for side in ("rainy_", ""))


def score_image(
    restored: np.ndarray,
    target: np.ndarray | None,
    protocol: str,
    rainy: np.ndarray | None = None,
    extra: tuple[str, ...] = (),
    name: str = "image",
) -> dict[str, float]:
    """The scores of one restored uint8 image (errors name ``name``):

    - with a ``target``: ``psnr`` and ``ssim`` under ``protocol``, ``rainy_psnr`` and ``rainy_ssim`` of the
      ``rainy`` input when given (what the model gained), and the no-reference ``extra`` metrics of the
      restored image;
    - without: NIQE and BRISQUE of the ``rainy`` input and of the restored image (:data:`NOREF_KEYS`).
    """
    try:
        if target is None:
            if rainy is None:
                return noref.score(restored, extra or noref.NOREF_METRICS)
            scores = {f"rainy_{k}": v for k, v in noref.score(rainy).items()} | noref.score(restored)
            return {key: scores[key] for key in NOREF_KEYS}
        if restored.shape != target.shape:
            raise EvaluationError(
                f"size mismatch: {restored.shape[1]}x{restored.shape[0]} against a target of "
                f"{target.shape[1]}x{target.shape[0]} (width x height)"
            )
        score = evaluate_pair(restored, target, protocol)
        out = {"psnr": score.psnr, "ssim": score.ssim}
        if rainy is not None:
            before = evaluate_pair(rainy, target, protocol)
            out.update(rainy_psnr=before.psnr, rainy_ssim=before.ssim)
        if extra:
            out.update(noref.score(restored, extra))
        return out
    except (EvaluationError, ValueError) as err:
        raise EvaluationError(f"{name}: {err}") from None


@dataclass
class SetScores:
    """A set's scores under one protocol (:data:`NO_REFERENCE` without ground truth).

    ``images`` holds one entry per scored image (``{"name": ..., metric: value}``); ``failed`` the images that
    could not be scored, with why. Means come from ``sums`` and ``count``, which :meth:`add` keeps up to date
    and which validation fills from scores summed over processes, without per-image entries.
    """

    name: str
    protocol: str
    metrics: tuple[str, ...] = FULL_REFERENCE  # the columns, in order
    images: list[dict[str, Any]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)  # what the JSON adds: weights, folder, the paper's numbers

    def add(self, name: str, scores: dict[str, float]) -> None:
        self.images.append({"name": name, **scores})
        for key, value in scores.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def fail(self, name: str, reason: str) -> None:
        self.failed.append((name, reason))

    def mean(self, key: str) -> float | None:
        """The mean of ``key`` over the scored images; None when none was scored."""
        if not self.count or key not in self.sums:
            return None
        if self.images:  # exact summation of the per-image values
            return math.fsum(image[key] for image in self.images) / self.count
        return self.sums[key] / self.count

    @property
    def targetless(self) -> bool:
        return self.protocol == NO_REFERENCE

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "protocol": self.protocol, "metrics": list(self.metrics)}
        out["count"] = self.count
        out.update({key: self.mean(key) for key in self.metrics})
        out["seconds"] = self.seconds
        out.update(self.info)
        out["failed"] = [{"name": name, "error": reason} for name, reason in self.failed]
        out["images"] = self.images
        return out

    def summary(self) -> str:
        """One line: ``NAME: N pairs, P protocol: PSNR x dB, SSIM y`` (and any extra metric), or for a set without
        ground truth ``NAME: N images: NIQE a, BRISQUE b (lower is better)``."""
        skipped = f" ({len(self.failed)} skipped)" if self.failed else ""

        def shown(key: str, digits: int) -> str:
            value = self.mean(key)
            return "-" if value is None else f"{value:.{digits}f}"

        if self.targetless or not set(FULL_REFERENCE) <= set(self.metrics):
            means = ", ".join(f"{key.upper()} {shown(key, 4)}" for key in self.metrics)
            return f"{self.name}: {self.count} images{skipped}: {means} (lower is better)"
        extra = [key for key in self.metrics if key not in FULL_REFERENCE]
        tail = "".join(f", {key.upper()} {shown(key, 4)}" for key in extra)
        note = " (NIQE, BRISQUE: lower is better)" if extra else ""
        return (
            f"{self.name}: {self.count} pairs{skipped}, {self.protocol} protocol: PSNR {shown('psnr', 4)} dB, "
            f"SSIM {shown('ssim', 6)}{tail}{note}"
        )
