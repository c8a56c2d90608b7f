"""Progressive patch training as a batch sampler: crop size and batch size change at scheduled iterations.

The paper's recipe (inherited from Restormer) trains on growing patches with shrinking batches. The published
loop loads a full ``batch_size_per_gpu`` batch at the largest size and then crops and discards part of it; here
the sampler asks the dataset for exactly ``batch_size`` crops of ``patch_size`` at every iteration, by yielding
``(index, patch_size)`` items that :class:`~drsformer.data.paired.PairedImageDataset` understands.

The wrapped index sampler is consumed as an endless stream across epochs (``set_epoch`` is called at each
wrap, so a ``DistributedSampler`` reshuffles its shard), and a run resumed at iteration ``i`` continues the
exact index stream it would have seen.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch.utils.data import Sampler


@dataclass(frozen=True)
class Stage:
    """``iters`` iterations of batches of ``batch_size`` crops of ``patch_size`` x ``patch_size``."""

    iters: int
    batch_size: int
    patch_size: int


def progressive_schedule(mini_batch_sizes: Sequence[int], gt_sizes: Sequence[int], iters: Sequence[int]) -> list[Stage]:
    """Stages from the YAML keys ``mini_batch_sizes``, ``gt_sizes`` and ``iters`` (per-stage lengths)."""
    lengths = {len(mini_batch_sizes), len(gt_sizes), len(iters)}
    if len(lengths) != 1 or not iters:
        raise ValueError(
            f"mini_batch_sizes {list(mini_batch_sizes)}, gt_sizes {list(gt_sizes)} and iters {list(iters)} "
            "must be non-empty lists of the same length"
        )
    stages = [Stage(int(n), int(b), int(p)) for n, b, p in zip(iters, mini_batch_sizes, gt_sizes, strict=True)]
    for stage in stages:
        if min(stage.iters, stage.batch_size, stage.patch_size) < 1:
            raise ValueError(f"progressive stage {stage} has a non-positive entry")
    return stages


class ProgressiveBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields batches ``[(index, patch_size), ...]`` from ``start_iter`` up to ``total_iters``.

    ``total_iters`` defaults to the schedule's length; iterations beyond it stay in the last stage.
    """

    def __init__(
        self, sampler: Sampler[int], stages: Sequence[Stage], total_iters: int | None = None, start_iter: int = 0
    ) -> None:
        if not stages:
            raise ValueError("progressive schedule has no stages")
        if len(sampler) == 0:  # type: ignore[arg-type]
            raise ValueError("the index sampler is empty: the dataset (or this rank's shard) has no samples")
        self.sampler = sampler
        self.stages = list(stages)
        self.total_iters = total_iters if total_iters is not None else sum(s.iters for s in self.stages)
        self.start_iter = start_iter
        ends = list(itertools.accumulate(s.iters for s in self.stages))
        self._ends = ends

    def stage_at(self, iteration: int) -> Stage:
        """The stage of 0-based ``iteration``."""
        for end, stage in zip(self._ends, self.stages, strict=True):
            if iteration < end:
                return stage
        return self.stages[-1]

    def samples_before(self, iteration: int) -> int:
        """Indices consumed by iterations ``0 .. iteration - 1``."""
        total, begin = 0, 0
        for end, stage in zip(self._ends, self.stages, strict=True):
            if iteration <= begin:
                return total
            total += (min(iteration, end) - begin) * stage.batch_size
            begin = end
        return total + max(0, iteration - begin) * self.stages[-1].batch_size

    def _index_stream(self) -> Iterator[int]:
        per_epoch = len(self.sampler)  # type: ignore[arg-type]
        epoch, offset = divmod(self.samples_before(self.start_iter), per_epoch)
        while True:
            if hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(epoch)
            yield from itertools.islice(iter(self.sampler), offset, None)
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        stream = self._index_stream()
        for iteration in range(self.start_iter, self.total_iters):
            stage = self.stage_at(iteration)
            yield [(next(stream), stage.patch_size) for _ in range(stage.batch_size)]

    def __len__(self) -> int:
        return max(0, self.total_iters - self.start_iter)
