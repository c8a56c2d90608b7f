"""Both variants run forward and backward at any size; the fast path equals the reference path."""

import pytest
import torch
from conftest import TINY

from drsformer.archs import DRSformer, build_network
from drsformer.registry import ConfigError


@pytest.mark.parametrize("mefc", [True, False])
@pytest.mark.parametrize("size", [(16, 24), (13, 21), (5, 7)])
def test_forward_backward_any_size(mefc: bool, size: tuple[int, int]) -> None:
    model = DRSformer(**TINY, mefc=mefc)
    x = torch.rand(2, 3, *size, requires_grad=True)
    out = model(x)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("mefc", [True, False])
@pytest.mark.parametrize("layernorm, bias", [("WithBias", False), ("BiasFree", True)])
def test_fast_equals_reference_values_and_parameter_gradients(mefc: bool, layernorm: str, bias: bool) -> None:
    model = DRSformer(**TINY, mefc=mefc, bias=bias, LayerNorm_type=layernorm).double()
    with torch.no_grad():  # move every parameter off its initial value so no wiring hides behind ones/zeros
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.rand(2, 3, 16, 24, dtype=torch.float64)
    results = {}
    for impl in ("reference", "fast"):
        model.set_impl(impl)
        model.zero_grad()
        out = model(x)
        (out * torch.cos(torch.arange(out.numel(), dtype=torch.float64)).view_as(out)).sum().backward()
        results[impl] = out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    assert (results["fast"][0] - results["reference"][0]).abs().max() < 1e-10
    for name, grad in results["reference"][1].items():
        assert (results["fast"][1][name] - grad).abs().max() < 1e-8, name


def test_fast_cpu_path_runs_channels_last_and_returns_input_layout() -> None:
    model = DRSformer(**TINY).eval()
    seen = []
    model.encoder_level1[0].register_forward_hook(
        lambda m, i, o: seen.append(o.is_contiguous(memory_format=torch.channels_last))
    )
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        out_fast = model(x)
        model.set_impl("reference")
        out_ref = model(x)
    assert seen == [True, False]
    assert out_fast.is_contiguous() and out_ref.is_contiguous()
    torch.testing.assert_close(out_fast, out_ref, rtol=0, atol=1e-5)


def test_set_impl_by_part() -> None:
    model = DRSformer(**TINY).set_impl("reference").set_impl("fast", ["attention"])
    assert model.encoder_level1[0].attn.impl == "fast"
    assert model.encoder_level1[0].ffn.impl == "reference"
    assert model.layout_impl == "reference"
    with pytest.raises(ValueError, match="unknown part 'attn'"):
        model.set_impl("fast", ["attn"])
    with pytest.raises(ValueError, match="impl must be one of"):
        model.set_impl("quick")


def test_padding_matches_manual_reflect_pad() -> None:
    model = DRSformer(**TINY).eval()
    x = torch.rand(1, 3, 13, 21)
    with torch.no_grad():
        out = model(x)
        manual = model.forward_features(torch.nn.functional.pad(x, (0, 3, 0, 3), mode="reflect"))[..., :13, :21]
    torch.testing.assert_close(out, manual, rtol=0, atol=1e-5)


def test_invalid_configs_are_rejected() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        DRSformer(dim=8, heads=[3, 2, 4, 8])
    with pytest.raises(ValueError, match="keep no channel of a head of 1"):
        DRSformer(dim=8, heads=[8, 2, 4, 8])
    with pytest.raises(ValueError, match="4 entries"):
        DRSformer(num_blocks=[1, 1, 1])
    with pytest.raises(ValueError, match="LayerNorm_type"):
        DRSformer(**TINY, LayerNorm_type="Batch")


def test_build_network_from_yaml_section() -> None:
    model = build_network({"type": "DRSformer", **TINY, "mefc": False})
    assert isinstance(model, DRSformer) and not model.has_mefc
    with pytest.raises(ConfigError, match="network_g.dimm: unknown key; did you mean dim?"):
        build_network({"type": "DRSformer", "dimm": 8})
    with pytest.raises(ConfigError, match="unknown arch type 'Uformer'"):
        build_network({"type": "Uformer"})


def test_module_apply_reaches_every_submodule() -> None:
    """``model.apply(fn)`` (weight initialisation) works: no block hides nn.Module.apply with a method of its own."""
    seen: list[str] = []
    DRSformer(**TINY).apply(lambda module: seen.append(type(module).__name__))
    assert seen.count("TransformerBlock") == 2 * (1 + 1 + 1) + 2 and seen[-1] == "DRSformer"


# hidden 10, 12 (even), 127 and 3 (odd: one pair straddles the branches) and 1 (no pair split)
@pytest.mark.parametrize("dim, factor", [(4, 2.66), (6, 2.0), (48, 2.66), (3, 1.0), (2, 0.5)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("pair_split", [True, False])
def test_msfn_pairs_as_depthwise_equal_the_grouped_convolutions(dim, factor, bias, channels_last, pair_split) -> None:
    """The fast MSFN, computed in segments with the pair-grouped convolutions as depth-wise ones (the CPU default)
    or grouped (CUDA, exports), against the paper's formulation: values, input and parameter gradients, for even
    and odd hidden widths."""
    from drsformer.archs.blocks import MixedScaleFeedForward

    torch.manual_seed(0)
    ffn = MixedScaleFeedForward(dim, factor, bias).double()
    ffn.pair_split = pair_split
    assert ffn.hidden % 2 == (ffn.hidden in (127, 3, 1))
    with torch.no_grad():
        for p in ffn.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, dim, 9, 11, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    results = {}
    for impl in ("reference", "fast"):
        ffn.impl = impl
        ffn.zero_grad()
        given = x.detach().clone().requires_grad_()
        out = ffn(given)
        (out * torch.cos(torch.arange(out.numel(), dtype=torch.float64)).view_as(out)).sum().backward()
        results[impl] = out.detach(), given.grad, {n: p.grad.clone() for n, p in ffn.named_parameters()}
    assert (results["fast"][0] - results["reference"][0]).abs().max() < 1e-12
    assert (results["fast"][1] - results["reference"][1]).abs().max() < 1e-12
    for name, grad in results["reference"][2].items():
        assert (results["fast"][2][name] - grad).abs().max() < 1e-12, name
    assert "order" not in ffn.state_dict()  # the channel order is computed, not stored: published keys unchanged


def test_msfn_fast_path_under_bf16_autocast_stays_close() -> None:
    from drsformer.archs.blocks import MixedScaleFeedForward

    torch.manual_seed(0)
    ffn = MixedScaleFeedForward(48, 2.66, False)
    x = torch.randn(1, 48, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        reference = ffn.forward_reference(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = ffn.forward_fast(x)
    assert fast.dtype == torch.bfloat16
    assert (fast.float() - reference).abs().max() < 0.05 * reference.abs().max()
