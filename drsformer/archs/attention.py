"""Channel attention: top-k sparse attention (TKSA, DRSformer's) and dense attention (MDTA, Restormer's).

Per head, with L2-normalised q, k of shape (C, N) and a learnable temperature t, the scores are
``S = t * q k^T`` (C x C). Dense attention soft-maxes every row: ``out = softmax(S) v``. Top-k attention, for
each ratio r_i (the paper's four: 1/2, 2/3, 3/4, 4/5, giving k_i = int(r_i C)), sets the scores outside a row's
top k_i to -inf, soft-maxes the row, and mixes the results with the learnable scalars ``attn1..attnN``:
``out = sum_i a_i softmax(mask_i(S)) v``. Both hold the same ``temperature``, ``qkv``, ``qkv_dwconv`` and
``project_out`` (Restormer's names), and top-k attention adds its mixing scalars (DRSformer's).

Two implementations of the same formula:

* :func:`sparse_attention_reference` does it literally (a top-k, a masked softmax and a product with v per
  ratio), as the paper and the published code do; :func:`dense_attention_reference` likewise (Restormer's).
* The fast path forms the scores from three sums over positions (:func:`attention_sums`: ``q k^T`` and the
  squared norms of the rows of q and k, so nothing of size N is normalised). For top-k it does one top-k at
  the largest k (which yields every threshold), one ``exp`` of the row-max-shifted scores (the row maximum
  survives every mask), folds the normalised masks and ``a_i`` into a single C x C weight matrix, and
  multiplies v once.

Everything global about the attention is in those three sums: the weights are a C x C matrix computed from
them, applied to v pixel by pixel. That is what lets :mod:`drsformer.tiling` run the model tile by tile and
still give the whole-image output. The sums are formed in float32 (float64 for float64 inputs) with autocast
off, whatever the precision of q and k.

Ties: the fast path keeps every score >= the k-th largest, so when scores tie exactly at a threshold it keeps
more than k entries and soft-maxes over all of them (a row of equal scores becomes a uniform average). The
reference keeps exactly k, choosing among the tied entries in whatever order ``torch.topk`` returns them. With
continuous inputs ties have probability zero and both paths agree to rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from fractions import Fraction
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .channel_mixing import mix_channels

ATTENTIONS = ("topk", "dense")
# The paper's four top-k ratios, as an options file writes them.
PAPER_RATIOS = ("1/2", "2/3", "3/4", "4/5")


def parse_ratios(ratios: Sequence[str | float | Fraction], key: str = "topk_ratios") -> tuple[Fraction, ...]:
    """Top-k ratios as exact fractions: ``"2/3"``, ``0.5`` or ``1`` each; at least one, each in (0, 1]; a
    :class:`ConfigError` naming ``key`` otherwise. (Write 2/3 as ``"2/3"``: a decimal such as 0.667 is a
    different ratio.)"""
    if isinstance(ratios, (str, bytes)) or not isinstance(ratios, Sequence) or not ratios:
        raise ConfigError(f"{key}: expected a non-empty list of ratios such as ['1/2', '2/3'], got {ratios!r}")
    parsed = []
    for ratio in ratios:
        try:
            value = Fraction(str(ratio)) if not isinstance(ratio, Fraction) else ratio
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"{key}: {ratio!r} is not a ratio; write it as '2/3' or 0.5") from None
        if isinstance(ratio, bool) or not 0 < value <= 1:
            raise ConfigError(f"{key}: each ratio must be in (0, 1], got {ratio!r}")
        parsed.append(value)
    return tuple(parsed)


def format_ratios(ratios: Sequence[str | float | Fraction]) -> list[str]:
    """``['1/2', '2/3']``: ratios as an options file (and a model's config) writes them."""
    return [str(r) for r in parse_ratios(ratios)]


def topk_counts(channels: int, ratios: Sequence[str | float | Fraction] = PAPER_RATIOS) -> tuple[int, ...]:
    """The k of each ratio for ``channels`` channels per head: ``int(C * r)`` as in the paper's code."""
    counts = tuple(channels * r.numerator // r.denominator for r in parse_ratios(ratios))
    if min(counts) < 1:
        raise ConfigError(
            f"top-k ratios {format_ratios(ratios)} keep no channel of a head of {channels}; use fewer heads, a "
            "larger width, or larger ratios"
        )
    return counts


# F.normalize's floor on a row's norm: ``x / max(|x|, eps)``.
NORM_EPS = 1e-12


class AttentionSums(NamedTuple):
    """Sums over positions that determine the attention weights: (B, heads, C, C), (B, heads, C), (B, heads, C)."""

    gram: Tensor  # sum_n q[c, n] k[d, n]
    q_squares: Tensor  # sum_n q[c, n]^2
    k_squares: Tensor

    def __add__(self, other: object) -> AttentionSums:
        if not isinstance(other, AttentionSums):
            return NotImplemented
        return AttentionSums(*(a + b for a, b in zip(self, other, strict=True)))


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """A region where autocast is disabled (on the device types that have autocast)."""
    if device_type in ("cpu", "cuda"):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def attention_sums(q: Tensor, k: Tensor) -> AttentionSums:
    """The sums over the last (position) dimension of q, k: (B, heads, C, N), in float32 with autocast off."""
    dtype = _accumulation_dtype(q.dtype)
    with autocast_off(q.device.type):
        q, k = q.to(dtype), k.to(dtype)
        return AttentionSums(q @ k.transpose(-2, -1), q.square().sum(-1), k.square().sum(-1))


def scores_from_sums(sums: AttentionSums, temperature: Tensor) -> Tensor:
    """``temperature * normalize(q) @ normalize(k)^T`` from the sums (the norms floored at ``NORM_EPS``, as
    F.normalize does; the floor is applied to the squares so that an all-zero row has a finite gradient)."""
    with autocast_off(sums.gram.device.type):
        norm_q = sums.q_squares.clamp_min(NORM_EPS**2).sqrt()
        norm_k = sums.k_squares.clamp_min(NORM_EPS**2).sqrt()
        return sums.gram / (norm_q[..., :, None] * norm_k[..., None, :]) * temperature.to(sums.gram.dtype)


def normalized_scores(q: Tensor, k: Tensor, temperature: Tensor) -> Tensor:
    """``temperature * normalize(q) @ normalize(k)^T`` over the last (spatial) dimension, literally.

    Computed in float32 (float64 for float64 inputs) with autocast off: in fp16 the norm's 1e-12 floor
    underflows to 0, which turns an all-zero row (a blank image region) into 0/0 = NaN.
    """
    dtype = _accumulation_dtype(q.dtype)
    with autocast_off(q.device.type):
        q = F.normalize(q.to(dtype), dim=-1)
        k = F.normalize(k.to(dtype), dim=-1)
        return (q @ k.transpose(-2, -1)) * temperature.to(dtype)


def sparse_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, temperature: Tensor, mix: Sequence[Tensor], counts: Sequence[int] | None = None
) -> Tensor:
    """The paper's formula, step by step. q, k, v: (B, heads, C, N); returns (B, heads, C, N). ``counts``: the k of
    each ratio (default: the paper's four)."""
    scores = normalized_scores(q, k, temperature)
    out = None
    for count, weight in zip(counts or topk_counts(scores.shape[-1]), mix, strict=True):
        index = scores.topk(count, dim=-1).indices
        keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, index, True)
        probs = scores.masked_fill(~keep, float("-inf")).softmax(dim=-1)
        term = (probs.to(v.dtype) @ v) * weight
        out = term if out is None else out + term
    assert out is not None  # four top-k terms
    return out


