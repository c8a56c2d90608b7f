"""Exact tiled inference: tiles never change the pixels (float64 to 1e-10, float32 to 1e-5), every halo is needed,
and restore() uses it for validation, test, derain and the demo."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import TINY, load_reference

from drsformer import tiling
from drsformer.archs import DRSformer, from_checkpoint
from drsformer.inference import restore
from drsformer.tiling import ExactTiler, Window, grid, level_tile, tiled_forward

# Sizes: smaller than one tile, tiled in one direction only, not multiples of 8, and a batch of two.
SHAPES = [(1, 3, 13, 9), (1, 3, 20, 130), (1, 3, 37, 50), (2, 3, 45, 53)]
NO_AUTOCAST = contextlib.nullcontext
EXACT = 1e-12  # float64: tiles differ from the whole image only in the order of additions (seen: <= 3e-14)


def _model(name: str, dtype: torch.dtype = torch.float64, impl: str = "fast") -> DRSformer:
    """The published-layout fixtures, and a third configuration: BiasFree norm, biases, other heads and blocks."""
    if name == "other":
        torch.manual_seed(5)
        model = DRSformer(**{**TINY, "num_blocks": [1, 2, 1, 1]}, bias=True, LayerNorm_type="BiasFree", mefc=True)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    else:
        model = from_checkpoint(load_reference(name))
    return model.eval().to(dtype).set_impl(impl)


def _tiled(model: DRSformer, x: torch.Tensor, tile: int, **options) -> torch.Tensor:
    with torch.no_grad():
        return tiled_forward(model, x, tile, NO_AUTOCAST, **options)


@pytest.mark.parametrize("name", ["small_mefc", "small_no_mefc", "other"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_tiled_equals_whole_image_in_float64(name: str, shape: tuple[int, ...]) -> None:
    model = _model(name)
    x = torch.rand(shape, dtype=torch.float64)
    with torch.no_grad():
        whole = model(x)
    for tile in (16, 24):
        assert (_tiled(model, x, tile) - whole).abs().max().item() < EXACT, tile


@pytest.mark.parametrize("name", ["small_mefc", "small_no_mefc"])
def test_tiled_equals_whole_image_in_float32(name: str) -> None:
    model = _model(name, torch.float32)
    for shape in SHAPES:
        x = torch.rand(shape)
        with torch.no_grad():
            whole = model(x)
        for tile in (16, 24):
            assert (_tiled(model, x, tile) - whole).abs().max().item() < 1e-5, (shape, tile)


@pytest.mark.parametrize("name", ["small_mefc", "small_no_mefc"])
def test_tiled_reproduces_the_published_outputs(name: str) -> None:
    """Against the authors' code's own outputs, with the fast path and with the paper's reference formulas."""
    reference = load_reference(name)
    for impl in ("fast", "reference"):
        model = _model(name, impl=impl)
        tiled = _tiled(model, reference["input"].double(), 16)
        assert (tiled - reference["output_float64"]).abs().max().item() < EXACT, impl
        with torch.no_grad():
            assert (tiled - model(reference["input"].double())).abs().max().item() < EXACT, impl


def _shrunk(function, kind: str):
    """``function`` (a step's radius) one pixel smaller for steps of ``kind``."""

    def shrunk(step, module):
        radius = function(step, module)
        return radius - 1 if step.kind == kind else radius

    return shrunk


@pytest.fixture(scope="module")
def halo_case() -> tuple[DRSformer, torch.Tensor, torch.Tensor]:
    """A model whose outermost taps count (MEFC's are 24 pixels and 8 convolutions away, so they are made
    larger), an image that every level tiles (with tiles of 16: 16, 8, 8 and one piece at level 4), and its
    whole-image output."""
    model = _model("small_mefc")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".op." in name and p.shape[1] == 1 and p.shape[-1] > 1:
                p.mul_(4)
    torch.manual_seed(2)
    x = torch.rand(1, 3, 40, 48, dtype=torch.float64)
    with torch.no_grad():
        whole = model(x)
    assert (_tiled(model, x, 16) - whole).abs().max().item() < EXACT
    return model, x, whole


@pytest.mark.parametrize("kind", ["embed", "mefc", "block", "down", "up", "output", "sums"])
def test_a_halo_one_pixel_too_small_breaks_exactness(monkeypatch, halo_case, kind: str) -> None:
    """Each halo is as large as it must be: one pixel less and the exactness tests above fail."""
    model, x, whole = halo_case
    if kind == "sums":
        monkeypatch.setattr(tiling, "sums_radius", _shrunk(tiling.sums_radius, "block"))
    else:
        monkeypatch.setattr(tiling, "step_radius", _shrunk(tiling.step_radius, kind))
    assert (_tiled(model, x, 16) - whole).abs().max().item() > 1000 * EXACT


