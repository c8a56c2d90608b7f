"""Restoring whole images with a trained model: the one function validation, test, derain and the demo share.

:func:`restore` runs a model on an N x C x H x W batch in [0, 1] of any size and returns float32 in [0, 1]:

- **Padding.** DRSformer reflect-pads to a multiple of 8 and crops back itself (:mod:`drsformer.archs.padding`);
  nothing here pads. Tiles are cut inside the image, so every tile has the full tile size unless the image is
  smaller than a tile in that direction (then the tile spans the image and the model pads it as it would the
  whole image).
- **Tiling** (``tile``): overlapping ``tile x tile`` windows, ``batch`` of them per forward pass, blended with a
  smooth separable window. In each direction, a tile's weight is 0 on the outer quarter of the overlap next to
  an inner tile edge (pixels that saw the tile border), rises as sin² over the next half, and is 1 elsewhere;
  edges on the image border get weight 1. The weights are normalised by their sum, so a model whose receptive
  field reaches at most ``tile_overlap // 4`` pixels gives exactly its untiled output. Memory for activations
  is bounded by the tile and ``batch``; the image itself is held once as input and once as output.
- **Self-ensemble**: the mean over the 8 flips and rotations (the dihedral group) of the model's output,
  each mapped back; with tiling it is applied to every batch of tiles.
- **Precision**: ``torch.autocast`` to fp32, bf16 or fp16 (outputs come back as float32), under
  ``torch.inference_mode``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from .errors import ConfigError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# --tile auto on CPU: CPU time grows linearly with the pixels, so a bigger tile buys little but costs memory.
CPU_DEFAULT_TILE = 256
TILE_MULTIPLE = 8  # tiles are multiples of the model's size multiple, so no tile is padded
AUTO_TILE_LIMITS = (64, 2048)  # --tile auto on CUDA picks within these (multiples of 64)


def autocast(device: torch.device | str, precision: str) -> torch.autocast:
    """``torch.autocast`` for ``precision`` (fp32: disabled)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)


@dataclass(frozen=True)
class InferenceSettings:
    """How :func:`restore` runs a model; ``tile=None`` restores whole images."""

    precision: str = "fp32"
    tile: int | None = None
    tile_overlap: int = 32
    batch: int = 4
    self_ensemble: bool = False

    def check(self) -> InferenceSettings:
        """Returns itself; raises :class:`ConfigError` naming the option for a value that cannot work."""
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        if self.batch < 1:
            raise ConfigError(f"--batch must be at least 1, got {self.batch}")
        if self.tile is not None:
            if self.tile < TILE_MULTIPLE:
                raise ConfigError(
                    f"--tile must be at least {TILE_MULTIPLE} pixels (or 0 for whole images), got {self.tile}"
                )
            if not 0 <= self.tile_overlap <= self.tile // 2:
                raise ConfigError(
                    f"--tile-overlap must be between 0 and half the tile ({self.tile // 2}), got {self.tile_overlap}"
                )
        return self

    def describe(self) -> str:
        """``tile 256 (overlap 32, batch 4), fp32, self-ensemble`` for logs."""
        tiling = f"tile {self.tile} (overlap {self.tile_overlap}, batch {self.batch})" if self.tile else "whole images"
        return f"{tiling}, {self.precision}" + (", self-ensemble" if self.self_ensemble else "")


# The 8 flips and rotations as (transform, inverse) on the last two dimensions.
def _dihedral(k: int, flip: bool) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    def forward(x: Tensor) -> Tensor:
        return torch.rot90(x.flip(-1) if flip else x, k, dims=(-2, -1))

    def inverse(y: Tensor) -> Tensor:
        y = torch.rot90(y, -k, dims=(-2, -1))
        return y.flip(-1) if flip else y

    return forward, inverse


DIHEDRAL = [_dihedral(k, flip) for flip in (False, True) for k in range(4)]


