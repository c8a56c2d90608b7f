"""Progressive patch training as a batch sampler: crop size and batch size change at scheduled iterations.

The paper's recipe (inherited from Restormer) can train on growing patches with shrinking batches. The published
loop loads a full ``batch_size_per_gpu`` batch at the largest size and then crops and discards part of it; here
the sampler asks the dataset for exactly ``batch_size`` crops of ``patch_size`` at every iteration.

Each item is a :class:`SampleKey` ``(index, patch_size, seed)``. The seed is a function of (run seed, rank,
iteration, position in the batch) only, and the dataset draws the sample's crop and flip from it, so a resumed
run, a run with more DataLoader workers and a run on another rank each draw exactly what they should.

The wrapped index sampler is consumed as an endless stream across epochs (``set_epoch`` is called at each
wrap, so a ``DistributedSampler`` reshuffles its shard), and a run resumed at iteration ``i`` continues the
exact index stream it would have seen. The index stream depends on the number of ranks (each rank reads its
shard), so a position saved with one world size is refused with another (:func:`check_resume_position`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from torch.utils.data import Sampler

from ..errors import ConfigError


@dataclass(frozen=True)
class Stage:
    """``iters`` iterations of batches of ``batch_size`` crops of ``patch_size`` x ``patch_size``."""

    iters: int
    batch_size: int
    patch_size: int


class SampleKey(NamedTuple):
    """What the dataset needs for one training sample: which pair, the crop size, and its own random seed."""

    index: int  # type: ignore[assignment]  # the field named in the interface; it shadows tuple.index
    patch_size: int
    seed: int


def sample_seed(seed: int, rank: int, iteration: int, position: int) -> int:
    """A 63-bit seed that depends on its four arguments only (NumPy ``SeedSequence`` hashing)."""
    state = np.random.SeedSequence([seed, rank, iteration, position]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def progressive_schedule(mini_batch_sizes: Sequence[int], gt_sizes: Sequence[int], iters: Sequence[int]) -> list[Stage]:
    """Stages from the YAML keys ``mini_batch_sizes``, ``gt_sizes`` and ``iters`` (per-stage lengths)."""
    lengths = {len(mini_batch_sizes), len(gt_sizes), len(iters)}
    if len(lengths) != 1 or not iters:
        raise ConfigError(
            f"mini_batch_sizes {list(mini_batch_sizes)}, gt_sizes {list(gt_sizes)} and iters {list(iters)} "
            "must be non-empty lists of the same length"
        )
    stages = [Stage(int(n), int(b), int(p)) for n, b, p in zip(iters, mini_batch_sizes, gt_sizes, strict=True)]
    for stage in stages:
        if min(stage.iters, stage.batch_size, stage.patch_size) < 1:
            raise ConfigError(f"progressive stage {stage} has a non-positive entry")
    return stages


def check_resume_position(position: dict[str, Any], world_size: int, source: str = "the training state") -> None:
    """Refuses a position saved with another number of ranks: its data order cannot be continued exactly."""
    saved = position.get("world_size", 1)
    if saved != world_size:
        raise ConfigError(
            f"{source} was saved by a run on {saved} process(es) and this run has {world_size}; the data order "
            f"of a resumed run depends on the number of processes, so resume with {saved} (torchrun "
            "--nproc_per_node), or start a new run from its weights with path.pretrain_network_g"
        )


class ProgressiveBatchSampler(Sampler[list[SampleKey]]):
    """Yields batches of :class:`SampleKey` from ``start_iter`` up to ``total_iters``.

    ``total_iters`` defaults to the schedule's length; iterations beyond it stay in the last stage. ``seed``,
    ``rank`` and ``world_size`` make the per-sample seeds; ``world_size`` is also recorded in the position.
    """

    def __init__(
        self,
        sampler: Sampler[int],
        stages: Sequence[Stage],
        total_iters: int | None = None,
        start_iter: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not stages:
            raise ConfigError("progressive schedule has no stages")
        if len(sampler) == 0:  # type: ignore[arg-type]
            raise ConfigError("the index sampler is empty: the dataset (or this rank's shard) has no samples")
        self.sampler = sampler
        self.stages = list(stages)
        self.total_iters = total_iters if total_iters is not None else sum(s.iters for s in self.stages)
        self.start_iter = start_iter
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._ends = list(itertools.accumulate(s.iters for s in self.stages))

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

    def epoch_at(self, iteration: int) -> int:
        """How many full passes over this rank's shard iterations ``0 .. iteration - 1`` made."""
        return self.samples_before(iteration) // len(self.sampler)  # type: ignore[arg-type]

    def position(self, iteration: int) -> dict[str, Any]:
        """What a training state records to resume at 0-based ``iteration``."""
        return {"iteration": iteration, "epoch": self.epoch_at(iteration), "world_size": self.world_size}

    def _index_stream(self) -> Iterator[int]:
        per_epoch = len(self.sampler)  # type: ignore[arg-type]
        epoch, offset = divmod(self.samples_before(self.start_iter), per_epoch)
        while True:
            if hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(epoch)
            yield from itertools.islice(iter(self.sampler), offset, None)
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[list[SampleKey]]:
        stream = self._index_stream()
        for iteration in range(self.start_iter, self.total_iters):
            stage = self.stage_at(iteration)
            yield [
                SampleKey(next(stream), stage.patch_size, sample_seed(self.seed, self.rank, iteration, position))
                for position in range(stage.batch_size)
            ]

    def __len__(self) -> int:
        return max(0, self.total_iters - self.start_iter)
