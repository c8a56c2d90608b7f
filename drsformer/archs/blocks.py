"""The parts the U-shaped networks are built of: channel layer norms, the feed-forward networks (DRSformer's MSFN,
Restormer's GDFN, and the plain DFN and FN of the paper's ablation), the Transformer block, and the patch
embedding and down/up-sampling convolutions. Attribute names follow the published state-dict layouts.

Modules with an ``impl`` attribute compute the same maths two ways: ``"reference"`` as the papers write it,
``"fast"`` rearranged (see each docstring); the FFNs without a fast path compute one way under both names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from .attention import ATTENTION_TYPES, PAPER_RATIOS, AttentionSums, ChannelAttention, TopKSparseAttention, autocast_off
from .mefc import conv_radius

LAYERNORM_TYPES = ("WithBias", "BiasFree")


def _at_least_float32(x: Tensor) -> Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class _ChannelNorm(nn.Module):
    """Layer norm over the channel axis of NCHW maps, eps 1e-5 inside the square root (``body.weight``...).

    Statistics are computed in float32 (float64 for float64 inputs) and the result is returned in the input's
    dtype: under fp16 autocast a channel variance above 65504 would otherwise become inf, and ``rsqrt(inf) = 0``
    would zero the features.
    """

    def __init__(self, dim: int, with_bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if with_bias else None

    def forward_reference(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        with autocast_off(x.device.type):
            t = _at_least_float32(x).flatten(2).transpose(1, 2)  # (B, HW, C) as the paper's code does
            var = t.var(-1, keepdim=True, unbiased=False)
            if self.bias is None:
                t = t / torch.sqrt(var + 1e-5) * self.weight
            else:
                t = (t - t.mean(-1, keepdim=True)) / torch.sqrt(var + 1e-5) * self.weight + self.bias
            return t.transpose(1, 2).reshape(b, c, h, w).to(x.dtype)

    def forward_fast(self, x: Tensor) -> Tensor:
        with autocast_off(x.device.type):
            xf = _at_least_float32(x)
            weight = self.weight.to(xf.dtype)
            bias = None if self.bias is None else self.bias.to(xf.dtype)
            if bias is not None and x.is_contiguous(memory_format=torch.channels_last):
                # NHWC storage: the permuted view is contiguous, so the fused kernel runs without copies.
                out = F.layer_norm(xf.permute(0, 2, 3, 1), x.shape[1:2], weight, bias, 1e-5)
                return out.permute(0, 3, 1, 2).to(x.dtype)
            var, mean = torch.var_mean(xf, dim=1, keepdim=True, correction=0)
            scale = torch.rsqrt(var + 1e-5)
            if bias is None:
                return (xf * scale * weight.view(1, -1, 1, 1)).to(x.dtype)
            return torch.addcmul(bias.view(1, -1, 1, 1), (xf - mean) * scale, weight.view(1, -1, 1, 1)).to(x.dtype)


class LayerNorm(nn.Module):
    """``WithBias`` (standard) or ``BiasFree`` (no centring, no bias) channel layer norm (``norm*.body``)."""

    def __init__(self, dim: int, layernorm_type: str, impl: str = "fast") -> None:
        super().__init__()
        if layernorm_type not in LAYERNORM_TYPES:
            raise ConfigError(f"LayerNorm_type must be one of {LAYERNORM_TYPES}, got {layernorm_type!r}")
        self.impl = impl
        self.body = _ChannelNorm(dim, with_bias=layernorm_type == "WithBias")

    def forward(self, x: Tensor) -> Tensor:
        return self.body.forward_fast(x) if self.impl == "fast" else self.body.forward_reference(x)


def _halves_evens_first(hidden: int) -> list[int]:
    """The order of the ``2 * hidden`` first-stage channels the fast MSFN computes: in each half, the channels at
    even offsets, then those at odd offsets."""
    return [half + k for half in (0, hidden) for parity in (0, 1) for k in range(parity, hidden, 2)]


class MixedScaleFeedForward(nn.Module):
    """MSFN: 1x1 up -> parallel depthwise 3x3 / 5x5 (+ReLU) -> the halves swap branches -> grouped 3x3 / 5x5
    (+ReLU) -> 1x1 down.

    The grouped convolutions (``dwconv3x3_1``, ``dwconv5x5_1``) have two input channels per group: output ``g``
    reads channels ``2g`` and ``2g + 1`` of ``cat([a, b])``, ``a`` and ``b`` halves of the two depth-wise
    branches. CPU libraries run such convolutions several times slower than depth-wise ones, so the fast path
    computes each as two depth-wise convolutions, one over the even-numbered inputs and one over the odd ones,
    added. For those inputs to come out of the concatenation without a gather, the first stage computes its
    channels evens first (``project_in``, ``dwconv3x3`` and ``dwconv5x5`` with their output channels permuted
    once per call, a few kilobytes of weights): each even or odd set is then two contiguous slices. When
    ``hidden`` is odd, the pair that straddles ``a`` and ``b`` comes out right too: an even position in ``b`` is
    then an odd channel of ``b``. The 1x1 down-projection of ``cat([x1, x2])`` is split into
    ``W_1 x1 + W_2 x2``, so that concatenation is never built.

    ``pair_split`` chooses: None (the default) splits on CPU tensors only, where it was measured (1.26-1.50x for
    the whole model); True or False forces it. Exported graphs keep the grouped convolutions, which ONNX Runtime
    ran 4-6 % faster than the split ones (docs/benchmarks.md).
    """

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool, impl: str = "fast") -> None:
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.hidden = hidden
        self.impl = impl
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv3x3 = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.dwconv5x5 = nn.Conv2d(hidden * 2, hidden * 2, 5, padding=2, groups=hidden * 2, bias=bias)
        self.dwconv3x3_1 = nn.Conv2d(hidden * 2, hidden, 3, padding=1, groups=hidden, bias=bias)
        self.dwconv5x5_1 = nn.Conv2d(hidden * 2, hidden, 5, padding=2, groups=hidden, bias=bias)
        self.project_out = nn.Conv2d(hidden * 2, dim, kernel_size=1, bias=bias)
        self.pair_split: bool | None = None
        self.order: Tensor
        self.register_buffer("order", torch.tensor(_halves_evens_first(hidden)), persistent=False)

    def _mixed_scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.project_in(x)
        x1_3, x2_3 = F.relu(self.dwconv3x3(x)).chunk(2, dim=1)
        x1_5, x2_5 = F.relu(self.dwconv5x5(x)).chunk(2, dim=1)
        x1 = F.relu(self.dwconv3x3_1(torch.cat([x1_3, x1_5], dim=1)))
        x2 = F.relu(self.dwconv5x5_1(torch.cat([x2_3, x2_5], dim=1)))
        return x1, x2

    def forward_reference(self, x: Tensor) -> Tensor:
        return self.project_out(torch.cat(self._mixed_scale(x), dim=1))

    @staticmethod
    def _permuted(conv: nn.Conv2d, order: Tensor) -> tuple[Tensor, Tensor | None]:
        bias = None if conv.bias is None else conv.bias[order]
        return conv.weight[order], bias

    def _pairs_as_depthwise(self, conv: nn.Conv2d, evens: Tensor, odds: Tensor) -> Tensor:
        """``conv`` (two inputs per group) of the interleaving of ``evens`` and ``odds``, then ReLU."""
        weight, padding = conv.weight, conv.padding
        out = F.conv2d(evens, weight[:, :1], conv.bias, padding=padding, groups=self.hidden)
        return out.add_(F.conv2d(odds, weight[:, 1:], padding=padding, groups=self.hidden)).relu_()

    def forward_fast(self, x: Tensor) -> Tensor:
        split_pairs = x.device.type == "cpu" if self.pair_split is None else self.pair_split
        if not split_pairs:
            x1, x2 = self._mixed_scale(x)
            w1, w2 = self.project_out.weight.split(self.hidden, dim=1)
            return F.conv2d(x1, w1, self.project_out.bias).add_(F.conv2d(x2, w2))
        hidden, order = self.hidden, self.order
        split = (hidden + 1) // 2  # in each half: the even offsets, then the odd ones
        x = F.conv2d(x, *self._permuted(self.project_in, order))
        d3 = F.conv2d(x, *self._permuted(self.dwconv3x3, order), padding=1, groups=2 * hidden).relu_()
        d5 = F.conv2d(x, *self._permuted(self.dwconv5x5, order), padding=2, groups=2 * hidden).relu_()
        # One split per map (in training its backward is one concatenation, where slices would each fill a
        # zero map): per half, its even offsets and its odd ones.
        sizes = [split, hidden - split] * 2
        d3_parts, d5_parts = d3.split(sizes, dim=1), d5.split(sizes, dim=1)
        outs = []
        for half, conv in ((0, self.dwconv3x3_1), (1, self.dwconv5x5_1)):
            even_3, odd_3 = d3_parts[2 * half], d3_parts[2 * half + 1]
            even_5, odd_5 = d5_parts[2 * half], d5_parts[2 * half + 1]
            if hidden % 2:  # cat([a, b]) puts b's offset j at position hidden + j: even when j is odd
                even_5, odd_5 = odd_5, even_5
            evens, odds = torch.cat([even_3, even_5], dim=1), torch.cat([odd_3, odd_5], dim=1)
            outs.append(self._pairs_as_depthwise(conv, evens, odds))
        w1, w2 = self.project_out.weight.split(hidden, dim=1)
        return F.conv2d(outs[0], w1, self.project_out.bias).add_(F.conv2d(outs[1], w2))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_fast(x) if self.impl == "fast" else self.forward_reference(x)

    def receptive_radius(self) -> int:
        first = max(conv_radius(self.dwconv3x3), conv_radius(self.dwconv5x5))
        return first + max(conv_radius(self.dwconv3x3_1), conv_radius(self.dwconv5x5_1))


class GatedDconvFeedForward(nn.Module):
    """GDFN (Restormer's): 1x1 up to 2 x hidden -> 3x3 depth-wise -> ``GELU(x1) * x2`` -> 1x1 down
    (``project_in``, ``dwconv``, ``project_out``)."""

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool, impl: str = "fast") -> None:
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.impl = impl
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)

    def receptive_radius(self) -> int:
        return conv_radius(self.dwconv)


class DconvFeedForward(nn.Module):
    """DFN: 1x1 up to hidden -> 3x3 depth-wise -> GELU -> 1x1 down (``project_in``, ``dwconv``, ``project_out``)."""

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool, impl: str = "fast") -> None:
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.impl = impl
        self.project_in = nn.Conv2d(dim, hidden, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.project_out(F.gelu(self.dwconv(self.project_in(x))))

    def receptive_radius(self) -> int:
        return conv_radius(self.dwconv)


class PlainFeedForward(nn.Module):
    """FN (the original Transformer's, per pixel): 1x1 up to hidden -> GELU -> 1x1 down (``project_in``,
    ``project_out``)."""

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool, impl: str = "fast") -> None:
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.impl = impl
        self.project_in = nn.Conv2d(dim, hidden, kernel_size=1, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.project_out(F.gelu(self.project_in(x)))

    def receptive_radius(self) -> int:
        return 0


FeedForward = MixedScaleFeedForward | GatedDconvFeedForward | DconvFeedForward | PlainFeedForward
FFN_TYPES: dict[str, type[FeedForward]] = {
    "msfn": MixedScaleFeedForward,
    "gdfn": GatedDconvFeedForward,
    "dfn": DconvFeedForward,
    "fn": PlainFeedForward,
}
FFNS = tuple(FFN_TYPES)


class TransformerBlock(nn.Module):
    """A Transformer block: ``x + attention(LN(x))`` then ``x + ffn(LN(x))``. DRSformer's block has top-k sparse
    attention and MSFN; Restormer's has dense attention and GDFN (``attention``, ``ffn``; ``topk_ratios`` for
    top-k). Attribute names are both papers' (``norm1``, ``attn``, ``norm2``, ``ffn``).

    With ``checkpointing`` set (see :meth:`DRSformer.set_activation_checkpointing`), training keeps only the
    block's input and recomputes the rest during the backward pass.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_expansion_factor: float,
        bias: bool,
        LayerNorm_type: str,
        impl: str,
        attention: str = "topk",
        ffn: str = "msfn",
        topk_ratios: Sequence[str | float] = PAPER_RATIOS,
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, LayerNorm_type, impl)
        if attention == "topk":
            self.attn: ChannelAttention = TopKSparseAttention(dim, num_heads, bias, impl, topk_ratios)
        else:
            self.attn = ATTENTION_TYPES[attention](dim, num_heads, bias, impl)
        self.norm2 = LayerNorm(dim, LayerNorm_type, impl)
        self.ffn = FFN_TYPES[ffn](dim, ffn_expansion_factor, bias, impl)
        self.checkpointing = False

    def _body(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))

    def forward(self, x: Tensor) -> Tensor:
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(self._body, x, use_reentrant=False)
        return self._body(x)

    # The block split at its one global step, for tiled inference: the attention weights depend on sums over
    # every position (attention_sums of q and k); given them, the block is local.
    def query_key(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The attention's q and k (B, heads, C / heads, H, W); each pixel sees :meth:`query_key_radius` pixels."""
        q, k, _ = self.attn.project_qkv(self.norm1(x))
        return q, k

    def query_key_radius(self) -> int:
        return conv_radius(self.attn.qkv_dwconv)

    def forward_with_sums(self, x: Tensor, sums: AttentionSums) -> Tensor:
        """The block's output given the attention sums of its whole input; reads :meth:`receptive_radius` pixels."""
        _, _, v = self.attn.project_qkv(self.norm1(x))
        x = x + self.attn.apply_weights(self.attn.weights(sums), v)
        return x + self.ffn(self.norm2(x))

    def receptive_radius(self) -> int:
        return conv_radius(self.attn.qkv_dwconv) + self.ffn.receptive_radius()


class OverlapPatchEmbed(nn.Module):
    """3x3 conv from image to features (``patch_embed.proj``)."""

    def __init__(self, in_channels: int, dim: int, bias: bool = False) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=3, padding=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """3x3 conv halving channels, then pixel-unshuffle: C -> 2C, H/2 x W/2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """3x3 conv doubling channels, then pixel-shuffle: C -> C/2, 2H x 2W."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)
