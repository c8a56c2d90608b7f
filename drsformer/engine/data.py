"""Training and validation data from resolved options: datasets, the progressive schedule, loaders, mixup.

This is the one place that decides which ``datasets.train`` keys go to the loader (``config.TRAIN_LOADER_KEYS``)
and which to the dataset class. A training "iteration" is one optimizer step; with gradient accumulation it
reads ``accum`` micro-batches, so the sampler's schedule is expressed in micro-batches.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sized
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..config.training import TRAIN_LOADER_KEYS, VAL_LOADER_KEYS
from ..data.io import read_image
from ..data.sampler import ProgressiveBatchSampler, Stage, progressive_schedule, sample_seed
from ..errors import ConfigError, DrsformerError
from ..registry import DATASET_REGISTRY
from .distributed import Distributed


def build_dataset(section: dict[str, Any], where: str) -> Dataset:
    """The dataset class of ``section['type']`` with its own keys; errors say which section they come from."""
    loader_keys = TRAIN_LOADER_KEYS if section["phase"] == "train" else VAL_LOADER_KEYS
    kwargs = {k: v for k, v in section.items() if k not in loader_keys and k != "type"}
    try:
        dataset = DATASET_REGISTRY.build({"type": section["type"], **kwargs}, where=where)
    except DrsformerError as err:
        message = str(err)
        raise type(err)(message if message.startswith(where) else f"{where}: {message}") from None
    if len(dataset) == 0:
        raise ConfigError(f"{where}: the dataset is empty")
    return dataset


@dataclass(frozen=True)
class Schedule:
    """Per optimizer iteration: the batch per process, the crop size and the accumulation steps."""

    stages: list[Stage]  # in optimizer iterations
    accum: list[int]  # accumulation steps of each stage
    total_iter: int

    def stage_index(self, iteration: int) -> int:
        """The stage of 0-based optimizer ``iteration`` (iterations beyond the schedule stay in the last)."""
        for j, end in enumerate(itertools.accumulate(s.iters for s in self.stages)):
            if iteration < end:
                return j
        return len(self.stages) - 1

    def micro_stages(self) -> list[Stage]:
        return [Stage(s.iters * a, s.batch_size, s.patch_size) for s, a in zip(self.stages, self.accum, strict=True)]

    def micro_steps_before(self, iteration: int) -> int:
        total, begin = 0, 0
        for stage, accum in zip(self.stages, self.accum, strict=True):
            end = begin + stage.iters
            if iteration <= begin:
                return total
            total += (min(iteration, end) - begin) * accum
            begin = end
        return total + max(0, iteration - begin) * self.accum[-1]

    def accum_at(self, iteration: int) -> int:
        return self.accum[self.stage_index(iteration)]

    def batch_at(self, iteration: int) -> int:
        return self.stages[self.stage_index(iteration)].batch_size


def build_schedule(options: dict[str, Any], world_size: int) -> Schedule:
    data, train = options["datasets"]["train"], options["train"]
    total = train["total_iter"]
    if data["mini_batch_sizes"] is not None:
        stages = progressive_schedule(data["mini_batch_sizes"], data["gt_sizes"], data["iters"])
    else:
        stages = [Stage(total, data["batch_size_per_gpu"], data["gt_size"])]
    effective = train["effective_batch_size"]
    accum = []
    for stage in stages:
        if effective is None:
            accum.append(train["grad_accum_steps"])
            continue
        per_step = stage.batch_size * world_size
        if effective % per_step:
            raise ConfigError(
                f"train.effective_batch_size: {effective} does not divide into batches of {stage.batch_size} per "
                f"process on {world_size} process(es) ({per_step} per step); choose a multiple of {per_step}, or "
                "change the batch (mini_batch_sizes / batch_size_per_gpu) or the number of processes"
            )
        accum.append(effective // per_step)
    return Schedule(stages, accum, total)


def check_crops_fit(dataset: Dataset, schedule: Schedule, where: str) -> None:
    """Refuses crops larger than the first training image (unless the dataset pads small images)."""
    if getattr(dataset, "pad_small_images", False) or not hasattr(dataset, "pairs"):
        return
    largest = max(s.patch_size for s in schedule.stages)
    path = dataset.pairs[0][1]
    height, width = read_image(path).shape[:2]
    if largest > min(height, width):
        key = "gt_sizes" if len(schedule.stages) > 1 else "gt_size"
        raise ConfigError(
            f"{where}.{key}: crops of {largest}x{largest} are larger than {path} ({width}x{height}); "
            "use smaller crops or set pad_small_images: true"
        )


def train_loader(
    dataset: Dataset,
    schedule: Schedule,
    section: dict[str, Any],
    dist: Distributed,
    seed: int,
    start_iter: int,
) -> tuple[ProgressiveBatchSampler, Iterator[dict[str, Any]]]:
    """The batch sampler and an iterator over micro-batches from optimizer iteration ``start_iter`` on."""
    index_sampler: DistributedSampler[int] = DistributedSampler(
        dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=section["use_shuffle"], seed=seed
    )
    micro_total = schedule.micro_steps_before(schedule.total_iter)
    sampler = ProgressiveBatchSampler(
        index_sampler,
        schedule.micro_stages(),
        total_iters=micro_total,
        start_iter=schedule.micro_steps_before(start_iter),
        seed=seed,
        rank=dist.rank,
        world_size=dist.world_size,
    )
    workers = section["num_worker_per_gpu"]
    extra = dict(persistent_workers=section["persistent_workers"], prefetch_factor=section["prefetch_factor"])
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=section["pin_memory"] and dist.device.type == "cuda",
        **(extra if workers > 0 else {}),
    )
    return sampler, iter(loader)


def validation_shard(dataset: Dataset, dist: Distributed) -> list[int]:
    """This process's share of the validation images: every ``world_size``-th from ``rank``."""
    assert isinstance(dataset, Sized)  # a map-style dataset has a length
    return list(range(dist.rank, len(dataset), dist.world_size))


def mixup(
    lq: torch.Tensor, gt: torch.Tensor, seed: int, beta: float, use_identity: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' ``mixing_augs``: with weight lam ~ Beta(beta, beta), blend the batch with a permutation of
    itself, the same way for input and target; with ``use_identity`` half of the batches stay unchanged.

    All randomness comes from ``seed`` (one per micro-batch and process), so a resumed run mixes alike.
    """
    rng = np.random.default_rng(seed)
    if use_identity and rng.integers(2) == 1:
        return lq, gt
    lam = float(rng.beta(beta, beta))
    order = torch.from_numpy(rng.permutation(lq.shape[0])).to(lq.device)
    return lam * lq + (1 - lam) * lq[order], lam * gt + (1 - lam) * gt[order]


def mixup_seed(seed: int, rank: int, micro_step: int) -> int:
    # Position -1 keeps these seeds apart from the per-sample crop seeds of the same micro-step.
    return sample_seed(seed, rank, micro_step, 2**31 - 1)
