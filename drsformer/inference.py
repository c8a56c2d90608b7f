"""Restoring whole images with a trained model: the one function validation, test, derain and the demo share.

:func:`restore` runs a model on an N x C x H x W batch in [0, 1] of any size and returns float32 in [0, 1]:

- **Padding.** DRSformer reflect-pads to a multiple of 8 and crops back itself (:mod:`drsformer.archs.padding`);
  nothing here pads.
- **Tiling** (``tile``): DRSformer runs through :mod:`drsformer.tiling`, which computes the whole-image output
  tile by tile: the tile sets memory and speed, never the pixels. Another architecture runs on whole images
  (a warning says so once).
- **Self-ensemble**: the mean over the 8 flips and rotations (the dihedral group) of the model's output,
  each mapped back.
- **Precision**: ``torch.autocast`` to fp32, bf16 or fp16 (outputs come back as float32), under
  ``torch.inference_mode``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import DTypeLike
from torch import Tensor, nn

from . import tiling
from .devices import default_device, is_out_of_memory  # noqa: F401 (default_device: part of this interface)
from .errors import ConfigError, OutOfMemory
from .precision import PRECISIONS, autocast, check_precision  # noqa: F401 (PRECISIONS: as above)

ProgressFn = Callable[[int, int], None]  # (steps done, steps in all)

# --tile auto on CPU: at 1024^2 on the full model, 256-pixel tiles ran in 0.73x the time of 512-pixel ones and
# 0.66x their peak memory, despite 10 % halo work against 3 % (docs/benchmarks.md, scripts/bench_tiling.py).
CPU_DEFAULT_TILE = 256
TILE_MULTIPLE = 8  # tile sides are multiples of the model's size multiple
AUTO_TILE_LIMITS = (64, 4096)  # --tile auto on CUDA picks within these (multiples of 64)


@dataclass(frozen=True)
class InferenceSettings:
    """How :func:`restore` runs a model; ``tile=None`` runs whole images."""

    precision: str = "fp32"
    tile: int | None = None
    self_ensemble: bool = False

    def check(self, tile_key: str = "--tile") -> InferenceSettings:
        """Returns itself; raises :class:`ConfigError` naming the option (``tile_key``) for a value that cannot
        work."""
        check_precision(self.precision)
        if self.tile is not None and self.tile < TILE_MULTIPLE:
            raise ConfigError(
                f"{tile_key} must be at least {TILE_MULTIPLE} pixels (or 0 for whole images), got {self.tile}"
            )
        return self

    def describe(self) -> str:
        """``exact tiles of 512, fp32, self-ensemble`` for logs."""
        tiling_text = f"exact tiles of {self.tile}" if self.tile else "whole images"
        return f"{tiling_text}, {self.precision}" + (", self-ensemble" if self.self_ensemble else "")


# The 8 flips and rotations as (transform, inverse) on the last two dimensions.
def _dihedral(k: int, flip: bool) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    def forward(x: Tensor) -> Tensor:
        return torch.rot90(x.flip(-1) if flip else x, k, dims=(-2, -1))

    def inverse(y: Tensor) -> Tensor:
        y = torch.rot90(y, -k, dims=(-2, -1))
        return y.flip(-1) if flip else y

    return forward, inverse


DIHEDRAL = [_dihedral(k, flip) for flip in (False, True) for k in range(4)]


def _ensemble(forward: Callable[[Tensor], Tensor], x: Tensor, self_ensemble: bool) -> Tensor:
    """``forward`` (or its 8-fold self-ensemble) on one batch, as float32."""
    if not self_ensemble:
        return forward(x).float()
    total: Tensor | None = None
    for transform, inverse in DIHEDRAL:
        out = inverse(forward(transform(x)).float())
        total = out if total is None else total.add_(out)
    assert total is not None  # eight passes
    return total / len(DIHEDRAL)


@contextlib.contextmanager
def no_cudnn_autotuning() -> Iterator[None]:
    """cuDNN autotuning off for the duration: tiles come in many edge and halo shapes, and each new shape would
    be autotuned (training turns it on for its few fixed crop sizes)."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else fallback


