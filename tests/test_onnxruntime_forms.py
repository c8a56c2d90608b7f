"""What ONNX files compute differently from eager PyTorch, for ONNX Runtime's CPU kernels, and that it is the same
maths: the MSFN's blocked form (only 1x1 and depth-wise convolutions, channel counts multiples of ONNX Runtime's
block) and layer norms as one kernel over the permuted view."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY
from torch import nn

from drsformer.archs import DRSformer
from drsformer.archs.blocks import LayerNorm, MixedScaleFeedForward
from drsformer.deploy.blocked_msfn import BLOCK, BlockedMixedScaleFeedForward, block_msfns
from drsformer.deploy.graph import ExportedDRSformer

# (dim, expansion factor, bias): the paper's odd widths 127 and 255, even ones, the smallest, a width below one block.
SHAPES = [(48, 2.66, True), (96, 2.66, False), (6, 2.0, True), (192, 2.66, True), (1, 2.0, True), (5, 1.0, False)]


def _msfn(dim: int, factor: float, bias: bool, dtype: torch.dtype = torch.float64) -> MixedScaleFeedForward:
    torch.manual_seed(dim)
    ffn = MixedScaleFeedForward(dim, factor, bias).to(dtype).eval()
    with torch.no_grad():
        for p in ffn.parameters():  # larger than the default init, so that every ReLU cuts
            p.normal_(0, 0.3)
    return ffn


@pytest.mark.parametrize(("dim", "factor", "bias"), SHAPES)
def test_blocked_msfn_computes_the_papers_formulation(dim, factor, bias) -> None:
    ffn = _msfn(dim, factor, bias)
    x = torch.randn(2, dim, 13, 10, dtype=torch.float64)
    with torch.no_grad():
        expected = ffn.forward_reference(x)
        out = BlockedMixedScaleFeedForward(ffn)(x)
    assert expected.std() > 0.1
    assert (out - expected).abs().max() <= 1e-12 * expected.abs().max(), ffn.hidden


@pytest.mark.parametrize(("dim", "factor", "bias"), SHAPES[:4])
def test_blocked_msfn_in_float32_agrees_with_the_fast_path(dim, factor, bias) -> None:
    ffn = _msfn(dim, factor, bias, torch.float32)
    x = torch.randn(1, dim, 16, 16)
    with torch.no_grad():
        fast = ffn.forward_fast(x)
        out = BlockedMixedScaleFeedForward(ffn)(x)
    assert (out - fast).abs().max() <= 1e-5 * fast.abs().max()


@pytest.mark.parametrize(("dim", "factor", "bias"), SHAPES)
def test_every_convolution_is_one_onnxruntime_runs_blocked(dim, factor, bias) -> None:
    """1x1 or depth-wise, with channel counts that are multiples of the block (the model's own width aside)."""
    blocked = BlockedMixedScaleFeedForward(_msfn(dim, factor, bias))
    convs = [m for m in blocked.modules() if isinstance(m, nn.Conv2d)]
    assert convs
    for conv in convs:
        assert conv.groups in (1, conv.in_channels) and conv.groups in (1, conv.out_channels)
        hidden_sides = [c for c in (conv.in_channels, conv.out_channels) if c != dim]
        assert hidden_sides and all(c % BLOCK == 0 for c in hidden_sides)
        assert conv.kernel_size[0] == 1 or conv.groups > 1


def test_a_width_without_pairs_is_refused() -> None:
    with pytest.raises(ValueError, match="hidden width 1"):
        BlockedMixedScaleFeedForward(MixedScaleFeedForward(1, 1.0, True))


def test_onnx_exports_take_the_blocked_form_and_pt2_the_grouped_one() -> None:
    torch.manual_seed(0)
    model = DRSformer(**TINY).eval()
    count = sum(isinstance(m, MixedScaleFeedForward) for m in model.modules())
    onnx_form = ExportedDRSformer(model, for_onnxruntime=True)
    pt2_form = ExportedDRSformer(model)
    assert not any(isinstance(m, MixedScaleFeedForward) for m in onnx_form.modules())
    assert sum(isinstance(m, BlockedMixedScaleFeedForward) for m in onnx_form.modules()) == count
    assert {m.pair_split for m in pt2_form.modules() if isinstance(m, MixedScaleFeedForward)} == {False}
    assert {m.pair_split for m in model.modules() if isinstance(m, MixedScaleFeedForward)} == {None}  # untouched
    assert {m.body.permuted_kernel for m in onnx_form.modules() if isinstance(m, LayerNorm)} == {True}
    assert {m.body.permuted_kernel for m in pt2_form.modules() if isinstance(m, LayerNorm)} == {False}
    assert {m.body.permuted_kernel for m in model.modules() if isinstance(m, LayerNorm)} == {False}
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        expected = model(x)
        assert (onnx_form(x) - expected).abs().max() < 1e-5
        assert (pt2_form(x) - expected).abs().max() < 1e-5


def test_block_msfns_counts_what_it_replaced() -> None:
    model = nn.Sequential(MixedScaleFeedForward(8, 2.66, True), nn.Sequential(MixedScaleFeedForward(4, 2.0, False)))
    assert block_msfns(model) == 2
    assert isinstance(model[0], BlockedMixedScaleFeedForward) and isinstance(model[1][0], BlockedMixedScaleFeedForward)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_layer_norm_on_the_permuted_view_equals_the_reference(dtype) -> None:
    torch.manual_seed(1)
    norm = LayerNorm(24, "WithBias").to(dtype)
    with torch.no_grad():
        norm.body.weight.normal_()
        norm.body.bias.normal_()
    x = torch.randn(2, 24, 9, 7, dtype=dtype) * 3 + 1
    expected = norm.body.forward_reference(x)
    norm.body.permuted_kernel = True
    out = norm(x)
    assert out.shape == x.shape and out.dtype == dtype
    assert (out - expected).abs().max() <= (1e-12 if dtype == torch.float64 else 1e-5) * expected.abs().max()


@pytest.mark.parametrize("precision", ["fp16"])
def test_the_onnx_forms_trace_with_free_sides_in_reduced_precision(precision) -> None:
    """A channels-last layer-norm result once made the tracer add stride guards that no free width satisfies."""
    from drsformer.deploy import graph

    torch.manual_seed(0)
    module = ExportedDRSformer(DRSformer(**TINY).eval(), precision, for_onnxruntime=True)
    program = graph.trace(module, graph.example_input(64, 64), dynamic=True)
    x = torch.rand(1, 3, 40, 72)
    with torch.no_grad():
        assert (program.module()(x) - module(x)).abs().max() == 0
