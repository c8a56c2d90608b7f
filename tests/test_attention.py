"""The fast top-k attention computes the paper's formula: values and gradients, ties, reduced precision."""

import pytest
import torch

from drsformer.archs.attention import (
    TopKSparseAttention,
    sparse_attention_fast,
    sparse_attention_reference,
    sparse_attention_weights,
    topk_counts,
)


def test_topk_counts_follow_published_rounding() -> None:
    assert topk_counts(48) == (24, 32, 36, 38)
    assert topk_counts(8) == (4, 5, 6, 6)
    assert topk_counts(2) == (1, 1, 1, 1)
    with pytest.raises(ValueError, match="keep no channel of a head of 1"):
        topk_counts(1)


def _inputs(b: int, heads: int, c: int, n: int) -> list[torch.Tensor]:
    q, k, v = (torch.randn(b, heads, c, n, dtype=torch.float64, requires_grad=True) for _ in range(3))
    temperature = (torch.rand(heads, 1, 1, dtype=torch.float64) + 0.5).requires_grad_()
    mix = [torch.rand(1, dtype=torch.float64).requires_grad_() for _ in range(4)]
    return [q, k, v, temperature, *mix]


@pytest.mark.parametrize("heads, channels", [(1, 48), (2, 8), (4, 3), (8, 2), (1, 13)])
def test_fast_matches_reference_values_and_gradients(heads: int, channels: int) -> None:
    tensors = _inputs(2, heads, channels, 37)
    q, k, v, temperature, *mix = tensors
    upstream = torch.randn(2, heads, channels, 37, dtype=torch.float64)
    results = []
    for attend in (sparse_attention_reference, sparse_attention_fast):
        out = attend(q, k, v, temperature, mix)
        grads = torch.autograd.grad((out * upstream).sum(), tensors)
        results.append((out.detach(), grads))
    (ref_out, ref_grads), (fast_out, fast_grads) = results
    assert (fast_out - ref_out).abs().max().item() < 1e-6
    names = ["q", "k", "v", "temperature", "attn1", "attn2", "attn3", "attn4"]
    # With one survivor per row (C = 2) the softmax is one-hot and the scores get no gradient.
    score_grads = topk_counts(channels)[0] > 1
    for name, g_ref, g_fast in zip(names, ref_grads, fast_grads, strict=True):
        assert g_fast.shape == g_ref.shape
        assert (g_fast - g_ref).abs().max().item() < 1e-6, name
        if score_grads or name not in ("q", "k", "temperature"):
            assert g_ref.abs().max().item() > 0, name  # the comparison is not vacuous


def test_module_paths_agree_with_parameter_gradients() -> None:
    module = TopKSparseAttention(dim=16, num_heads=2, bias=True).double()
    with torch.no_grad():
        for i, p in enumerate([module.attn1, module.attn2, module.attn3, module.attn4]):
            p.fill_(0.1 * (i + 1))
        module.temperature.mul_(torch.tensor([[[0.7]], [[1.3]]], dtype=torch.float64))
    x = torch.randn(2, 16, 6, 10, dtype=torch.float64)
    grads = {}
    for impl in ("reference", "fast"):
        module.impl = impl
        module.zero_grad()
        out = module(x)
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        grads[impl] = (out.detach(), {n: p.grad.clone() for n, p in module.named_parameters()})
    assert (grads["fast"][0] - grads["reference"][0]).abs().max() < 1e-6
    for name, g in grads["reference"][1].items():
        assert (grads["fast"][1][name] - g).abs().max() < 1e-6, name


def test_weights_rows_sum_to_total_mix() -> None:
    scores = torch.randn(3, 2, 10, 10, dtype=torch.float64)
    mix = [torch.tensor([a], dtype=torch.float64) for a in (0.1, 0.2, 0.3, 0.4)]
    weights = sparse_attention_weights(scores, mix)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 10, dtype=torch.float64))
    # Each row keeps at most its top int(4C/5) = 8 entries.
    assert ((weights > 0).sum(-1) == 8).all()


def test_row_of_equal_scores_is_a_uniform_average() -> None:
    c, n = 6, 20
    q = torch.zeros(1, 1, c, n)  # a zero query normalises to zero: every score in its row is exactly 0
    q[..., 1, :] = 1.0  # and one ordinary row
    k = torch.randn(1, 1, c, n)
    v = torch.randn(1, 1, c, n)
    temperature = torch.ones(1, 1, 1)
    mix = [torch.tensor([0.25])] * 4
    out = sparse_attention_fast(q, k, v, temperature, mix)
    assert torch.isfinite(out).all()
    tied = [i for i in range(c) if i != 1]
    torch.testing.assert_close(out[..., tied, :], v.mean(dim=2, keepdim=True).expand(1, 1, c - 1, n))
    assert torch.isfinite(sparse_attention_reference(q, k, v, temperature, mix)).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_no_nan_under_autocast_even_with_ties(dtype: torch.dtype, impl: str) -> None:
    module = TopKSparseAttention(dim=16, num_heads=2, bias=False, impl=impl)
    x = torch.randn(2, 16, 8, 8) * 50  # large activations
    x[1] = 0.0  # a blank image: q is exactly zero, so every score ties at 0
    with torch.autocast("cpu", dtype=dtype):
        out = module(x)
        out.float().sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())


def test_fast_path_in_pure_half_precision_is_finite() -> None:
    q, k, v = (torch.randn(1, 2, 8, 64).half() for _ in range(3))
    k[0, 0] = 1.0
    out = sparse_attention_fast(q, k, v, torch.ones(2, 1, 1).half(), [torch.tensor([0.2]).half()] * 4)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