def sparse_attention_weights_reference(
    scores: Tensor, mix: Sequence[Tensor], counts: Sequence[int] | None = None
) -> Tensor:
    """``sum_i a_i softmax(mask_i(scores))`` with the top-k masks, literally (exactly k kept)."""
    out = None
    for count, weight in zip(counts or topk_counts(scores.shape[-1]), mix, strict=True):
        index = scores.topk(count, dim=-1).indices
        keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, index, True)
        term = scores.masked_fill(~keep, float("-inf")).softmax(dim=-1) * weight
        out = term if out is None else out + term
    assert out is not None  # one term per ratio
    return out


def sparse_attention_weights(scores: Tensor, mix: Sequence[Tensor], counts: Sequence[int] | None = None) -> Tensor:
    """The single C x C matrix ``sum_i a_i softmax(mask_i(scores))`` (ties kept, see module docstring)."""
    counts = counts or topk_counts(scores.shape[-1])
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
    assert coefficient is not None  # one term per ratio
    return shifted * coefficient


def sparse_attention_fast(
    q: Tensor, k: Tensor, v: Tensor, temperature: Tensor, mix: Sequence[Tensor], counts: Sequence[int] | None = None
) -> Tensor:
    """Same result as :func:`sparse_attention_reference` with one top-k, one exp and one product with v."""
    weights = sparse_attention_weights(scores_from_sums(attention_sums(q, k), temperature), mix, counts)
    return weights.to(v.dtype) @ v


