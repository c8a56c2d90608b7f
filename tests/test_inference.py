"""The shared inference function: self-ensemble, precision, settings, uint8/uint16 conversion (tiling: test_tiling)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from skimage import img_as_ubyte
from torch import nn

from drsformer.archs import DRSformer
from drsformer.errors import ConfigError
from drsformer.inference import CPU_DEFAULT_TILE, image_to_tensor, pick_tile, restore, tensor_to_image


def local_net(seed: int = 0) -> nn.Module:
    """A purely local model: two 3x3 convolutions, so each output pixel sees 2 pixels around it."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.GELU(), nn.Conv2d(6, 3, 3, padding=1), nn.Sigmoid()).eval()


class SymmetricNet(nn.Module):
    """Convolutions whose kernels are invariant to the 8 flips/rotations: the model commutes with all of them."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(5, 3, 3, padding=1)
        with torch.no_grad():
            for conv in (self.a, self.b):
                w = conv.weight
                views = [torch.rot90(v, k, (-2, -1)) for v in (w, w.flip(-1)) for k in range(4)]
                conv.weight.copy_(torch.stack(views).mean(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.b(torch.relu(self.a(x))))


def test_self_ensemble_of_an_equivariant_model_is_its_plain_output() -> None:
    torch.manual_seed(1)
    net, image = SymmetricNet().eval(), torch.rand(1, 3, 23, 30)
    plain = restore(net, image)
    assert (restore(net, image, self_ensemble=True) - plain).abs().max().item() < 1e-6


def test_self_ensemble_averages_the_eight_flips_and_rotations() -> None:
    net, image = local_net(3), torch.rand(1, 3, 20, 26)
    outputs = []
    with torch.no_grad():
        for flip in (False, True):
            x = image.flip(-1) if flip else image
            for k in range(4):
                y = torch.rot90(net(torch.rot90(x, k, (-2, -1))), -k, (-2, -1))
                outputs.append(y.flip(-1) if flip else y)
    expected = torch.stack(outputs).mean(0)
    got = restore(net, image, self_ensemble=True)
    assert (got - expected).abs().max().item() < 1e-6
    assert (got - restore(net, image)).abs().max().item() > 1e-3  # this model is not symmetric


def test_output_equals_the_authors_test_procedure() -> None:
    """Reflect-pad to a multiple of 8, run, clamp, crop, img_as_ubyte: what the authors' test script does."""
    model = DRSformer(**TINY).eval()
    image = torch.rand(1, 3, 37, 45)
    ours = tensor_to_image(restore(model, image))
    with torch.no_grad():
        padded = F.pad(image, (0, 48 - 45, 0, 40 - 37), mode="reflect")
        out = torch.clamp(model(padded), 0, 1)[:, :, :37, :45]
    theirs = img_as_ubyte(out[0].permute(1, 2, 0).numpy())
    assert ours.shape == theirs.shape == (37, 45, 3) and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1
    assert np.mean(ours == theirs) > 0.999


def test_reduced_precision_returns_float32_close_to_fp32() -> None:
    model = DRSformer(**TINY).eval()
    image = torch.rand(1, 3, 24, 32)
    fp32 = restore(model, image, "fp32")
    bf16 = restore(model, image, precision="bf16")
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert (bf16 - fp32).abs().mean().item() < 0.02


def test_settings_that_cannot_work_are_config_errors() -> None:
    net, image = local_net(), torch.rand(1, 3, 16, 16)
    with pytest.raises(ConfigError, match="--tile must be at least 8"):
        restore(net, image, tile=4)
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        restore(net, image, precision="fp8")


def test_uint_conversions_round_trip() -> None:
    rng = np.random.default_rng(0)
    for dtype, peak in ((np.uint8, 255), (np.uint16, 65535)):
        image = rng.integers(0, peak + 1, (5, 7, 3)).astype(dtype)
        tensor = image_to_tensor(image)
        assert tensor.shape == (1, 3, 5, 7) and tensor.dtype == torch.float32
        assert np.array_equal(tensor_to_image(tensor, dtype), image)


def test_auto_tile_on_cuda_fits_half_the_free_memory(monkeypatch) -> None:
    """The CUDA probe, with torch.cuda's memory queries answered by hand: 8 GiB free, and a probe pass whose peak
    is 10 KiB per pixel above what was allocated before it."""
    probe_pixels = 128 * 128
    calls = []
    fake = {
        "mem_get_info": lambda device=None: (8 * 2**30, 80 * 2**30),
        "memory_allocated": lambda device=None: 3 * 2**20,
        "max_memory_allocated": lambda device=None: 3 * 2**20 + probe_pixels * 10 * 1024,
        "reset_peak_memory_stats": lambda device=None: calls.append("reset"),
        "synchronize": lambda device=None: calls.append("sync"),
        "get_device_name": lambda device=None: "Fake GPU",
    }
    for name, fn in fake.items():
        monkeypatch.setattr(torch.cuda, name, fn)
    seen = []
    net = local_net()
    net.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    tile, reason = pick_tile(net, "cuda")
    # sqrt(0.5 * 8 GiB / 10 KiB) = 647.6 pixels, rounded down to a multiple of 64
    assert tile == 640 and reason == "tile 640: 8.0 GiB free on Fake GPU, about 10.0 KiB per pixel measured at 128x128"
    assert seen == [(1, 3, 128, 128)] and calls[:2] == ["sync", "reset"]
    fake["mem_get_info"] = lambda device=None: (2**40, 2**40)  # a huge GPU: capped
    monkeypatch.setattr(torch.cuda, "mem_get_info", fake["mem_get_info"])
    assert pick_tile(net, "cuda")[0] == 4096
    assert pick_tile(net, "cpu") == (CPU_DEFAULT_TILE, f"tile {CPU_DEFAULT_TILE}: the default on cpu")
