"""Paired rainy/clean image dataset: random crops with identical flips and rotations, or full images."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info
from tqdm import tqdm

from ..errors import ConfigError, ImageReadError, MissingPathError, PairingError
from ..registry import DATASET_REGISTRY
from .io import list_images, match_files, name_list, read_image, to_float32

__all__ = ["PairedImageDataset", "PairingError", "SkippedFiles", "augment", "pair_paths"]

# Environment variable torchrun sets: processes on this machine, each holding its own cache.
LOCAL_PROCESSES_ENV = "LOCAL_WORLD_SIZE"


def pair_paths(
    lq_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    filename_tmpl: str = "{}",
    meta_info_file: str | os.PathLike | None = None,
) -> list[tuple[Path, Path]]:
    """(input, target) paths. Pairs by the ``meta_info_file`` lines (``name`` or ``input_name target_name``),
    else by stem, with the input stem being ``filename_tmpl.format(target_stem)`` (BasicSR's convention)."""
    lq_dir, gt_dir = Path(lq_dir), Path(gt_dir)
    for key, folder in (("dataroot_lq", lq_dir), ("dataroot_gt", gt_dir)):
        if not folder.is_dir():
            role = "input" if key == "dataroot_lq" else "target"
            raise MissingPathError(f"{role} folder {folder} does not exist ({key})")
    if meta_info_file is not None:
        return _pairs_from_meta(lq_dir, gt_dir, Path(meta_info_file))
    targets = list_images(gt_dir)
    if not targets:
        raise PairingError(f"target folder {gt_dir} holds no images (dataroot_gt)")
    matching = match_files(list_images(lq_dir), targets, target_key=filename_tmpl.format)
    return matching.check(lq_dir, gt_dir)


def _pairs_from_meta(lq_dir: Path, gt_dir: Path, meta: Path) -> list[tuple[Path, Path]]:
    if not meta.is_file():
        raise MissingPathError(f"meta_info_file {meta} does not exist")
    try:
        text = meta.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise PairingError(
            f"meta_info_file {meta}: not UTF-8 text (byte {err.start}); expected one pair per line"
        ) from None
    except OSError as err:
        raise PairingError(f"meta_info_file {meta}: cannot read ({err.strerror or err})") from None
    pairs, missing = [], []
    for number, line in enumerate(text.splitlines(), 1):
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


def _pad_symmetric(image: np.ndarray, size: int) -> np.ndarray:
    """Pads bottom/right by mirroring (the edge pixel repeated, NumPy's 'symmetric') so both sides reach ``size``;
    repeats the edge when a side is shorter than its padding."""
    pad_h, pad_w = max(0, size - image.shape[0]), max(0, size - image.shape[1])
    if not pad_h and not pad_w:
        return image
    mode: Literal["symmetric", "edge"] = "symmetric" if pad_h <= image.shape[0] and pad_w <= image.shape[1] else "edge"
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode)


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(to_float32(image).transpose(2, 0, 1)))