def dense_attention_reference(q: Tensor, k: Tensor, v: Tensor, temperature: Tensor) -> Tensor:
    """Restormer's formula, step by step: ``softmax(t normalize(q) normalize(k)^T) v``; (B, heads, C, N)."""
    return normalized_scores(q, k, temperature).softmax(dim=-1).to(v.dtype) @ v


class ChannelAttention(nn.Module):
    """What both attentions share: q, k, v from a 1x1 and a 3x3 depth-wise conv, heads over channels, a learnable
    temperature per head, and the output projection. Subclasses say how the scores become weights."""

    def __init__(self, dim: int, num_heads: int, bias: bool, impl: str = "fast") -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.impl = impl
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v of shape (B, heads, C / heads, H, W): local, each pixel sees its 3 x 3 neighbourhood."""
        b, c, h, w = x.shape
        qkv = self.qkv_dwconv(self.qkv(x))
        q, k, v = qkv.reshape(b, 3, self.num_heads, c // self.num_heads, h, w).unbind(1)
        return q, k, v

    def weights(self, sums: AttentionSums) -> Tensor:
        """The (B, heads, C, C) matrix applied to v, from the sums over every position the attention sees."""
        raise NotImplementedError

    def attend_reference(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The attention's formula written out; q, k, v: (B, heads, C, N)."""
        raise NotImplementedError

    def apply_weights(self, weights: Tensor, v: Tensor) -> Tensor:
        """``project_out(weights @ v)`` pixel by pixel; v: (B, heads, C / heads, H, W).

        Both are linear maps over channels, so they are composed first (``W_out @ blockdiag(weights)``, C x C per
        image) and applied to v in one product, written in v's layout (NHWC when q, k, v are).
        """
        b, heads, c, h, w = v.shape
        dim = heads * c
        project = self.project_out.weight.view(dim, heads, c).to(weights.dtype)
        composed = torch.einsum("ohi,bhij->bohj", project, weights).reshape(b, dim, dim).to(v.dtype)
        out = mix_channels(composed, v.reshape(b, dim, h, w))
        bias = self.project_out.bias
        return out if bias is None else out + bias.to(out.dtype).view(1, -1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.project_qkv(x)
        if self.impl == "fast":
            return self.apply_weights(self.weights(attention_sums(q.flatten(-2), k.flatten(-2))), v)
        return self.project_out(self.attend_reference(q.flatten(-2), k.flatten(-2), v.flatten(-2)).reshape(x.shape))


class TopKSparseAttention(ChannelAttention):
    """TKSA (DRSformer's): per row only the top ``ratio`` of the scores, for each ratio, mixed by ``attn1..attnN``.
    Attribute names follow the published state-dict layout (``attn.qkv`` ..., ``attn.attn1``)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        bias: bool,
        impl: str = "fast",
        ratios: Sequence[str | float | Fraction] = PAPER_RATIOS,
    ) -> None:
        super().__init__(dim, num_heads, bias, impl)
        self.ratios = format_ratios(ratios)
        self.counts = topk_counts(dim // num_heads, self.ratios)
        for i in range(len(self.counts)):
            self.register_parameter(f"attn{i + 1}", nn.Parameter(torch.tensor([0.2])))

    @property
    def mix(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self, f"attn{i + 1}") for i in range(len(self.counts)))

    def weights(self, sums: AttentionSums) -> Tensor:
        scores = scores_from_sums(sums, self.temperature)
        combine = sparse_attention_weights if self.impl == "fast" else sparse_attention_weights_reference
        return combine(scores, self.mix, self.counts)

    def attend_reference(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return sparse_attention_reference(q, k, v, self.temperature, self.mix, self.counts)


class DenseAttention(ChannelAttention):
    """MDTA (Restormer's): every score kept, ``softmax(S) v``; no mixing scalars."""

    def weights(self, sums: AttentionSums) -> Tensor:
        return scores_from_sums(sums, self.temperature).softmax(dim=-1)

    def attend_reference(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return dense_attention_reference(q, k, v, self.temperature)


ATTENTION_TYPES: dict[str, type[ChannelAttention]] = {"topk": TopKSparseAttention, "dense": DenseAttention}
