"""Validation during training: :func:`~drsformer.inference.restore` on each validation set, the metrics under
the set's protocol, split across processes and summed, images and TensorBoard grids; then the best weights so far
and the plateau warning (:class:`Best`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import benchmarks
from ..data.io import write_image
from ..errors import TrainingError
from ..evaluation.scores import SetScores
from ..inference import InferenceSettings, restore_or_explain, tensor_to_image
from ..registry import METRIC_REGISTRY
from . import distributed
from .data import build_dataset, validation_shard
from .distributed import Distributed
from .logger import RunLogger
from .state import Progress, StateKeeper

PLATEAU_DB = 0.01  # improvements smaller than this do not count as progress


@dataclass
class ValSet:
    name: str
    dataset: Any
    protocol: str
    indices: list[int]  # this process's share


def protocol_for(options: dict[str, Any], key: str, section: dict[str, Any]) -> str:
    """The set's protocol by :func:`drsformer.benchmarks.resolve_protocol`: ``val.protocol``, else the benchmark the
    set's name, or its folders, name (``datasets/Rain200H/test/target`` as prepared, or the authors'
    ``Datasets/test/Rain200H/target``)."""
    target = Path(section["dataroot_gt"])
    names = [str(section.get("name") or key), target.parent.name, target.parent.parent.name]
    return benchmarks.resolve_protocol(options["val"]["protocol"], names, "val.protocol", f"datasets.{key}")


def build_val_sets(options: dict[str, Any], dist: Distributed) -> list[ValSet]:
    sets = []
    for key, section in options["datasets"].items():
        if key == "train":
            continue
        dataset = build_dataset(section, f"datasets.{key}")
        name = str(section.get("name") or key)
        sets.append(ValSet(name, dataset, protocol_for(options, key, section), validation_shard(dataset, dist)))
    return sets


class Validator:
    """Runs every validation set through ``restore`` with ``val``'s settings and the run's precision."""

    def __init__(
        self, options: dict[str, Any], dist: Distributed, logger: RunLogger, run_dir: Path, precision: str
    ) -> None:
        self.val = options["val"]
        self.dist, self.logger, self.run_dir = dist, logger, run_dir
        self.settings = InferenceSettings(precision, self.val["tile"] or None, self.val["self_ensemble"])
        self.sets = build_val_sets(options, dist)
        self.metrics = {
            label: METRIC_REGISTRY.build(opt, where=f"val.metrics.{label}")
            for label, opt in self.val["metrics"].items()
        }

    @torch.no_grad()
    def run(self, model: nn.Module, iteration: int) -> dict[str, float]:
        """The mean of each metric over each set (the first set's under the metric's name, the others' with a
        ``_<set>`` suffix); also logged, with grids and (``val.save_img``) images."""
        was_training = model.training
        model.eval()
        results: dict[str, float] = {}
        try:
            for index, vset in enumerate(self.sets):
                means = self._run_set(model, vset, iteration)
                suffix = "" if index == 0 else f"_{vset.name}"
                results.update({f"{label}{suffix}": value for label, value in means.items()})
        finally:
            model.train(was_training)
        return results

    def _run_set(self, model: nn.Module, vset: ValSet, iteration: int) -> dict[str, float]:
        device = self.dist.device
        # The metrics' sums, then the number of images, then the number of processes that failed: one collective.
        sums = torch.zeros(len(self.metrics) + 2, dtype=torch.float64, device=device)
        grids: list[torch.Tensor] = []
        failure: Exception | None = None
        try:
            self._score(model, vset, iteration, sums, grids)
        except Exception as err:  # held until every process knows (a process alone in another collective hangs)
            failure = err
            sums[-1] = 1
        distributed.all_reduce_sum(sums)
        if failure is not None:
            raise failure
        if sums[-1] > 0:
            raise TrainingError(
                f"validation of {vset.name} at iteration {iteration} failed in {int(sums[-1])} other process(es); "
                "their own message says why"
            )
        totals = sums.tolist()
        scores = SetScores(vset.name, vset.protocol, tuple(self.metrics), count=int(totals[-2]))
        scores.sums = dict(zip(self.metrics, totals, strict=False))
        count = max(1, scores.count)
        means = {label: scores.mean(label) or 0.0 for label in self.metrics}
        self.logger.record("val", iteration, {"dataset": vset.name, "protocol": vset.protocol, **means})
        shown = ", ".join(f"{label} {value:.4f}" for label, value in means.items())
        self.logger.info(f"validation {vset.name} ({count} images, {vset.protocol}) at {iteration}: {shown}")
        self._log_grids(vset.name, grids, iteration)
        return means

    def _score(
        self, model: nn.Module, vset: ValSet, iteration: int, sums: torch.Tensor, grids: list[torch.Tensor]
    ) -> None:
        """This process's share of ``vset``: adds each metric and the image count into ``sums``."""
        device = self.dist.device
        for i in vset.indices:
            item = vset.dataset[i]
            lq, gt = item["lq"][None].to(device), item["gt"][None].to(device)
            restored = self._restore(model, lq, vset, item, iteration)
            for j, fn in enumerate(self.metrics.values()):
                sums[j] += fn(restored, gt, vset.protocol).sum().double()
            sums[-2] += 1
            if self.dist.is_main and len(grids) < self.val["grid_images"]:
                grids.append(torch.cat([lq, restored, gt]).clamp(0, 1).cpu())
            if self.val["save_img"]:
                name = Path(item["lq_path"]).stem + ".png"
                write_image(
                    self.run_dir / "visualization" / vset.name / str(iteration) / name, tensor_to_image(restored)
                )

    def _restore(self, model: nn.Module, lq: torch.Tensor, vset: ValSet, item: dict[str, Any], it: int) -> torch.Tensor:
        where = f"validation of {vset.name} at iteration {it}, {Path(item['lq_path']).name}"
        return restore_or_explain(model, lq, self.settings, where, tile_key="val.tile")

    def _log_grids(self, name: str, grids: list[torch.Tensor], iteration: int) -> None:
        if not grids or not self.dist.is_main:
            return
        from torchvision.utils import make_grid

        for k, triple in enumerate(grids):  # input | output | target
            self.logger.images(f"val_{name}/{k}", make_grid(triple, nrow=3, padding=4, pad_value=1.0), iteration)