def test_radii_of_the_published_model() -> None:
    model = DRSformer()
    radii = {step.kind: tiling.step_radius(step, model.get_submodule(step.module)) for step in model.plan}
    assert radii == {"embed": 1, "mefc": 24, "block": 5, "down": 1, "up": 1, "output": 1}


@pytest.mark.parametrize("storage", ["device", "host"])
def test_storage_places_do_not_change_the_result(storage: str) -> None:
    model = _model("small_no_mefc")
    x = torch.rand(1, 3, 45, 70, dtype=torch.float64)
    with torch.no_grad():
        whole = model(x)
    assert (_tiled(model, x, 16, storage=storage) - whole).abs().max().item() < EXACT


def test_restore_tiles_exactly_with_self_ensemble_and_batches() -> None:
    model = _model("small_mefc", torch.float32)
    x = torch.rand(2, 3, 41, 66)
    whole = restore(model, x, self_ensemble=True)
    tiled = restore(model, x, tile=16, self_ensemble=True)
    assert tiled.shape == x.shape and tiled.dtype == torch.float32
    assert (tiled - whole).abs().max().item() < 1e-5
    assert (restore(model, x, tile=24) - restore(model, x)).abs().max().item() < 1e-5


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_tiles_agree_with_the_whole_image(precision: str) -> None:
    model = _model("small_mefc", torch.float32)
    x = torch.rand(1, 3, 48, 72)
    whole = restore(model, x, precision)
    tiled = restore(model, x, precision, tile=16)
    reference = restore(model, x)
    # Tiles round differently (other convolution blockings), so the bound is the precision's own error.
    own_error = (whole - reference).abs().max().item()
    assert (tiled - whole).abs().max().item() <= max(2 * own_error, 1e-3)


def test_tile_grid_and_level_sizes() -> None:
    assert grid(20, 30, 32) == [Window(0, 20, 0, 30)]  # no larger than one tile: one piece, no halo
    windows = grid(40, 48, 16)
    assert len(windows) == 9 and windows[-1] == Window(32, 40, 32, 48)
    assert sum(w.area for w in windows) == 40 * 48
    assert [level_tile(256, level) for level in (1, 2, 3, 4)] == [256, 176, 128, 88]
    assert level_tile(24, 4) == 8 and level_tile(20, 1) == 16  # multiples of 8: even edges at every level
    assert Window(8, 16, 0, 24).halved() == Window(4, 8, 0, 12)
    assert Window(3, 5, 0, 4).grown(4, 6, 6) == Window(0, 6, 0, 6)


def test_other_architectures_fall_back_to_whole_images() -> None:
    net = torch.nn.Conv2d(3, 3, 3, padding=1).eval()
    assert not tiling.supports(net)
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad(), pytest.warns(UserWarning, match="exact tiling knows DRSformer, not Conv2d: running whole"):
        assert torch.equal(restore(net, x, tile=16), net(x).clamp(0, 1))


def test_the_tiler_reuses_maps_and_leaves_nothing_behind() -> None:
    model = _model("small_mefc", torch.float32)
    tiler = ExactTiler(model, 16, NO_AUTOCAST)
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        first, second = tiler(x), tiler(x)
    assert torch.equal(first, second) and not tiler._pool


def test_a_freed_buffer_serves_smaller_maps_and_is_let_go_for_a_larger_one() -> None:
    discarded: list[int] = []
    pool = tiling.MapPool(lambda size: torch.empty(size, dtype=torch.uint8), lambda b: discarded.append(b.numel()))
    first = pool.take((1, 4, 8, 8), torch.float32)  # 1024 bytes
    address = first.data_ptr()
    pool.give_back(first)
    smaller = pool.take((1, 2, 8, 8), torch.bfloat16)  # 256 bytes, in the same buffer
    assert smaller.data_ptr() == address and pool.held == 1024 and not discarded
    pool.give_back(smaller)
    larger = pool.take((1, 8, 8, 8), torch.float32, channels_last=True)
    assert discarded == [1024] and pool.held == 2048 and pool.peak_held == 2048
    assert larger.is_contiguous(memory_format=torch.channels_last) and larger.shape == (1, 8, 8, 8)


