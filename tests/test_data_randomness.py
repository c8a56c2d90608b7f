"""Per-sample randomness: crops and flips depend on (seed, rank, iteration, position) only."""

import pytest
import torch
from conftest import inverted, make_pairs
from torch.utils.data import DataLoader, DistributedSampler

from drsformer.data import PairedImageDataset, ProgressiveBatchSampler, progressive_schedule
from drsformer.data.paired import SkippedFiles
from drsformer.data.sampler import check_resume_position, sample_seed
from drsformer.errors import ConfigError


def _pairs(root, n=5, size=(40, 48)):
    make_pairs(root, n, size, seed=1, rain=inverted, levels=(0, 256))
    return PairedImageDataset(str(root / "input"), str(root / "target"), gt_size=16, geometric_augs=True)


def _batches(dataset, workers=0, start_iter=0, rank=0, world_size=1, seed=5, total=None):
    stages = progressive_schedule([3, 2], [16, 24], [4, 5])
    index_sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, seed=seed)
    sampler = ProgressiveBatchSampler(index_sampler, stages, total, start_iter, seed, rank, world_size)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers)
    return [(batch["lq"], batch["gt"], batch["gt_path"]) for batch in loader]


def test_same_batches_with_zero_and_two_workers(tmp_path) -> None:
    dataset = _pairs(tmp_path)
    torch.manual_seed(123)  # the global generator must not matter
    serial = _batches(dataset, workers=0)
    torch.manual_seed(456)
    parallel = _batches(dataset, workers=2)
    assert len(serial) == len(parallel) == 9
    for (lq0, gt0, p0), (lq2, gt2, p2) in zip(serial, parallel, strict=True):
        assert p0 == p2 and torch.equal(lq0, lq2) and torch.equal(gt0, gt2)


def test_same_batches_after_a_resume_mid_epoch(tmp_path) -> None:
    dataset = _pairs(tmp_path)
    full = _batches(dataset, workers=2)
    resumed = _batches(dataset, workers=0, start_iter=6)  # epoch 1 of 5 samples, mid-epoch
    assert len(resumed) == 3
    for (lq_a, gt_a, p_a), (lq_b, gt_b, p_b) in zip(full[6:], resumed, strict=True):
        assert p_a == p_b and torch.equal(lq_a, lq_b) and torch.equal(gt_a, gt_b)


def test_ranks_draw_different_crops_of_the_same_image(tmp_path) -> None:
    dataset = _pairs(tmp_path, n=1)  # both ranks read image 0 at every position
    ranks = [_batches(dataset, rank=r, world_size=2, total=2) for r in (0, 1)]
    for (lq0, _, p0), (lq1, _, p1) in zip(*ranks, strict=True):
        assert p0 == p1
        assert not torch.equal(lq0, lq1)
    assert sample_seed(5, 0, 3, 1) != sample_seed(5, 1, 3, 1) != sample_seed(5, 1, 4, 1)


def test_a_position_from_another_world_size_is_refused(tmp_path) -> None:
    stages = progressive_schedule([2], [16], [10])
    saved = ProgressiveBatchSampler(list(range(8)), stages, world_size=2).position(4)
    assert saved == {"iteration": 4, "epoch": 1, "world_size": 2}
    check_resume_position(saved, 2)
    with pytest.raises(ConfigError, match="saved by a run on 2 process.* this run has 4"):
        check_resume_position(saved, 4)


def test_corrupt_files_found_by_workers_reach_the_main_process_once(tmp_path) -> None:
    _pairs(tmp_path, n=6)
    (tmp_path / "input" / "3.png").write_bytes(b"broken")
    dataset = PairedImageDataset(str(tmp_path / "input"), str(tmp_path / "target"), gt_size=16, skip_corrupt=True)
    stages = progressive_schedule([4], [16], [6])
    sampler = ProgressiveBatchSampler(DistributedSampler(dataset, num_replicas=1, rank=0), stages)
    report = SkippedFiles()
    new_names = []
    for batch in DataLoader(dataset, batch_sampler=sampler, num_workers=2):
        assert not any(path.endswith("3.png") for path in batch["lq_path"])  # a substitute pair came instead
        new_names += report.update(batch)
    # Each of the two workers met the bad file on its own; the main process hears of it once.
    assert new_names == [str(tmp_path / "input" / "3.png")]


def test_cache_larger_than_its_limit_is_refused(tmp_path, monkeypatch) -> None:
    _pairs(tmp_path, n=3)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match=r"cache: .*4 process\(es\) on this machine.*above cache_limit_gb 1e-05"):
        PairedImageDataset(
            str(tmp_path / "input"), str(tmp_path / "target"), gt_size=16, cache=True, cache_limit_gb=1e-5
        )
    cached = PairedImageDataset(
        str(tmp_path / "input"), str(tmp_path / "target"), gt_size=16, geometric_augs=True, cache=True
    )
    assert torch.equal(cached[(1, 16, 9)]["gt"], _pairs(tmp_path, n=3)[(1, 16, 9)]["gt"])
