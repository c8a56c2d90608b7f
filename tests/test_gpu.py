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
from test_train import _records, _same, _tiny_options

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
