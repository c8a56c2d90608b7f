"""scripts/profile_cpu.py: its clocked convolution table counts every convolution of a forward pass, and its
per-part table covers every part of the network once per call."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from torch.utils.flop_counter import FlopCounterMode

from drsformer.archs.blocks import MixedScaleFeedForward
from drsformer.archs.drsformer import DRSformer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def profile_cpu():
    spec = importlib.util.spec_from_file_location("profile_cpu", ROOT / "scripts" / "profile_cpu.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["profile_cpu"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mefc", [True, False])
def test_every_convolution_is_clocked_with_its_flops(profile_cpu, mefc) -> None:
    torch.manual_seed(0)
    model = DRSformer(**TINY, mefc=mefc).eval()
    image = torch.rand(1, 3, 16, 24)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(image)
    expected = counter.get_flop_counts()["Global"][torch.ops.aten.convolution]
    original = F.conv2d
    with profile_cpu.ClockedParts(model, clock_convolutions=True) as clocked, torch.inference_mode():
        model(image)
    assert F.conv2d is original  # put back on exit
    gflop = sum(entry[1] for entry in clocked.kinds.values())
    assert gflop * 1e9 == pytest.approx(expected, rel=1e-9)
    assert sum(entry[2] for entry in clocked.kinds.values()) > 0
    assert "depth-wise 5x5 convolutions" in clocked.kinds and "1x1 convolutions" in clocked.kinds


def test_the_parts_cover_the_network_once_per_call(profile_cpu) -> None:
    model = DRSformer(**TINY).eval()
    with profile_cpu.ClockedParts(model, clock_convolutions=True) as clocked, torch.inference_mode():
        model(torch.rand(1, 3, 16, 16))
    parts = clocked.parts
    assert parts["latent: feed-forward (MixedScaleFeedForward)"][2] == TINY["num_blocks"][3]
    assert parts["decoder_level1: layer norms"][2] == 2 * TINY["num_blocks"][0]
    assert parts["refinement (MEFC)"][2] == parts["encoder_level0 (MEFC)"][2] == 1
    assert clocked.resolution["latent: attention (TopKSparseAttention)"] == 2
    conv_seconds = sum(entry[1] for entry in parts.values())
    assert 0 < conv_seconds <= sum(entry[0] for entry in clocked.kinds.values()) + 1e-9
    for seconds, convolutions, _ in parts.values():
        assert convolutions <= seconds
    assert not model._forward_hooks and all(not m._forward_pre_hooks for m in model.modules())  # hooks removed


def test_bf16_runs_under_autocast_and_counts_the_same_work(profile_cpu) -> None:
    torch.manual_seed(0)
    model = DRSformer(**TINY).eval()
    image = torch.rand(1, 3, 16, 16)
    seen: list[torch.dtype] = []
    handle = model.output.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    gflop = {}
    for precision in ("fp32", "bf16"):
        with profile_cpu.ClockedParts(model, clock_convolutions=True) as clocked:
            profile_cpu.run_once(model, image, "infer", precision)
        gflop[precision] = sum(entry[1] for entry in clocked.kinds.values())
    handle.remove()
    assert seen == [torch.float32, torch.bfloat16]
    assert gflop["bf16"] == pytest.approx(gflop["fp32"], rel=1e-12) and gflop["fp32"] > 0


def test_the_floor_counts_every_matrix_product_and_each_filter_map(profile_cpu) -> None:
    """The floor's amounts: the mm/bmm FLOPs read from the profiler equal FlopCounterMode's count of everything
    that is not a convolution, the per-channel filters are counted apart from the convolutions that are matrix
    products, and their bytes are their inputs and outputs, counted here by hand for a reference MSFN."""
    torch.manual_seed(0)
    model = DRSformer(**TINY).eval()
    image = torch.rand(1, 3, 16, 24)
    cpu = [torch.profiler.ProfilerActivity.CPU]
    with profile_cpu.ClockedParts(model, clock_convolutions=True) as clocked, torch.inference_mode():
        model(image)
    with torch.profiler.profile(activities=cpu, record_shapes=True, with_flops=True) as prof, torch.inference_mode():
        model(image)
    products = profile_cpu.matrix_product_gflop(prof.key_averages(), repeat=1)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(image)
    counts = counter.get_flop_counts()["Global"]
    expected = sum(n for op, n in counts.items() if op is not torch.ops.aten.convolution) / 1e9
    assert products == pytest.approx(expected, rel=1e-9) and products > 0  # the attention's products
    filters = sum(g for kind, (_, g, _) in clocked.kinds.items() if not profile_cpu.is_matrix_product(kind))
    convolutions = sum(g for _, g, _ in clocked.kinds.values())
    assert 0 < filters < convolutions
    ffn = MixedScaleFeedForward(6, 2.0, bias=False, impl="reference")  # hidden 12
    with profile_cpu.ClockedParts(ffn, clock_convolutions=True) as clocked, torch.inference_mode():
        ffn(torch.rand(1, 6, 8, 8))
    # dwconv3x3, dwconv5x5: 24 -> 24 channels; dwconv3x3_1, dwconv5x5_1: 24 -> 12; 64 pixels, 4 bytes each
    assert clocked.filter_bytes == (2 * (24 + 24) + 2 * (24 + 12)) * 64 * 4


def test_machine_rates_are_measured(profile_cpu) -> None:
    product_rate, bandwidth = profile_cpu.machine_rates(side=128, megabytes=4, runs=2)
    assert 0.01 < product_rate < 1e5 and 0.01 < bandwidth < 1e5