def _run(model: nn.Module, x: Tensor, precision: str, self_ensemble: bool) -> Tensor:
    """The model (or its 8-fold self-ensemble) on one batch, as float32."""
    with autocast(x.device, precision):
        if not self_ensemble:
            return model(x).float()
        total = None
        for forward, inverse in DIHEDRAL:
            out = inverse(model(forward(x)).float())
            total = out if total is None else total.add_(out)
        return total / len(DIHEDRAL)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of windows of ``min(tile, length)`` covering ``0..length``, neighbours overlapping by at
    least ``overlap``; the last window ends at the border (it may overlap its neighbour by more)."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def blend_weights(size: int, overlap: int, first: bool, last: bool) -> Tensor:
    """1-D blending weight of one tile: 0 on the outer ``overlap // 4`` pixels of an inner edge, a sin² ramp over
    the next ``overlap - 2 * (overlap // 4)``, 1 elsewhere; an edge on the image border (``first``/``last``)
    keeps weight 1."""
    weight = torch.ones(size, dtype=torch.float64)
    margin = overlap // 4
    ramp_len = overlap - 2 * margin
    if overlap > 0:
        d = torch.arange(overlap, dtype=torch.float64)
        ramp = torch.sin(0.5 * math.pi * ((d - margin + 0.5) / ramp_len).clamp(0, 1)) ** 2
        if not first:
            weight[:overlap] *= ramp
        if not last:
            weight[size - overlap :] *= ramp.flip(0)
    return weight.float()


@dataclass(frozen=True)
class _Tile:
    index: int  # image in the batch
    row: int  # position in the tile grid
    col: int


def _axis(length: int, tile: int, overlap: int) -> tuple[list[int], list[Tensor], Tensor]:
    """Tile starts, their 1-D weights, and the sum of those weights over the axis (never 0)."""
    size = min(tile, length)
    starts = tile_starts(length, tile, overlap)
    weights = [blend_weights(size, overlap, i == 0, i == len(starts) - 1) for i in range(len(starts))]
    total = torch.zeros(length)
    for start, weight in zip(starts, weights, strict=True):
        total[start : start + size] += weight
    return starts, weights, total


def count_tiles(height: int, width: int, tile: int, overlap: int) -> int:
    """How many tiles :func:`restore` runs for one image of ``height x width``."""
    return len(tile_starts(height, tile, overlap)) * len(tile_starts(width, tile, overlap))


def _batches(tiles: list[_Tile], batch: int) -> Iterator[list[_Tile]]:
    for i in range(0, len(tiles), batch):
        yield tiles[i : i + batch]


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else fallback


