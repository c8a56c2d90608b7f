"""Exact tiled inference: DRSformer's whole-image output, computed tile by tile with memory bounded by the tile.

Everything in DRSformer is local (convolutions, layer norm, pixel (un)shuffle, the product of the attention
weights with v) except two kinds of sums over all pixels: each attention's ``q k^T`` and the squared norms of
the rows of q and k (:class:`~drsformer.archs.attention.AttentionSums`), and each MEFC router's channel means.
:class:`ExactTiler` walks the model's :attr:`~drsformer.archs.DRSformer.plan` one step at a time over the
whole image. A step that needs sums first visits every tile to add them up; then every tile of the step's
output is computed from the step's input cut with a halo of the step's receptive radius (zero padding and
``count_include_pad=False`` pooling are exact at the image border, because tiles are cut inside the image,
never padded). Each step's output is kept at full size for the next step. The result equals ``model(x)`` up to
the order of floating-point additions; tiling changes memory and time, never the pixels.

Memory: the network's activations exist for one tile at a time. The tile is ``tile x tile`` at full resolution
and holds the same number of values at every level (a level with twice the channels gets tiles of half the
area); a level no larger than its tile runs in one piece. The full-size maps (about ``5.75 * dim + 6`` values
per pixel at the peak, with the skip connections) live on the model's device, or with ``storage="host"`` in
host memory (page-locked on CUDA, exactly as large as the maps), copied to the device tile by tile.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeGuard

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .archs.attention import AttentionSums, attention_sums
from .archs.blocks import Downsample, OverlapPatchEmbed, TransformerBlock, Upsample
from .archs.drsformer import DRSformer
from .archs.mefc import MEFC, conv_radius
from .archs.padding import crop_to, pad_to_multiple
from .archs.unet import SIZE_MULTIPLE, Step

STORAGES = ("auto", "device", "host")
AUTO_FRACTION = 0.3  # storage "auto": the device's memory, unless the maps would take more than this of its free memory


@dataclass(frozen=True)
class Window:
    """Rows ``[top, bottom)`` and columns ``[left, right)`` of a map at one level."""

    top: int
    bottom: int
    left: int
    right: int

    def grown(self, radius: int, height: int, width: int) -> Window:
        """This window with ``radius`` more pixels on every side, kept inside a ``height x width`` map."""
        return Window(
            max(0, self.top - radius), min(height, self.bottom + radius),
            max(0, self.left - radius), min(width, self.right + radius),
        )  # fmt: skip

    def scaled(self, factor: int) -> Window:
        """The same area one level up (``factor`` 2: twice the resolution)."""
        return Window(self.top * factor, self.bottom * factor, self.left * factor, self.right * factor)

    def halved(self) -> Window:
        """The same area one level down; the window's edges are even, as every edge at levels 1 to 3 is."""
        return Window(self.top // 2, -(-self.bottom // 2), self.left // 2, -(-self.right // 2))

    def cut(self, x: Tensor) -> Tensor:
        return x[..., self.top : self.bottom, self.left : self.right]

    def inside(self, outer: Window, x: Tensor) -> Tensor:
        """The part of ``x``, computed over ``outer``, that lies in this window."""
        return x[..., self.top - outer.top : self.bottom - outer.top, self.left - outer.left : self.right - outer.left]

    @property
    def area(self) -> int:
        return (self.bottom - self.top) * (self.right - self.left)


def grid(height: int, width: int, side: int) -> list[Window]:
    """Windows covering ``height x width``: one when the map holds at most ``side**2`` pixels, else ``side``
    squares (the last row and column shorter)."""
    if height * width <= side * side:
        return [Window(0, height, 0, width)]
    return [
        Window(top, min(top + side, height), left, min(left + side, width))
        for top in range(0, height, side)
        for left in range(0, width, side)
    ]


def level_tile(tile: int, level: int) -> int:
    """The tile side at ``level`` that holds as many values as ``tile x tile`` at level 1 (channels double per
    level), a multiple of 8 so that every tile edge at levels 1 to 3 is even."""
    return max(SIZE_MULTIPLE, int(tile / math.sqrt(2 ** (level - 1))) // SIZE_MULTIPLE * SIZE_MULTIPLE)


def step_radius(step: Step, module: nn.Module) -> int:
    """Pixels around each output pixel that a step reads from its input, in the input's own level."""
    if step.kind == "block":
        assert isinstance(module, TransformerBlock)  # each step kind runs one kind of module
        return module.receptive_radius()
    if step.kind == "mefc":
        assert isinstance(module, MEFC)
        return module.receptive_radius()
    if step.kind in ("down", "up"):
        assert isinstance(module, (Downsample, Upsample))
        conv = module.body[0]
    elif step.kind == "embed":
        assert isinstance(module, OverlapPatchEmbed)
        conv = module.proj
    else:
        conv = module
    assert isinstance(conv, nn.Conv2d)
    return conv_radius(conv)


def sums_radius(step: Step, module: nn.Module) -> int:
    """Pixels around each position that the global sums of a step read (q and k's 3x3 depthwise conv)."""
    if step.kind != "block":
        return 0
    assert isinstance(module, TransformerBlock)
    return module.query_key_radius()


def supports(model: nn.Module) -> TypeGuard[DRSformer]:
    """Whether :class:`ExactTiler` knows how to run ``model``."""
    return isinstance(model, DRSformer)


def free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` for the maps (CUDA: what the driver reports; None elsewhere: no device limit)."""
    if device.type != "cuda":
        return None
    return torch.cuda.mem_get_info(device)[0]


def resolve_storage(model: DRSformer, shape: tuple[int, ...], storage: str, fraction: float = AUTO_FRACTION) -> str:
    """``device`` or ``host``: where the full-size maps for a batch of ``shape`` live. ``auto`` is the device
    unless the maps would take more than ``fraction`` of its free memory (:func:`free_memory`).

    Decide once per image (:func:`~drsformer.inference.restore` does, before the self-ensemble's passes): the
    free-memory reading counts PyTorch's cache as used, so it shrinks after the first pass.
    """
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    if storage != "auto":
        return storage
    free = free_memory(next(model.parameters()).device)
    if free is None:
        return "device"
    need = storage_bytes_per_pixel(model) * shape[0] * shape[-2] * shape[-1]
    return "device" if need <= fraction * free else "host"


def storage_bytes_per_pixel(model: DRSformer, element_size: int = 4) -> float:
    """Bytes per input pixel of the full-size maps alive at the peak: the image, and a level-1 decoder block's
    input and output at 2 * dim channels (the skips are consumed by then; :class:`MapPool` holds no more)."""
    config = model.config
    dim = config["dim"]
    values = config["inp_channels"] + 2 * (2 * dim)
    if config.get("dual_pixel_task"):
        values += dim  # the embedding, kept for the output's skip
    return values * element_size


class MapCopies:
    """Copies of tiles into full-size maps, and the one rule that keeps them exact.

    On CUDA with the maps in host memory a copy into a map is asynchronous: a window that is the whole map (a
    level that fits one tile) becomes a ``cudaMemcpyAsync`` that lands later. Reading a map on the host (a
    halo window is not contiguous, so moving it to the device first gathers it on the host, at once) must
    therefore wait for the copies into it. Rule: :meth:`settle` when a map is complete, before anything reads
    it, hands it back to the pool or writes into it again. With the maps on the device every copy and read is
    ordered on one stream, and :meth:`settle` does nothing.
    """

    def __init__(self, device: torch.device, store: torch.device) -> None:
        self.device = device
        self.asynchronous = device.type == "cuda" and store.type == "cpu"

    def write(self, window: Tensor, tile: Tensor) -> None:
        """``window`` (a view of a map) := ``tile``; asynchronous where :attr:`asynchronous`."""
        window.copy_(tile, non_blocking=self.asynchronous)

    def settle(self) -> None:
        """Returns once every copy queued so far has landed."""
        if self.asynchronous:
            torch.cuda.current_stream(self.device).synchronize()


class HostMaps:
    """Page-locked host memory for the maps on CUDA, as large as the maps themselves.

    PyTorch's pinned allocator rounds each block up to a power of two (a 4K photo's maps pinned 10 GB or more).
    Here each map is ordinary memory registered with the driver (``cudaHostRegister``) while the run needs it,
    on pages of its own (two registrations may not share a page), so the pinned total is the maps' own size to
    a page each. :attr:`peak_bytes` says how much was pinned at most.
    """

    PAGE = 4096

    def __init__(self) -> None:
        self.registered: list[tuple[Tensor, int, int]] = []  # (buffer, first registered address, bytes)
        self.bytes = 0
        self.peak_bytes = 0

    def buffer(self, size: int) -> Tensor:
        """``size`` bytes of page-locked memory, starting on a page of their own."""
        pages = -(-max(size, 1) // self.PAGE) * self.PAGE
        buffer = torch.empty(pages + self.PAGE, dtype=torch.uint8)
        offset = -buffer.data_ptr() % self.PAGE
        start = buffer.data_ptr() + offset
        error = int(torch.cuda.cudart().cudaHostRegister(start, pages, 0))
        if error:
            raise RuntimeError(
                f"cudaHostRegister of {pages / 2**20:.0f} MB of host memory for the tiles' maps failed (CUDA error "
                f"{error}); use storage on the device, or a smaller image"
            )
        self.registered.append((buffer, start, pages))
        self.bytes += pages
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        return buffer[offset : offset + size]

    def discard(self, buffer: Tensor) -> None:
        """Unregisters ``buffer`` (one :meth:`buffer` gave); every copy into or out of it has landed."""
        index = next(i for i, (_, start, _) in enumerate(self.registered) if start == buffer.data_ptr())
        _, start, pages = self.registered.pop(index)
        torch.cuda.cudart().cudaHostUnregister(start)
        self.bytes -= pages

    def release_all(self) -> None:
        """Unregisters every map (the memory stays valid, unpinned); the caller has synchronised first."""
        for _, start, _ in self.registered:
            torch.cuda.cudart().cudaHostUnregister(start)
        self.registered.clear()
        self.bytes = 0


class MapPool:
    """The full-size maps of one run, each cut from a byte buffer that later maps reuse.

    A map the run no longer needs hands its buffer back; the next map takes the smallest free buffer that holds
    it, so maps of other shapes (the levels' different sizes and widths) reuse memory too. When no free buffer
    is large enough, the free ones are let go (``discard``) before a new one is allocated (``allocate(size)``,
    uint8): what the run holds stays near the maps alive at its peak.
    """

    def __init__(self, allocate: Callable[[int], Tensor], discard: Callable[[Tensor], None] | None = None) -> None:
        self.allocate = allocate
        self.discard = discard
        self.free: list[Tensor] = []
        self.lent: dict[int, Tensor] = {}  # a map's address -> its buffer
        self.held = 0  # bytes in buffers, free or lent
        self.peak_held = 0

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, channels_last: bool = False) -> Tensor:
        size = max(math.prod(shape), 1) * torch.empty((), dtype=dtype).element_size()
        fits = [i for i, buffer in enumerate(self.free) if buffer.numel() >= size]
        if fits:
            buffer = self.free.pop(min(fits, key=lambda i: self.free[i].numel()))
        else:
            for unused in self.free:
                if self.discard is not None:
                    self.discard(unused)
                self.held -= unused.numel()
            self.free.clear()
            buffer = self.allocate(size)
            self.held += buffer.numel()
            self.peak_held = max(self.peak_held, self.held)
        values = buffer[:size].view(dtype)[: math.prod(shape)]
        if channels_last and len(shape) == 4:
            batch, channels, height, width = shape
            out = values.view(batch, height, width, channels).permute(0, 3, 1, 2)
        else:
            out = values.view(shape)
        self.lent[out.data_ptr()] = buffer
        return out

    def give_back(self, x: Tensor) -> None:
        self.free.append(self.lent.pop(x.data_ptr()))

    def __bool__(self) -> bool:
        return bool(self.free or self.lent)


class ExactTiler:
    """Runs a DRSformer over an N x C x H x W batch tile by tile, giving its whole-image output.

    ``tile``: the tile side at full resolution (pixels). ``autocast``: a context manager factory for the
    precision (every tile runs inside it; the sums are formed in float32 whatever it is). ``storage``: where the
    full-size maps live: ``device`` (the model's), ``host`` (CPU memory, page-locked when the model is on CUDA),
    or ``auto`` (:func:`resolve_storage`, decided at each call).
    """

    copies_type = MapCopies

    def __init__(
        self,
        model: DRSformer,
        tile: int,
        autocast: Callable[[], AbstractContextManager[Any]],
        storage: str = "auto",
        progress: bool = False,
        auto_fraction: float = AUTO_FRACTION,
        on_tile: Callable[[int, int], None] | None = None,
    ) -> None:
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        self.model = model
        self.tile = tile
        self.autocast = autocast
        self.storage = storage
        self.progress = progress
        self.on_tile = on_tile  # called with (tiles done, tiles in all) after each tile
        self.auto_fraction = auto_fraction
        param = next(model.parameters())
        self.device = param.device
        self.channels_last = model.layout_impl == "fast" and self.device.type == "cpu"
        self._pool = MapPool(self._allocate, self._discard)
        self.host_maps = HostMaps()
        self.peak_bytes = 0  # the full-size maps (the image aside) held at most in the last run

    # -- storage ---------------------------------------------------------------------------------------------
    def _storage_device(self, image: Tensor) -> torch.device:
        where = resolve_storage(self.model, tuple(image.shape), self.storage, self.auto_fraction)
        return torch.device("cpu") if where == "host" else self.device

    @property
    def _pinned(self) -> bool:
        """Whether the maps are page-locked host memory (:class:`HostMaps`): in host memory for a CUDA model."""
        return self.store.type == "cpu" and self.device.type == "cuda"

    def _allocate(self, size: int) -> Tensor:
        if self._pinned:
            return self.host_maps.buffer(size)
        return torch.empty(size, dtype=torch.uint8, device=self.store)

    def _discard(self, buffer: Tensor) -> None:
        if self._pinned:
            self.host_maps.discard(buffer)

    def _empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """A full-size map, in memory the run no longer needs where some is free (every copy into or out of a map
        has landed before it is handed back: see :class:`MapCopies`)."""
        return self._pool.take(shape, dtype, channels_last=self.channels_last)

    def _release(self, x: Tensor) -> None:
        self._pool.give_back(x)

    def _to_device(self, x: Tensor) -> Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    # -- running -----------------------------------------------------------------------------------------------
    def __call__(self, image: Tensor) -> Tensor:
        self.store = self._storage_device(image)
        self.copies = self.copies_type(self.device, self.store)
        padded, size = pad_to_multiple(image, SIZE_MULTIPLE)
        self.image = padded.to(self.store)
        model, plan = self.model, self.model.plan
        total = self._count(plan)
        bar = tqdm(total=total, desc="tiles", unit="tile", leave=False, disable=not self.progress)
        self._bar, self._done, self._total = bar, 0, total
        saved: dict[str, Tensor] = {}
        current = self.image
        try:
            for step in plan:
                module = model.get_submodule(step.module)
                out = getattr(self, f"_{step.kind}")(step, module, current, saved)
                if current is not self.image and not any(current is s for s in saved.values()):
                    self._release(current)
                current = out
                if step.save is not None:
                    saved[step.save] = current
            result = crop_to(current, size)
        finally:
            bar.close()
            self.copies.settle()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.peak_bytes = self._pool.peak_held
            self._pool = MapPool(self._allocate, self._discard)
            self.host_maps.release_all()  # unpins; the memory (the result among it) stays valid
        return result

    def _tick(self) -> None:
        self._bar.update()
        self._done += 1
        if self.on_tile is not None:
            self.on_tile(self._done, self._total)

    def _count(self, plan: tuple[Step, ...]) -> int:
        height, width = self.image.shape[-2:]
        total = 0
        for step in plan:
            scale = 2 ** (step.level - 1)
            tiles = len(grid(height // scale, width // scale, level_tile(self.tile, step.level)))
            total += tiles * (2 if step.kind in ("block", "mefc") else 1)
        return total

    def _map(self, level: int, compute: Callable[[Window], Tensor], like: Tensor) -> Tensor:
        """Fills a full-size map at ``level`` tile by tile with ``compute(window)`` (already cut to the window).

        Returns once every copy into the map, and every read of this step's inputs, has landed
        (:meth:`MapCopies.settle`): the next step may read the map on the host, and the inputs may go back to
        the pool."""
        height, width = (s // 2 ** (level - 1) for s in self.image.shape[-2:])
        out: Tensor | None = None
        for window in grid(height, width, level_tile(self.tile, level)):
            with self.autocast():
                y = compute(window)
            if out is None:
                out = self._empty((like.shape[0], y.shape[1], height, width), y.dtype)
            self.copies.write(window.cut(out), y)
            self._tick()
        self.copies.settle()
        assert out is not None
        return out

    def _windows(self, x: Tensor, level: int) -> Iterator[Window]:
        for window in grid(x.shape[-2], x.shape[-1], level_tile(self.tile, level)):
            yield window
            self._tick()

    def _local(self, module: Callable[[Tensor], Tensor], x: Tensor, window: Window, radius: int) -> Tensor:
        """``module`` over ``window`` of ``x``, computed on the window grown by ``radius`` and cut back."""
        source = window.grown(radius, x.shape[-2], x.shape[-1])
        return window.inside(source, module(self._to_device(source.cut(x))))

    # -- the step kinds (see archs.drsformer.Step) -----------------------------------------------------------
    def _embed(self, step: Step, module: nn.Module, x: Tensor, saved: dict[str, Tensor]) -> Tensor:
        radius = step_radius(step, module)
        return self._map(1, lambda w: self._local(module, x, w, radius), x)

    def _output(self, step: Step, module: nn.Module, x: Tensor, saved: dict[str, Tensor]) -> Tensor:
        radius = step_radius(step, module)
        if step.skip is not None:  # dual-pixel: the 3x3 conv of x plus a 1x1 conv of the embedding, no residual
            assert step.reduce is not None
            skip, skip_conv = saved[step.skip], self.model.get_submodule(step.reduce)

            def compute(window: Window) -> Tensor:
                source = window.grown(radius, x.shape[-2], x.shape[-1])
                joined = self._to_device(source.cut(x)) + skip_conv(self._to_device(source.cut(skip)))
                return window.inside(source, module(joined))

            return self._map(1, compute, x)
        image = self.image
        return self._map(1, lambda w: self._local(module, x, w, radius) + self._to_device(w.cut(image)), x)

    def _mefc(self, step: Step, module: nn.Module, x: Tensor, saved: dict[str, Tensor]) -> Tensor:
        assert isinstance(module, MEFC)  # each step kind runs one kind of module
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        total: Tensor | None = None
        for window in self._windows(x, step.level):
            part = window.cut(x).to(self.device, non_blocking=True).sum(dim=(2, 3), dtype=dtype)
            total = part if total is None else total + part
        assert total is not None  # a map has at least one window
        mean = (total / (x.shape[-2] * x.shape[-1])).to(x.dtype)
        with self.autocast():
            weights = module.route(mean)
        radius = step_radius(step, module)
        return self._map(step.level, lambda w: self._local(lambda t: module.compensate(t, weights), x, w, radius), x)

    def _block(self, step: Step, module: nn.Module, x: Tensor, saved: dict[str, Tensor]) -> Tensor:
        assert isinstance(module, TransformerBlock)
        radius_qk = sums_radius(step, module)
        sums: AttentionSums | None = None
        for window in self._windows(x, step.level):
            source = window.grown(radius_qk, x.shape[-2], x.shape[-1])
            with self.autocast():
                q, k = module.query_key(self._to_device(source.cut(x)))
            part = attention_sums(window.inside(source, q).flatten(-2), window.inside(source, k).flatten(-2))
            sums = part if sums is None else sums + part
        assert sums is not None  # a map has at least one window
        radius = step_radius(step, module)
        return self._map(
            step.level, lambda w: self._local(lambda t: module.forward_with_sums(t, sums), x, w, radius), x
        )

    def _down(self, step: Step, module: nn.Module, x: Tensor, saved: dict[str, Tensor]) -> Tensor:
        assert isinstance(module, Downsample)
        conv, unshuffle = module.body
        radius = step_radius(step, module)

        def compute(window: Window) -> Tensor:
            return unshuffle(self._local(conv, x, window.scaled(2), radius))

        return self._map(step.level, compute, x)

    def _up(self, step: Step, module: nn.Module, x: Tensor, saved: dict[str, Tensor]) -> Tensor:
        assert isinstance(module, Upsample) and step.skip is not None  # every up step names its skip
        conv, shuffle = module.body
        radius = step_radius(step, module)
        skip = saved.pop(step.skip)
        reduce = self.model.get_submodule(step.reduce) if step.reduce is not None else None

        def compute(window: Window) -> Tensor:
            y = torch.cat(
                [shuffle(self._local(conv, x, window.halved(), radius)), self._to_device(window.cut(skip))], 1
            )
            return reduce(y) if reduce is not None else y

        out = self._map(step.level, compute, x)
        self._release(skip)
        return out


def tiled_forward(
    model: DRSformer, image: Tensor, tile: int, autocast: Callable[[], AbstractContextManager[Any]], **options
) -> Tensor:
    """``model(image)``, computed by :class:`ExactTiler` (see there for ``options``)."""
    return ExactTiler(model, tile, autocast, **options)(image)
