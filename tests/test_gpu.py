"""The CUDA paths, one test each: run by ``scripts/gpu_check.sh`` (``pytest -m cuda``) on the device it is given.

The device is ``$DRSFORMER_CHECK_DEVICE`` (default ``cuda``; these tests skip when it is missing). The default
test run leaves them out (``-m "not cuda"`` in pyproject.toml); ``scripts/gpu_check.sh --device cpu --quick``
runs them on the CPU, and a CI test runs that, so they stay working between GPU sessions.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta

import numpy as np
import pytest
import torch
from conftest import load_reference
from test_tiling import LEVEL_BOUNDARIES
from test_train import _records, _same, _tiny_options

from drsformer import tiling
from drsformer.archs import from_checkpoint
from drsformer.cli import main
from drsformer.data.io import write_image
from drsformer.inference import pick_tile, restore

pytestmark = pytest.mark.cuda


@pytest.fixture
def device() -> str:
    name = os.environ.get("DRSFORMER_CHECK_DEVICE", "cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("no CUDA device here: scripts/gpu_check.sh runs these on a GPU (or --device cpu)")
    return name


@contextlib.contextmanager
def full_float32():
    """No TF32 while comparing with the CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_an_injected_nan_rolls_back_in_mixed_precision(tmp_path, device: str, precision: str) -> None:
    options = _tiny_options(
        tmp_path,
        train={"total_iter": 6, "precision": precision, "max_bad_steps": 2,
               "pixel_opt": {"type": "NaNOnCalls", "nan_calls": [3, 4]}},
        logger={"print_freq": 1, "save_checkpoint_freq": 2, "use_tb_logger": False},
        val={"val_freq": 6},
    )  # fmt: skip
    assert main(["train", "-opt", str(options), "--no-progress", "--device", device]) == 0
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"process(es) on {torch.device(device).type}" in log and f"precision {precision}" in log
    assert "iterations 3..4: 2 bad steps; reloaded 2.state (iteration 2)" in log
    assert all(np.isfinite(r["loss"]) for r in _records(tmp_path / "run", "train") if r["iter"] not in (3, 4))


@pytest.mark.parametrize("storage", ["device", "host"])
def test_exact_tiling_on_the_device_equals_the_cpu(device: str, storage: str) -> None:
    reference = load_reference("small_mefc")
    cpu = from_checkpoint(reference).eval()
    model = from_checkpoint(reference).eval().to(device)
    image = torch.rand(1, 3, 75, 98)
    with full_float32():
        whole_cpu = restore(cpu, image)
        tiled = restore(model, image, tile=24, storage=storage)
    assert tiled.device.type == "cpu" and (tiled - whole_cpu).abs().max().item() < 1e-4


def test_auto_tile_fits_and_gives_the_whole_image(tmp_path, device: str, capsys) -> None:
    reference = load_reference("small_no_mefc")
    model = from_checkpoint(reference).eval().to(device)
    tile, reason = pick_tile(model, device)
    assert tile % 64 == 0 and 64 <= tile <= 4096, reason
    torch.save({"params": reference["params"]}, tmp_path / "w.pth")
    rgb = np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    write_image(tmp_path / "in" / "a.png", rgb)
    argv = ["derain", "--weights", str(tmp_path / "w.pth"), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out")]
    assert main([*argv, "--device", device, "--tile", "auto", "--quiet"]) == 0
    assert "--tile auto: tile" in capsys.readouterr().err


def test_a_deterministic_resume_is_bit_identical(tmp_path, device: str) -> None:
    """8 iterations at once, or 4 and then 4 more from the saved state: the same weights, bit for bit."""
    options = _tiny_options(tmp_path, train={"total_iter": 8, "deterministic": True}, val={"val_freq": 100},
                            logger={"print_freq": 4, "save_checkpoint_freq": 4})  # fmt: skip
    base = ["train", "-opt", str(options), "--no-progress", "--device", device]
    assert main([*base, "--set", f"path.experiments_root={tmp_path}/whole"]) == 0
    assert main([*base, "--set", "train.total_iter=4"]) == 0
    assert main([*base, "--resume", "auto"]) == 0
    assert _same(tmp_path / "whole/models/net_g_latest.pth", tmp_path / "run/models/net_g_latest.pth")


def test_a_single_process_group_on_the_device(device: str, monkeypatch) -> None:
    """NCCL on a GPU (gloo on the CPU): the group forms through our store and runs our collectives."""
    import torch.distributed as dist

    from drsformer.engine import distributed

    server = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, timeout=timedelta(seconds=60))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(server.port))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    target = torch.device(device)
    backend = "nccl" if target.type == "cuda" else "gloo"
    store = distributed.rendezvous_store(0, 1, timedelta(seconds=60))
    dist.init_process_group(backend, store=store, rank=0, world_size=1)
    try:
        assert dist.get_backend() == backend
        assert distributed.reduce_flags([torch.tensor(True, device=target), False], target) == [True, False]
        assert distributed.broadcast_bytes(b"state bytes", target) == b"state bytes"
        total = torch.ones(3, device=target)
        assert distributed.all_reduce_sum(total).tolist() == [1.0, 1.0, 1.0]
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- exact tiles against the GPU's own ordering