def _restore_tiled(model: nn.Module, image: Tensor, settings: InferenceSettings, progress: bool) -> Tensor:
    n, _, height, width = image.shape
    tile, overlap = settings.tile, settings.tile_overlap
    tops, row_weights, row_total = _axis(height, tile, overlap)
    lefts, col_weights, col_total = _axis(width, tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    device = _model_device(model, image.device)
    row_weights = [w.to(image.device) for w in row_weights]
    col_weights = [w.to(image.device) for w in col_weights]
    out: Tensor | None = None
    tiles = [_Tile(i, r, c) for i in range(n) for r in range(len(tops)) for c in range(len(lefts))]
    bar = tqdm(total=len(tiles), desc="tiles", unit="tile", leave=False, disable=not progress)
    try:
        for group in _batches(tiles, settings.batch):
            crops = [image[t.index, :, tops[t.row] : tops[t.row] + th, lefts[t.col] : lefts[t.col] + tw] for t in group]
            result = _run(model, torch.stack(crops).to(device), settings.precision, settings.self_ensemble)
            result = result.to(image.device)
            if out is None:  # the model decides the output channels
                out = torch.zeros(n, result.shape[1], height, width, dtype=torch.float32, device=image.device)
            for t, pixels in zip(group, result, strict=True):
                weight = row_weights[t.row][:, None] * col_weights[t.col][None, :]
                top, left = tops[t.row], lefts[t.col]
                out[t.index, :, top : top + th, left : left + tw] += pixels * weight
            bar.update(len(group))
    finally:
        bar.close()
    # The weights are separable, so their sum over the tile grid is the outer product of the per-axis sums.
    out /= (row_total[:, None] * col_total[None, :]).to(image.device)
    return out


@torch.inference_mode()
def restore(
    model: nn.Module,
    image: Tensor,
    precision: str = "fp32",
    *,
    tile: int | None = None,
    tile_overlap: int = 32,
    batch: int = 4,
    self_ensemble: bool = False,
    progress: bool = False,
) -> Tensor:
    """Derains an N x C x H x W batch in [0, 1] of any H, W; returns float32 clamped to [0, 1], same size.

    ``tile`` (pixels; None or 0: whole image) runs overlapping tiles ``batch`` at a time and blends them;
    ``self_ensemble`` averages the 8 flips/rotations; ``precision`` is fp32, bf16 or fp16 autocast. The model
    runs on its own device (the tiles are moved there); the result stays on ``image``'s device.
    ``progress`` shows a bar over tiles when there is more than one.
    """
    settings = InferenceSettings(precision, tile or None, tile_overlap, batch, self_ensemble).check()
    if image.ndim != 4:
        raise ValueError(f"expected an N x C x H x W batch, got shape {tuple(image.shape)}")
    height, width = image.shape[-2:]
    if settings.tile is None or (height <= settings.tile and width <= settings.tile):
        device = _model_device(model, image.device)
        out = _run(model, image.to(device), settings.precision, settings.self_ensemble).to(image.device)
    else:
        many = count_tiles(height, width, settings.tile, settings.tile_overlap) * image.shape[0] > 1
        out = _restore_tiled(model, image, settings, progress and many)
    return out.clamp_(0, 1)


def image_to_tensor(image: np.ndarray) -> Tensor:
    """1 x 3 x H x W float32 in [0, 1] from an H x W x 3 uint8 or uint16 RGB array."""
    scale = 255.0 if image.dtype == np.uint8 else 65535.0
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(scale).unsqueeze(0)


def tensor_to_image(tensor: Tensor, dtype: type = np.uint8) -> np.ndarray:
    """H x W x C uint8 (or uint16) array from a C x H x W (or 1 x C x H x W) float tensor in [0, 1].

    Rounds ``x * 255`` (or 65535) half to even in float32, as ``skimage.img_as_ubyte`` does.
    """
    if tensor.ndim == 4:
        if tensor.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {tensor.shape[0]}")
        tensor = tensor[0]
    peak = 255.0 if dtype == np.uint8 else 65535.0
    scaled = tensor.detach().float().clamp(0, 1).mul(peak).round().cpu().numpy()
    return np.ascontiguousarray(scaled.transpose(1, 2, 0)).astype(dtype)


def pick_tile(model: nn.Module, device: torch.device | str, precision: str = "fp32", batch: int = 1) -> tuple[int, str]:
    """The tile ``--tile auto`` uses, and a sentence saying why.

    On CUDA: the largest multiple of 64 (within 64..2048) whose predicted peak memory for ``batch`` tiles fits in
    80 % of the free GPU memory, predicted from a probe forward pass at 128 x 128 (DRSformer's activation memory
    grows linearly with the pixels: its attention is over channels). Elsewhere: :data:`CPU_DEFAULT_TILE`.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_DEFAULT_TILE, f"tile {CPU_DEFAULT_TILE}: the default on {device.type}"
    free, _ = torch.cuda.mem_get_info(device)
    probe = 128
    channels = getattr(model, "config", {}).get("inp_channels", 3)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with torch.inference_mode(), autocast(device, precision):
        model(torch.rand(1, channels, probe, probe, device=device))
    torch.cuda.synchronize(device)
    per_pixel = max(1, torch.cuda.max_memory_allocated(device) - base) / probe**2
    budget = 0.8 * free / batch  # self-ensemble runs its 8 passes one after another: same peak
    side = int(math.sqrt(budget / per_pixel)) // 64 * 64
    tile = min(max(side, AUTO_TILE_LIMITS[0]), AUTO_TILE_LIMITS[1])
    reason = (
        f"tile {tile}: {free / 2**30:.1f} GiB free on {torch.cuda.get_device_name(device)}, "
        f"about {per_pixel / 1024:.1f} KiB per pixel measured at {probe}x{probe}, batch {batch}"
    )
    return tile, reason


def default_batch(device: torch.device | str) -> int:
    """Tiles per forward pass by default: 4 on CUDA (better use of the GPU), 1 on CPU (no faster in batches, and
    each 256 x 256 tile of the full model needs about 1 GB of activations)."""
    return 4 if torch.device(device).type == "cuda" else 1


def default_device() -> str:
    """``cuda`` when a GPU is usable, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"
