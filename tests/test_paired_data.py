"""PairedImageDataset and the progressive batch sampler."""

import warnings

import numpy as np
import pytest
import torch
from conftest import make_pairs
from torch.utils.data import DataLoader, DistributedSampler

from drsformer.data.io import ImageReadError, read_image, to_float32, write_image
from drsformer.data.paired import PairedImageDataset, PairingError, augment, pair_paths
from drsformer.data.sampler import ProgressiveBatchSampler, Stage, progressive_schedule
from drsformer.errors import ConfigError, MissingPathError
from drsformer.registry import DATASET_REGISTRY


def _make_pairs(root, n=6, size=(40, 52), tmpl="{}"):
    make_pairs(root, n, size, name="img{i}", input_name=tmpl, levels=(0, 256))  # input = target + 40, clipped
    return root / "input", root / "target"


def test_crops_and_augmentations_are_identical_on_both_images(tmp_path) -> None:
    lq_dir, gt_dir = _make_pairs(tmp_path)
    dataset = PairedImageDataset(str(lq_dir), str(gt_dir), gt_size=16, geometric_augs=True)
    modes_seen = set()
    for i in range(40):
        item = dataset[i % len(dataset)]
        lq, gt = item["lq"], item["gt"]
        assert lq.shape == gt.shape == (3, 16, 16) and lq.dtype == torch.float32
        expected = torch.clamp(torch.round(gt * 255) + 40, max=255) / 255
        torch.testing.assert_close(lq, expected, atol=1e-6, rtol=0)
        # Find which of the 8 transforms produced this crop from the full target image.
        full = to_float32(read_image(item["gt_path"]))
        for mode in range(8):
            candidate = np.ascontiguousarray(augment(full, mode))
            window = np.lib.stride_tricks.sliding_window_view(candidate, (16, 16, 3))[..., 0, :, :, :]
            hits = np.argwhere((window == gt.permute(1, 2, 0).numpy()).all(axis=(-3, -2, -1)))
            if len(hits):
                modes_seen.add(mode)
                break
        else:
            pytest.fail("crop is not a transformed window of the target image")
    assert len(modes_seen) >= 4  # the augmentation really varies


def test_augment_modes_are_the_eight_symmetries() -> None:
    image = np.arange(12).reshape(3, 4, 1)
    results = {augment(image, m).tobytes() + bytes(augment(image, m).shape) for m in range(8)}
    assert len(results) == 8


def test_validation_returns_full_images_and_small_images_are_an_error_or_padded(tmp_path) -> None:
    lq_dir, gt_dir = _make_pairs(tmp_path, n=2, size=(10, 12))
    val = PairedImageDataset(str(lq_dir), str(gt_dir), phase="val")
    assert val[0]["gt"].shape == (3, 10, 12)
    train = PairedImageDataset(str(lq_dir), str(gt_dir), gt_size=16)
    with pytest.raises(ConfigError, match=r"gt_size: crops of 16x16 do not fit .*img0.png \(12x10\)"):
        train[0]
    padded = PairedImageDataset(str(lq_dir), str(gt_dir), gt_size=16, pad_small_images=True)
    crop = padded[(0, 16, 7)]["gt"]
    assert crop.shape == (3, 16, 16)
    full = to_float32(read_image(gt_dir / "img0.png"))
    # Mirror padding repeats the edge: row 10 of the padded image equals row 9 of the original.
    mirrored = np.pad(full, ((0, 6), (0, 4), (0, 0)), mode="symmetric")
    assert torch.equal(crop.permute(1, 2, 0), torch.from_numpy(mirrored))


def test_pairing_by_template_and_meta_file(tmp_path) -> None:
    lq_dir, gt_dir = _make_pairs(tmp_path, n=3, tmpl="{}x2")
    pairs = pair_paths(lq_dir, gt_dir, filename_tmpl="{}x2")
    assert [(a.name, b.name) for a, b in pairs] == [(f"img{i}x2.png", f"img{i}.png") for i in range(3)]
    meta = tmp_path / "meta.txt"
    meta.write_text("img2x2.png img2.png\n# comment\n\nimg0x2.png, img0.png\n")
    assert [b.name for _, b in pair_paths(lq_dir, gt_dir, meta_info_file=meta)] == ["img2.png", "img0.png"]
    meta.write_text("img9x2.png img9.png\n")
    with pytest.raises(PairingError, match="2 files listed in .*meta.txt do not exist"):
        pair_paths(lq_dir, gt_dir, meta_info_file=meta)