@DATASET_REGISTRY.register("Dataset_PairedImage")
class PairedImageDataset(Dataset):
    """Rainy (``lq``) / clean (``gt``) pairs from two folders.

    Training (``phase='train'``): a random ``gt_size`` crop at the same place in both images, then with
    ``geometric_augs`` one of 8 flips/rotations applied to both. An image smaller than the crop is an error
    naming it, unless ``pad_small_images`` (then it is mirror-padded). An index may be a
    :class:`~drsformer.data.sampler.SampleKey` ``(index, crop_size, seed)``, as the progressive batch sampler
    yields: the crop and flip are then drawn from that seed alone. A plain index draws them from torch's global
    generator (which a DataLoader seeds per worker). Validation/test: full images.

    Items are dicts ``{'lq', 'gt'}`` of 3 x H x W float32 tensors in [0, 1], ``lq_path``, ``gt_path``, and
    ``skipped``: the paths (newline-separated; usually empty) of unreadable pairs this item replaced.

    ``cache=True`` decodes every image once, up front (uint8: about 0.93 MB per 481 x 321 Rain200 pair), refusing when
    the estimate times the processes on this machine (``LOCAL_WORLD_SIZE``) exceeds ``cache_limit_gb``.
    DataLoader workers share the cache pages of the process that made it. ``skip_corrupt=True`` replaces an
    unreadable pair by the next readable one; each bad pair is warned about once, by the main process.
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
        pad_small_images: bool = False,
        cache: bool = False,
        cache_limit_gb: float = 16.0,
        io_backend: dict[str, Any] | None = None,
        scale: int = 1,
        name: str | None = None,
    ) -> None:
        if phase not in ("train", "val", "test"):
            raise ConfigError(f"phase must be train, val or test, got {phase!r}")
        if io_backend and io_backend.get("type", "disk") != "disk":
            raise ConfigError(f"io_backend.type {io_backend.get('type')!r} is not supported; use 'disk'")
        if scale != 1:
            raise ConfigError(f"scale: deraining pairs have equal sizes; scale must be 1, got {scale}")
        if phase == "train" and gt_size is None:
            raise ConfigError("gt_size: a training dataset needs a crop size")
        self.name = name or Path(dataroot_lq).parent.name
        self.phase = phase
        self.gt_size = gt_size
        self.geometric_augs = geometric_augs
        self.skip_corrupt = skip_corrupt
        self.pad_small_images = pad_small_images
        self.pairs = pair_paths(dataroot_lq, dataroot_gt, filename_tmpl, meta_info_file)
        self.skipped = 0  # bad pairs found by this process
        self._bad: set[int] = set()
        self._cache: list[tuple[np.ndarray, np.ndarray] | None] | None = None
        if cache:
            self._cache = self._fill_cache(cache_limit_gb)

    def __len__(self) -> int:
        return len(self.pairs)

    def _fill_cache(self, limit_gb: float) -> list[tuple[np.ndarray, np.ndarray] | None]:
        first = self._load(0, [])[1:]
        copies = max(1, int(os.environ.get(LOCAL_PROCESSES_ENV, "1")))
        need = sum(a.nbytes for a in first) * len(self.pairs) * copies / 2**30
        if need > limit_gb:
            raise ConfigError(
                f"cache: decoding the {len(self.pairs)} pairs of {self.name} would hold about {need:.1f} GB "
                f"({copies} process(es) on this machine each keep a copy), above cache_limit_gb {limit_gb:g}; "
                "set cache: false, or raise cache_limit_gb if the memory is there"
            )
        cache: list[tuple[np.ndarray, np.ndarray] | None] = []
        for i in tqdm(range(len(self.pairs)), desc=f"caching {self.name}", disable=get_worker_info() is not None):
            try:
                cache.append(self._read_pair(i))
            except ImageReadError as err:
                if not self.skip_corrupt:
                    raise
                self._note_skip(i, err, [])
                cache.append(None)
        return cache

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

    def _note_skip(self, index: int, err: Exception, found: list[str]) -> None:
        self._bad.add(index)
        self.skipped += 1
        found.append(str(self.pairs[index][0]))
        if get_worker_info() is None:  # workers hand their finds to the main process with the item
            warnings.warn(f"skipping unreadable pair {index} of {self.name}: {err}", stacklevel=3)

    def _load(self, index: int, found: list[str]) -> tuple[int, np.ndarray, np.ndarray]:
        """The pair at ``index``, or with ``skip_corrupt`` the next readable one (bad ones appended to ``found``)."""
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
                self._note_skip(current, err, found)
        raise ImageReadError(f"every pair of dataset {self.name} is unreadable")

    def __getitem__(self, item: int | tuple[int, ...]) -> dict[str, Any]:
        crop: int | None
        if isinstance(item, tuple):
            index, crop, *seed = item
        else:
            index, crop, seed = item, self.gt_size, []
        found: list[str] = []
        index, lq, gt = self._load(index, found)
        if self.phase == "train":
            assert crop is not None  # a training dataset has a gt_size
            seed_value = seed[0] if seed else int(torch.randint(2**62, ()))
            lq, gt = self._random_crop(lq, gt, crop, np.random.default_rng(seed_value), index)
        lq_path, gt_path = self.pairs[index]
        return {
            "lq": _to_tensor(lq),
            "gt": _to_tensor(gt),
            "lq_path": str(lq_path),
            "gt_path": str(gt_path),
            "skipped": "\n".join(found),
        }

    def _random_crop(
        self, lq: np.ndarray, gt: np.ndarray, size: int, rng: np.random.Generator, index: int
    ) -> tuple[np.ndarray, np.ndarray]:
        if min(lq.shape[:2]) < size:
            if not self.pad_small_images:
                raise ConfigError(
                    f"gt_size: crops of {size}x{size} do not fit {self.pairs[index][0]} "
                    f"({lq.shape[1]}x{lq.shape[0]}); use smaller gt_size/gt_sizes, or set pad_small_images: true"
                )
            lq, gt = _pad_symmetric(lq, size), _pad_symmetric(gt, size)
        top = int(rng.integers(lq.shape[0] - size + 1))
        left = int(rng.integers(lq.shape[1] - size + 1))
        window = (slice(top, top + size), slice(left, left + size))
        lq, gt = lq[window], gt[window]
        if self.geometric_augs:
            mode = int(rng.integers(8))
            lq, gt = augment(lq, mode), augment(gt, mode)
        return lq, gt


class SkippedFiles:
    """Collects the unreadable files that batches report (``batch['skipped']``); each one is new only once."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def update(self, batch: dict[str, Any]) -> list[str]:
        """The files in ``batch`` not reported before."""
        found = {name for entry in batch.get("skipped", ()) for name in entry.split("\n") if name}
        new = sorted(found - self.names)
        self.names |= found
        return new