@torch.inference_mode()
def restore(
    model: nn.Module,
    image: Tensor,
    precision: str = "fp32",
    *,
    tile: int | None = None,
    self_ensemble: bool = False,
    progress: bool = False,
    storage: str = "auto",
    on_progress: ProgressFn | None = None,
) -> Tensor:
    """Derains an N x C x H x W batch in [0, 1] of any H, W; returns float32 clamped to [0, 1], same size.

    ``tile`` (pixels; None or 0: whole images) computes DRSformer's whole-image output tile by tile, so that
    memory is bounded by the tile (see :mod:`drsformer.tiling`; ``storage`` says where its full-size maps
    live, decided once per call); ``self_ensemble`` averages the 8 flips/rotations; ``precision`` is fp32, bf16
    or fp16 autocast. The model runs on its own device; the result stays on ``image``'s device. ``progress``
    shows a bar over tiles; ``on_progress(done, total)`` is called as steps finish (tiles of every pass, or
    whole passes), and may raise to stop the work between steps (a cancelled job).
    """
    settings = InferenceSettings(precision, tile or None, self_ensemble).check()
    if image.ndim != 4:
        raise ValueError(f"expected an N x C x H x W batch, got shape {tuple(image.shape)}")
    device = _model_device(model, image.device)

    def cast() -> torch.autocast:
        return autocast(device, settings.precision)

    tile = settings.tile
    passes = len(DIHEDRAL) if settings.self_ensemble else 1
    finished = [0]  # passes done

    def report(done: int, total: int) -> None:
        if on_progress is not None:
            on_progress(finished[0] * total + done, passes * total)

    if tile is not None and tiling.supports(model):
        # Decided once for all 8 passes of a self-ensemble, so that every pass returns on the same device.
        where = tiling.resolve_storage(model, tuple(image.shape), storage)

        def forward(x: Tensor) -> Tensor:
            out = tiling.tiled_forward(model, x, tile, cast, storage=where, progress=progress, on_tile=report)
            finished[0] += 1
            return out

        with no_cudnn_autotuning():
            out = _ensemble(forward, image, settings.self_ensemble)
    else:
        if settings.tile is not None:
            warnings.warn(
                f"exact tiling knows DRSformer, not {type(model).__name__}: running whole images", stacklevel=3
            )

        def forward(x: Tensor) -> Tensor:
            report(0, 1)
            with cast():
                out = model(x)
            report(1, 1)
            finished[0] += 1
            return out

        out = _ensemble(forward, image.to(device), settings.self_ensemble)
    return out.to(image.device).clamp_(0, 1)


def restore_or_explain(
    model: nn.Module, image: Tensor, settings: InferenceSettings, where: str, tile_key: str = "--tile", **options: Any
) -> Tensor:
    """:func:`restore` with ``settings``; running out of memory becomes an :class:`OutOfMemory` naming ``where``
    (the image) and ``tile_key`` (the option that bounds the memory)."""
    try:
        return restore(
            model, image, settings.precision, tile=settings.tile, self_ensemble=settings.self_ensemble, **options
        )
    except RuntimeError as err:
        if not is_out_of_memory(err):
            raise
        device = _model_device(model, image.device)
        size = "x".join(map(str, image.shape[-2:]))
        hint = f"a smaller {tile_key}" if settings.tile else f"{tile_key} {CPU_DEFAULT_TILE}"
        raise OutOfMemory(
            f"{where}: out of memory on {device} restoring {size} pixels; use {hint} (tiles are exact: the result "
            "does not change, only the memory and the time)"
        ) from None


def image_to_tensor(image: np.ndarray) -> Tensor:
    """1 x 3 x H x W float32 in [0, 1] from an H x W x 3 uint8 or uint16 RGB array."""
    scale = 255.0 if image.dtype == np.uint8 else 65535.0
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(scale).unsqueeze(0)


def tensor_to_image(tensor: Tensor, dtype: DTypeLike = np.uint8) -> np.ndarray:
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


def pick_tile(model: nn.Module, device: torch.device | str, precision: str = "fp32") -> tuple[int, str]:
    """The tile ``--tile auto`` uses, and a sentence saying why.

    On CUDA: the largest multiple of 64 (within :data:`AUTO_TILE_LIMITS`) whose activations fit in half the free
    GPU memory, predicted from a probe forward pass at 128 x 128 (DRSformer's activation memory grows linearly
    with the pixels: its attention is over channels; a whole forward pass holds more than one tile's step, so
    the prediction errs on the safe side). The full-size maps of :mod:`drsformer.tiling` take the device memory
    left, or pinned host memory when they do not fit. Elsewhere: :data:`CPU_DEFAULT_TILE`.
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
        model(torch.rand(1, channels, probe, probe, device=_model_device(model, device)))
    torch.cuda.synchronize(device)
    per_pixel = max(1, torch.cuda.max_memory_allocated(device) - base) / probe**2
    side = int(math.sqrt(0.5 * free / per_pixel)) // 64 * 64
    tile = min(max(side, AUTO_TILE_LIMITS[0]), AUTO_TILE_LIMITS[1])
    reason = (
        f"tile {tile}: {free / 2**30:.1f} GiB free on {torch.cuda.get_device_name(device)}, "
        f"about {per_pixel / 1024:.1f} KiB per pixel measured at {probe}x{probe}"
    )
    return tile, reason