def test_count_mismatch_lists_unmatched_names(tmp_path) -> None:
    lq_dir, gt_dir = _make_pairs(tmp_path, n=4)
    (gt_dir / "img1.png").unlink()
    (gt_dir / "img3.png").unlink()
    write_image(gt_dir / "extra.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(PairingError) as info:
        PairedImageDataset(str(lq_dir), str(gt_dir), gt_size=8)
    message = str(info.value)
    assert "2 input images in" in message and "have no target image: img1.png, img3.png" in message
    assert "1 target images in" in message and "have no input image: extra.png" in message
    with pytest.raises(MissingPathError, match="input folder .*missing does not exist \\(dataroot_lq\\)"):
        PairedImageDataset(str(tmp_path / "missing"), str(gt_dir), gt_size=8)


def test_corrupt_file_errors_or_is_skipped(tmp_path) -> None:
    lq_dir, gt_dir = _make_pairs(tmp_path, n=3)
    (lq_dir / "img1.png").write_bytes(b"not a png")
    strict = PairedImageDataset(str(lq_dir), str(gt_dir), gt_size=8)
    with pytest.raises(ImageReadError, match=r"input/img1.png: cannot decode image"):
        strict[1]
    lenient = PairedImageDataset(str(lq_dir), str(gt_dir), gt_size=8, skip_corrupt=True)
    with pytest.warns(UserWarning, match=r"skipping unreadable pair 1 of .*img1.png: cannot decode"):
        item = lenient[1]
    assert item["lq_path"].endswith("img2.png") and lenient.skipped == 1
    assert item["skipped"].endswith("input/img1.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known-bad pair is not retried or re-reported
        again = lenient[1]
    assert again["lq_path"].endswith("img2.png") and again["skipped"] == ""
    with pytest.warns(UserWarning):
        cached = PairedImageDataset(str(lq_dir), str(gt_dir), gt_size=8, skip_corrupt=True, cache=True)
    assert cached.skipped == 1 and cached[1]["lq_path"].endswith("img2.png")


def test_mismatched_pair_sizes_name_both_files(tmp_path) -> None:
    lq_dir, gt_dir = _make_pairs(tmp_path, n=2)
    write_image(gt_dir / "img0.png", np.zeros((30, 52, 3), np.uint8))
    dataset = PairedImageDataset(str(lq_dir), str(gt_dir), phase="val")
    with pytest.raises(
        ImageReadError, match=r"mismatched pair: .*input/img0.png is 52x40 but .*target/img0.png is 52x30"
    ):
        dataset[0]


def test_robust_decoding(tmp_path) -> None:
    import cv2

    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    rgba = np.dstack([np.full((6, 8, 3), (10, 20, 30), np.uint8), np.full((6, 8), 7, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)  # BGRA on disk
    deep = np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000
    cv2.imwrite(str(tmp_path / "deep.png"), np.dstack([deep] * 3))
    g = read_image(tmp_path / "gray.png")
    assert g.shape == (6, 8, 3) and (g[..., 0] == gray).all() and (g[..., 2] == gray).all()
    assert (read_image(tmp_path / "rgba.png")[0, 0] == (30, 20, 10)).all()
    d = read_image(tmp_path / "deep.png")
    assert d.dtype == np.uint16
    np.testing.assert_allclose(to_float32(d)[..., 0], deep / 65535, atol=1e-7)


def test_authors_yaml_name_is_registered(tmp_path) -> None:
    lq_dir, gt_dir = _make_pairs(tmp_path, n=2)
    assert DATASET_REGISTRY.get("Dataset_PairedImage") is PairedImageDataset
    dataset = DATASET_REGISTRY.build(
        {
            "type": "Dataset_PairedImage",
            "dataroot_lq": str(lq_dir),
            "dataroot_gt": str(gt_dir),
            "gt_size": 8,
            "io_backend": {"type": "disk"},
        }
    )
    assert len(dataset) == 2


# ---------------------------------------------------------------- progressive sampler


def test_schedule_validation() -> None:
    assert progressive_schedule([8, 5], [128, 160], [10, 20]) == [Stage(10, 8, 128), Stage(20, 5, 160)]
    with pytest.raises(ConfigError, match="same length"):
        progressive_schedule([8, 5], [128], [10, 20])


def test_shapes_switch_at_scheduled_iterations(tmp_path) -> None:
    lq_dir, gt_dir = _make_pairs(tmp_path, n=5, size=(40, 40))
    dataset = PairedImageDataset(str(lq_dir), str(gt_dir), gt_size=32)
    stages = progressive_schedule([4, 3, 1], [8, 16, 32], [3, 2, 2])
    sampler = ProgressiveBatchSampler(DistributedSampler(dataset, num_replicas=1, rank=0, seed=3), stages)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=2)
    shapes = [tuple(batch["gt"].shape) for batch in loader]
    assert shapes == [(4, 3, 8, 8)] * 3 + [(3, 3, 16, 16)] * 2 + [(1, 3, 32, 32)] * 2
    assert len(sampler) == 7


def test_index_stream_spans_epochs_and_resumes_exactly() -> None:
    data = list(range(7))
    stages = progressive_schedule([3, 2], [8, 8], [4, 5])
    full = list(ProgressiveBatchSampler(DistributedSampler(data, num_replicas=1, rank=0), stages))
    indices = [key.index for batch in full for key in batch]
    assert len(indices) == 4 * 3 + 5 * 2
    for epoch in range(3):  # each epoch is a permutation of the dataset
        assert sorted(indices[epoch * 7 : (epoch + 1) * 7]) == data
    resumed = list(ProgressiveBatchSampler(DistributedSampler(data, num_replicas=1, rank=0), stages, start_iter=5))
    assert resumed == full[5:]


def test_distributed_ranks_get_disjoint_shards_and_same_schedule() -> None:
    data = list(range(12))
    stages = progressive_schedule([2, 1], [8, 16], [3, 3])
    batches = [
        list(ProgressiveBatchSampler(DistributedSampler(data, num_replicas=2, rank=r, seed=1), stages)) for r in (0, 1)
    ]
    first_epoch = [{i for batch in b[:3] for i, *_ in batch} for b in batches]
    assert not first_epoch[0] & first_epoch[1] and len(first_epoch[0] | first_epoch[1]) == 12
    assert [[k.patch_size for k in batch] for batch in batches[0]] == [
        [k.patch_size for k in batch] for batch in batches[1]
    ]


def test_total_iters_beyond_schedule_stay_in_last_stage() -> None:
    sampler = ProgressiveBatchSampler(list(range(4)), progressive_schedule([2, 1], [8, 16], [1, 1]), total_iters=4)
    assert [len(b) for b in sampler] == [2, 1, 1, 1]
    with pytest.raises(ConfigError, match="empty"):
        ProgressiveBatchSampler([], [Stage(1, 1, 8)])