@pytest.mark.parametrize("name", ["mefc", "no mefc", "dual pixel", "restormer"])
def test_the_maps_held_at_the_peak_are_what_storage_counts(name: str) -> None:
    """The storage decision counts the image and a level-1 decoder block's input and output; the pool holds no
    more than that, whatever the levels' shapes."""
    from drsformer.archs import Restormer

    small = dict(dim=8, num_blocks=[1, 1, 1, 1], heads=[1, 2, 4, 8])
    model = {
        "mefc": lambda: DRSformer(**small, mefc=True),
        "no mefc": lambda: DRSformer(**small, mefc=False),
        "dual pixel": lambda: DRSformer(**small, inp_channels=6, dual_pixel_task=True),
        "restormer": lambda: Restormer(**small, num_refinement_blocks=2),
    }[name]().eval()
    channels = model.config["inp_channels"]
    x = torch.rand(1, channels, 72, 56)
    tiler = ExactTiler(model, 24, NO_AUTOCAST, storage="host")
    with torch.no_grad():
        tiled = tiler(x)
        assert (tiled - model(x)).abs().max().item() < 1e-5
    image = channels * 4 * x.shape[-2] * x.shape[-1]
    assert tiler.peak_bytes + image == tiling.storage_bytes_per_pixel(model) * x.shape[-2] * x.shape[-1]


# ---------------------------------------------------------------- the GPU's ordering, replayed on the CPU

# Image sizes and tiles where one level runs in one tile and the level above does not (level tiles for 24: 24, 16,
# 8, 8; for 32: 32, 16, 16, 8; for 48: 48, 32, 24, 16): levels 4/3, 3/2 and 2/1.
LEVEL_BOUNDARIES = [((64, 64), 24), ((64, 64), 32), ((48, 56), 48)]


class QueuedCopies(tiling.MapCopies):
    """CUDA's asynchronous copies into host maps, replayed: a copy lands only when the stream is synchronised;
    until then the map holds what it held before (here NaN, so that an early read cannot go unnoticed)."""

    def __init__(self, device: torch.device, store: torch.device) -> None:
        super().__init__(device, store)
        self.queued: list[tuple[torch.Tensor, torch.Tensor]] = []

    def write(self, window: torch.Tensor, tile: torch.Tensor) -> None:
        window.fill_(float("nan"))
        self.queued.append((window, tile.clone()))

    def settle(self) -> None:
        for window, tile in self.queued:
            window.copy_(tile)
        self.queued.clear()


class QueuedTiler(ExactTiler):
    copies_type = QueuedCopies


@pytest.mark.parametrize("size, tile", LEVEL_BOUNDARIES)
def test_every_map_is_read_after_its_copies_have_landed(size: tuple[int, int], tile: int) -> None:
    level_fits = [len(grid(size[0] >> k, size[1] >> k, level_tile(tile, k + 1))) == 1 for k in range(4)]
    assert level_fits.index(True) > 0  # one level fits one tile, the level above does not
    model = _model("small_mefc")
    x = torch.rand(1, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        whole = model(x)
        tiled = QueuedTiler(model, tile, NO_AUTOCAST, storage="host")(x)
    assert (tiled - whole).abs().max().item() < EXACT


def test_storage_is_decided_once_for_the_eight_passes_of_a_self_ensemble(monkeypatch) -> None:
    """The free-memory reading shrinks once a pass's memory is cached: decided per pass, the first pass would keep
    its maps on the device and the next ones in host memory, and adding them up would mix devices."""
    model = _model("small_mefc", torch.float32)
    x = torch.rand(1, 3, 40, 48)
    need = tiling.storage_bytes_per_pixel(model) * x.shape[-2] * x.shape[-1]
    readings: list[int] = []

    def shrinking(device: torch.device) -> int:
        readings.append(int(need / tiling.AUTO_FRACTION * (1.2 - 0.4 * len(readings))))
        return readings[-1]

    monkeypatch.setattr(tiling, "free_memory", shrinking)
    assert [tiling.resolve_storage(model, tuple(x.shape), "auto") for _ in range(2)] == ["device", "host"]
    readings.clear()
    tiled = restore(model, x, tile=16, self_ensemble=True)
    assert len(readings) == 1
    assert (tiled - restore(model, x, self_ensemble=True)).abs().max().item() < 1e-5


def test_cudnn_autotuning_is_off_while_tiles_run_and_restored_after() -> None:
    model = _model("small_no_mefc", torch.float32)
    seen: list[bool] = []
    hook = model.patch_embed.register_forward_hook(lambda *_: seen.append(torch.backends.cudnn.benchmark))
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        restore(model, torch.rand(1, 3, 40, 40), tile=16)
        assert seen and not any(seen) and torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = saved
        hook.remove()
