"""Paired rainy/clean image dataset: random crops with identical flips and rotations, or full images."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ..registry import DATASET_REGISTRY
from .io import ImageReadError, index_by_stem, list_images, name_list, read_image, to_float32


class PairingError(ValueError):
    """Input and target folders that do not pair up; the message lists the unmatched names."""


def pair_paths(
    lq_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    filename_tmpl: str = "{}",
    meta_info_file: str | os.PathLike | None = None,
) -> list[tuple[Path, Path]]:
    """(input, target) paths. Pairs by the ``meta_info_file`` lines (``name`` or ``input_name target_name``),
    else by stem, with the input stem being ``filename_tmpl.format(target_stem)`` (BasicSR's convention)."""
    lq_dir, gt_dir = Path(lq_dir), Path(gt_dir)
    for role, folder in (("input", lq_dir), ("target", gt_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{role} folder {folder} does not exist (dataroot_{'lq' if role == 'input' else 'gt'})"
            )
    if meta_info_file is not None:
        return _pairs_from_meta(lq_dir, gt_dir, Path(meta_info_file))
    try:
        lq, gt = index_by_stem(list_images(lq_dir), lq_dir), index_by_stem(list_images(gt_dir), gt_dir)
    except ValueError as err:
        raise PairingError(str(err)) from None
    if not gt:
        raise PairingError(f"target folder {gt_dir} holds no images")
    expected = {filename_tmpl.format(stem): stem for stem in gt}
    unmatched_gt = sorted(gt[s].name for t, s in expected.items() if t not in lq)
    unmatched_lq = sorted(p.name for stem, p in lq.items() if stem not in expected)
    if unmatched_gt or unmatched_lq:
        problems = []
        if unmatched_lq:
            problems.append(
                f"{len(unmatched_lq)} of {len(lq)} inputs in {lq_dir} have no target: {name_list(unmatched_lq)}"
            )
        if unmatched_gt:
            problems.append(
                f"{len(unmatched_gt)} of {len(gt)} targets in {gt_dir} have no input: {name_list(unmatched_gt)}"
            )
        raise PairingError("; ".join(problems))
    return [(lq[t], gt[s]) for t, s in sorted(expected.items(), key=lambda kv: kv[1])]


def _pairs_from_meta(lq_dir: Path, gt_dir: Path, meta: Path) -> list[tuple[Path, Path]]:
    if not meta.is_file():
        raise FileNotFoundError(f"meta_info_file {meta} does not exist")
    pairs, missing = [], []
    for number, line in enumerate(meta.read_text().splitlines(), 1):
        fields = line.replace(",", " ").split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) > 2:
            raise PairingError(f"{meta}:{number}: expected 'name' or 'input_name target_name', got {line!r}")
        lq, gt = lq_dir / fields[0], gt_dir / fields[-1]
        missing += [str(p) for p in (lq, gt) if not p.is_file()]
        pairs.append((lq, gt))
    if missing:
        raise PairingError(f"{len(missing)} files listed in {meta} do not exist: {name_list(missing)}")
    if not pairs:
        raise PairingError(f"{meta} lists no pairs")
    return pairs


def augment(image: np.ndarray, mode: int) -> np.ndarray:
    """One of the 8 flips/rotations of the square's symmetry group (mode 0 is the identity)."""
    if mode & 4:
        image = image[::-1]  # vertical flip
    return np.rot90(image, k=mode & 3)


def _pad_to(image: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pads bottom/right so both sides are at least ``size``."""
    pad_h, pad_w = max(0, size - image.shape[0]), max(0, size - image.shape[1])
    if not pad_h and not pad_w:
        return image
    mode = "symmetric" if pad_h <= image.shape[0] and pad_w <= image.shape[1] else "edge"
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode)


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(to_float32(image).transpose(2, 0, 1)))


@DATASET_REGISTRY.register("Dataset_PairedImage")
class PairedImageDataset(Dataset):
    """Rainy (``lq``) / clean (``gt``) pairs from two folders.

    Training (``phase='train'``): a random ``gt_size`` crop at the same place in both images (images smaller
    than the crop are reflect-padded), then with ``geometric_augs`` one of 8 flips/rotations applied to both.
    An index may be an ``(index, crop_size)`` tuple; the progressive batch sampler passes those.
    Validation/test: full images.

    Items are dicts ``{'lq', 'gt'}`` of 3 x H x W float32 tensors in [0, 1] plus ``lq_path``, ``gt_path``.
    ``cache=True`` decodes every image once, up front, and keeps it in memory (uint8: about 0.46 MB per
    Rain200 image). ``skip_corrupt=True`` turns an unreadable pair into a warning and a substitute pair.
    """

    def __init__(
        self,
        dataroot_lq: str,
        dataroot_gt: str,
        phase: str = "train",
        gt_size: int | None = None,
        geometric_augs: bool = False,
        filename_tmpl: str = "{}",
        meta_info_file: str | None = None,
        skip_corrupt: bool = False,
        cache: bool = False,
        io_backend: dict[str, Any] | None = None,
        scale: int = 1,
        name: str | None = None,
    ) -> None:
        if phase not in ("train", "val", "test"):
            raise ValueError(f"phase must be train, val or test, got {phase!r}")
        if io_backend and io_backend.get("type", "disk") != "disk":
            raise ValueError(f"io_backend type {io_backend.get('type')!r} is not supported; use 'disk'")
        if scale != 1:
            raise ValueError(f"deraining pairs have equal sizes; scale must be 1, got {scale}")
        if phase == "train" and gt_size is None:
            raise ValueError("a training dataset needs gt_size (the crop size)")
        self.name = name or Path(dataroot_lq).parent.name
        self.phase = phase
        self.gt_size = gt_size
        self.geometric_augs = geometric_augs
        self.skip_corrupt = skip_corrupt
        self.pairs = pair_paths(dataroot_lq, dataroot_gt, filename_tmpl, meta_info_file)
        self.skipped = 0
        self._bad: set[int] = set()
        self._cache: list[tuple[np.ndarray, np.ndarray] | None] | None = None
        if cache:
            self._cache = [self._load_or_none(i) for i in tqdm(range(len(self.pairs)), desc=f"caching {self.name}")]

    def __len__(self) -> int:
        return len(self.pairs)

    def _read_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is not None:
            cached = self._cache[index]
            if cached is None:
                raise ImageReadError(f"{self.pairs[index][0]}: unreadable (found while caching)")
            return cached
        lq_path, gt_path = self.pairs[index]
        lq, gt = read_image(lq_path), read_image(gt_path)
        if lq.shape != gt.shape:
            raise ImageReadError(
                f"mismatched pair: {lq_path} is {lq.shape[1]}x{lq.shape[0]} but {gt_path} is "
                f"{gt.shape[1]}x{gt.shape[0]} (width x height)"
            )
        return lq, gt

    def _load_or_none(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            return self._read_pair(index)
        except ImageReadError as err:
            if not self.skip_corrupt:
                raise
            self._note_skip(index, err)
            return None

    def _note_skip(self, index: int, err: Exception) -> None:
        self._bad.add(index)
        self.skipped += 1
        warnings.warn(f"skipping pair {index} ({self.skipped} skipped so far in this process): {err}", stacklevel=3)

    def _load(self, index: int) -> tuple[int, np.ndarray, np.ndarray]:
        """The pair at ``index``, or with ``skip_corrupt`` the next readable one."""
        for attempt in range(len(self.pairs)):
            current = (index + attempt) % len(self.pairs)
            if current in self._bad:
                continue
            try:
                lq, gt = self._read_pair(current)
                return current, lq, gt
            except ImageReadError as err:
                if not self.skip_corrupt:
                    raise
                self._note_skip(current, err)
        raise ImageReadError(f"every pair of dataset {self.name} is unreadable")

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, crop = item if isinstance(item, tuple) else (item, self.gt_size)
        index, lq, gt = self._load(index)
        if self.phase == "train":
            lq, gt = self._random_crop(lq, gt, crop)
            if self.geometric_augs:
                mode = int(torch.randint(8, ()))
                lq, gt = augment(lq, mode), augment(gt, mode)
        lq_path, gt_path = self.pairs[index]
        return {"lq": _to_tensor(lq), "gt": _to_tensor(gt), "lq_path": str(lq_path), "gt_path": str(gt_path)}

    @staticmethod
    def _random_crop(lq: np.ndarray, gt: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        lq, gt = _pad_to(lq, size), _pad_to(gt, size)
        top = int(torch.randint(lq.shape[0] - size + 1, ()))
        left = int(torch.randint(lq.shape[1] - size + 1, ()))
        window = (slice(top, top + size), slice(left, left + size))
        return lq[window], gt[window]
