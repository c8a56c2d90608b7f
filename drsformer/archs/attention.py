"""Top-k sparse attention (TKSA): channel attention where each query row keeps only its k largest scores.

Per head, with L2-normalised q, k of shape (C, N) and a learnable temperature t, the scores are
``S = t * q k^T`` (C x C). For each of the four ratios k_i in (C/2, 2C/3, 3C/4, 4C/5) (integer part), the
scores outside a row's top k_i are set to -inf, the row is soft-maxed, and the four results are mixed with the
learnable scalars ``attn1..attn4``: ``out = sum_i a_i softmax(mask_i(S)) v``.

Two implementations of the same formula:

* :func:`sparse_attention_reference` does it literally (four top-k, four masked softmaxes, four products
  with v), as the paper and the published code do.
* :func:`sparse_attention_fast` does one top-k at the largest k (which yields all four thresholds), one
  ``exp`` of the row-max-shifted scores (the row maximum survives every mask), folds the four normalised masks
  and ``a_i`` into a single C x C weight matrix, and multiplies v once.

Ties: the fast path keeps every score >= the k-th largest, so when scores tie exactly at a threshold it keeps
more than k entries and soft-maxes over all of them (a row of equal scores becomes a uniform average). The
reference keeps exactly k, choosing among the tied entries in whatever order ``torch.topk`` returns them. With
continuous inputs ties have probability zero and both paths agree to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

# (numerator, denominator) of the four top-k ratios.
TOPK_RATIOS = ((1, 2), (2, 3), (3, 4), (4, 5))


def topk_counts(channels: int) -> tuple[int, ...]:
    """The four k values for ``channels`` channels per head: ``int(C*n/d)`` as in the paper's code."""
    counts = tuple(channels * n // d for n, d in TOPK_RATIOS)
    if counts[0] < 1:
        raise ConfigError(f"top-k sparse attention needs at least 2 channels per head, got {channels}")
    return counts


def normalized_scores(q: Tensor, k: Tensor, temperature: Tensor) -> Tensor:
    """``temperature * normalize(q) @ normalize(k)^T`` over the last (spatial) dimension.

    Half-precision q and k are normalised in float32: the norm's 1e-12 floor underflows to 0 in fp16, which
    turns an all-zero row (a blank image region) into 0/0 = NaN.
    """
    if q.dtype in (torch.float16, torch.bfloat16):
        q, k = q.float(), k.float()
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1)
    return (q @ k.transpose(-2, -1)) * temperature


def sparse_attention_reference(q: Tensor, k: Tensor, v: Tensor, temperature: Tensor, mix: Sequence[Tensor]) -> Tensor:
    """The paper's formula, step by step. q, k, v: (B, heads, C, N); returns (B, heads, C, N)."""
    scores = normalized_scores(q, k, temperature)
    out = None
    for count, weight in zip(topk_counts(scores.shape[-1]), mix, strict=True):
        index = scores.topk(count, dim=-1).indices
        keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, index, True)
        probs = scores.masked_fill(~keep, float("-inf")).softmax(dim=-1)
        term = (probs @ v) * weight
        out = term if out is None else out + term
    return out


def sparse_attention_weights(scores: Tensor, mix: Sequence[Tensor]) -> Tensor:
    """The single C x C matrix ``sum_i a_i softmax(mask_i(scores))`` (ties kept, see module docstring)."""
    counts = topk_counts(scores.shape[-1])
    top = scores.topk(max(counts), dim=-1).values
    # The row max is in every kept set, so shifting by it is exact and keeps exp() <= 1; its gradient
    # contribution is exactly zero, hence detach.
    shifted = torch.exp(scores - top[..., :1].detach())
    coefficient = None
    for count, weight in zip(counts, mix, strict=True):
        keep = scores >= top[..., count - 1 : count]
        kept = shifted * keep
        term = keep * (weight / kept.sum(dim=-1, keepdim=True))
        coefficient = term if coefficient is None else coefficient + term
    return shifted * coefficient


def sparse_attention_fast(q: Tensor, k: Tensor, v: Tensor, temperature: Tensor, mix: Sequence[Tensor]) -> Tensor:
    """Same result as :func:`sparse_attention_reference` with one top-k, one exp and one product with v."""
    scores = normalized_scores(q, k, temperature)
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()  # C x C is tiny; keep the normalisers accurate
    weights = sparse_attention_weights(scores, mix)
    return weights.to(v.dtype) @ v


class TopKSparseAttention(nn.Module):
    """TKSA block body. Attribute names follow the published state-dict layout (``attn.qkv`` ...)."""

    def __init__(self, dim: int, num_heads: int, bias: bool, impl: str = "fast") -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"dim {dim} is not divisible by num_heads {num_heads}")
        topk_counts(dim // num_heads)
        self.num_heads = num_heads
        self.impl = impl
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)
        self.attn1 = nn.Parameter(torch.tensor([0.2]))
        self.attn2 = nn.Parameter(torch.tensor([0.2]))
        self.attn3 = nn.Parameter(torch.tensor([0.2]))
        self.attn4 = nn.Parameter(torch.tensor([0.2]))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        heads = self.num_heads
        q, k, v = self.qkv_dwconv(self.qkv(x)).reshape(b, 3, heads, c // heads, h * w).unbind(1)
        attend = sparse_attention_fast if self.impl == "fast" else sparse_attention_reference
        out = attend(q, k, v, self.temperature, (self.attn1, self.attn2, self.attn3, self.attn4))
        return self.project_out(out.reshape(b, c, h, w))