class SlowCopies(tiling.MapCopies):
    """Each copy into a map queued behind a GPU sleep: a read of the map that does not wait for it sees old data."""

    def write(self, window: torch.Tensor, tile: torch.Tensor) -> None:
        if self.asynchronous:
            torch.cuda._sleep(20_000_000)  # about 10 ms
        super().write(window, tile)


class SlowTiler(tiling.ExactTiler):
    copies_type = SlowCopies


@pytest.mark.parametrize("storage", ["host", "device"])
@pytest.mark.parametrize("size, tile", LEVEL_BOUNDARIES)
def test_tiles_equal_the_whole_image_where_a_level_fits_one_tile(device: str, storage: str, size, tile) -> None:
    """Each level boundary crossed: one level in one tile, the level above in several."""
    model = from_checkpoint(load_reference("small_mefc")).eval().to(device)
    x = torch.rand(1, 3, *size)
    with full_float32(), torch.no_grad():
        whole = model(x.to(device)).cpu()
        tiled = SlowTiler(model, tile, contextlib.nullcontext, storage=storage)(x.to(device)).cpu()
    assert torch.isfinite(tiled).all() and (tiled - whole).abs().max().item() < 1e-4


def test_a_tiled_self_ensemble_keeps_its_maps_in_one_place(device: str, monkeypatch) -> None:
    """Free memory read as shrinking after the first pass: all 8 passes still use the place chosen first."""
    model = from_checkpoint(load_reference("small_mefc")).eval().to(device)
    x = torch.rand(1, 3, 40, 48)
    need = tiling.storage_bytes_per_pixel(model) * 40 * 48
    readings: list[int] = []

    def shrinking(_device: torch.device) -> int:
        readings.append(int(need / tiling.AUTO_FRACTION * (1.2 - 0.4 * len(readings))))
        return readings[-1]

    monkeypatch.setattr(tiling, "free_memory", shrinking)
    with full_float32():
        tiled = restore(model, x, tile=16, self_ensemble=True)
        whole = restore(model, x, self_ensemble=True)
    assert len(readings) == 1 and (tiled - whole).abs().max().item() < 1e-4


def test_host_maps_pin_what_they_hold(device: str) -> None:
    """On CUDA host maps are page-locked to their own size (the pinned allocator would round each up to a power
    of 2), no more of them than the run holds at its peak, and unpinned after the run; on the CPU nothing is
    pinned."""
    model = from_checkpoint(load_reference("small_mefc")).eval().to(device)
    x = torch.rand(1, 3, 600, 700)
    tiler = tiling.ExactTiler(model, 128, contextlib.nullcontext, storage="host")
    with torch.no_grad():
        tiler(x)
    image = 3 * 4 * 600 * 704  # the padded image stays in ordinary memory
    assert tiler.peak_bytes + image == tiling.storage_bytes_per_pixel(model) * 600 * 704
    if device.startswith("cuda"):  # each map on pages of its own: at most a page more per map held
        assert tiler.peak_bytes <= tiler.host_maps.peak_bytes <= tiler.peak_bytes + 16 * tiling.HostMaps.PAGE
    else:
        assert tiler.host_maps.peak_bytes == 0
    assert not tiler.host_maps.registered


def test_bench_times_the_device_it_is_given(device: str) -> None:
    """On CUDA timed on the stream of the model's GPU (the last one here): the median step is as long as a step
    timed from the host with a synchronisation, not the ~0 ms of events recorded on another GPU's stream."""
    import time

    from drsformer.archs import DRSformer
    from drsformer.timing import BenchSettings, run_paths

    cuda = device.startswith("cuda")
    target = torch.device("cuda", torch.cuda.device_count() - 1) if cuda else torch.device(device)
    settings = BenchSettings(height=128, width=128, device=str(target), warmup=2, repeat=5)
    model = DRSformer(dim=16, num_blocks=[1, 1, 1, 1])
    (result,), _ = run_paths(model, settings, ["fast"])
    model = model.to(target).eval()
    image = torch.rand(1, 3, 128, 128, device=target)
    sync = torch.cuda.synchronize if cuda else lambda _device: None
    with torch.inference_mode():
        sync(target)
        begin = time.perf_counter()
        for _ in range(5):
            model(image)
        sync(target)
    wall_ms = (time.perf_counter() - begin) * 200
    assert result.median_ms > 0.3 * wall_ms, (result.median_ms, wall_ms)


def test_one_process_trains_on_the_gpu_it_names(device: str, monkeypatch) -> None:
    """``--device cuda:N`` (the last GPU here) is the GPU of a single process; with several processes it is refused,
    since each process takes GPU LOCAL_RANK."""
    from drsformer.engine import distributed
    from drsformer.errors import ConfigError

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    named = f"cuda:{torch.cuda.device_count() - 1}" if device.startswith("cuda") else "cpu"
    assert distributed.init(named).device == torch.device(named)
    if device.startswith("cuda"):
        monkeypatch.setenv("WORLD_SIZE", "2")
        with pytest.raises(ConfigError, match="each one uses GPU LOCAL_RANK"):
            distributed.init(named)