def plateau_warning(history: list[float], patience: int, warned_at: int) -> bool:
    """Whether the last ``patience`` validations improved on the best before them by less than
    :data:`PLATEAU_DB` (and no warning was given for this stretch yet)."""
    if len(history) <= patience or warned_at >= len(history) - patience:
        return False
    return max(history[-patience:]) < max(history[:-patience]) + PLATEAU_DB


@dataclass
class Best:
    """Keeps ``net_g_best`` on the best validation so far and warns when validation stops improving."""

    keeper: StateKeeper
    logger: RunLogger
    patience: int
    ema: bool  # whether the validated weights are the EMA ones

    def update(self, results: dict[str, float], iteration: int, progress: Progress, streak_open: bool,
               save: Callable[[], None]) -> None:  # fmt: skip
        """After a validation at ``iteration``: a new best (outside a bad streak) is saved (``save`` when this
        iteration is not saved yet) and becomes ``net_g_best``; the history feeds the plateau warning."""
        label = "psnr" if "psnr" in results else next(iter(results), None)
        if label is None:
            return
        psnr = results[label]
        if psnr > progress.best_psnr and not streak_open:
            progress.best_psnr, progress.best_iter = psnr, iteration
            if self.keeper.last_saved != iteration:
                save()
            self.keeper.mark_best(iteration)
            which = "EMA weights" if self.ema else "weights"
            best = f"net_g_best.{self.keeper.weights_format}"
            self.logger.info(f"best {label} so far: {psnr:.4f} at iteration {iteration} ({which}, {best})")
        progress.val_history.append(psnr)
        if plateau_warning(progress.val_history, self.patience, progress.plateau_warned_at):
            progress.plateau_warned_at = len(progress.val_history)
            self.logger.warning(
                f"validation PSNR has not improved for {self.patience} evaluations (now {psnr:.2f} dB, best "
                f"{progress.best_psnr:.2f} dB at {progress.best_iter}); a run stuck near the rainy input's PSNR "
                "(users of the published code report 13.08 dB with MEFC) usually needs a lower train.optim_g.lr or "
                "train.use_grad_clip, or its input/target folders are mispaired"
            )
