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
from .depthwise import depthwise_conv2d
from .mefc import conv_radius

LAYERNORM_TYPES = ("WithBias", "BiasFree")


def _at_least_float32(x: Tensor) -> Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _is_nhwc(x: Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last)


class _ChannelNorm(nn.Module):
    """Layer norm over the channel axis of NCHW maps, eps 1e-5 inside the square root (``body.weight``...).

    Statistics are computed in float32 (float64 for float64 inputs) and the result is returned in the input's
    dtype: under fp16 autocast a channel variance above 65504 would otherwise become inf, and ``rsqrt(inf) = 0``
    would zero the features. (bf16 NHWC input on CPU goes to PyTorch's kernel as it is: it computes in float32.)
    """

    def __init__(self, dim: int, with_bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if with_bias else None
        # NCHW input too through F.layer_norm on the permuted view: ONNX files, where that is one
        # LayerNormalization node, which ONNX Runtime runs faster than reductions over the channel axis.
        self.permuted_kernel = False

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
            if self.bias is not None and (self.permuted_kernel or _is_nhwc(x)):
                # NHWC storage: the permuted view is contiguous, so the fused kernel runs without copies. PyTorch's
                # CPU kernel reads bf16 with float32 weights and computes in float32, so bf16 goes in as it is
                # (no two conversion passes: 2.5x faster for 96 channels at 512^2).
                bf16_cpu = x.dtype == torch.bfloat16 and x.device.type == "cpu"
                source = x if bf16_cpu else _at_least_float32(x)
                dtype = torch.float32 if bf16_cpu else source.dtype
                out = F.layer_norm(
                    source.permute(0, 2, 3, 1), x.shape[1:2], self.weight.to(dtype), self.bias.to(dtype), 1e-5
                )
                out = out.permute(0, 3, 1, 2).to(x.dtype)
                # NCHW in, NCHW out: a channels-last result would make the tracer guard on its strides downstream
                return out if _is_nhwc(x) else out.contiguous()
            xf = _at_least_float32(x)
            weight = self.weight.to(xf.dtype)
            bias = None if self.bias is None else self.bias.to(xf.dtype)
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


def _slices(tensor: Tensor | None, sizes: list[int]) -> Sequence[Tensor | None]:
    return [None] * len(sizes) if tensor is None else tensor.split(sizes)


class MixedScaleFeedForward(nn.Module):
    """MSFN: 1x1 up -> parallel depthwise 3x3 / 5x5 (+ReLU) -> the halves swap branches -> grouped 3x3 / 5x5
    (+ReLU) -> 1x1 down.

    The grouped convolutions (``dwconv3x3_1``, ``dwconv5x5_1``) have two input channels per group: output ``g``
    reads channels ``2g`` and ``2g + 1`` of ``cat([a, b])``, ``a`` and ``b`` halves of the two depth-wise
    branches. CPU libraries run such convolutions several times slower than depth-wise ones, and the
    concatenations feeding them copy every channel once more. The fast path (``pair_split``) avoids both:

    - ``project_in``'s output channels are taken per half, in four segments (evens, odds of each half), each
      computed as its own contiguous map, and both first-stage depth-wise convolutions run on each segment;
    - a grouped convolution's output ``g`` is then a depth-wise convolution of one segment plus one of another,
      added in place. With ``hidden = 2m``, outputs ``g < m`` read the 3x3 branch's evens and odds at offset ``g``,
      and outputs ``g >= m`` the 5x5 branch's at offset ``g - m``. With ``hidden = 2m + 1`` the 5x5 branch's
      roles swap (its evens are the pairs' second inputs), and output ``m`` reads the last 3x3 even and the first
      5x5 even: it is computed with the 3x3 outputs, plus one single-channel add;
    - ``project_out`` of ``cat([x1, x2])`` is the sum of its columns applied to each piece, so no concatenation
      is built. With odd ``hidden`` one piece carries a placeholder channel, which gets a zero column.

    ``pair_split`` chooses: None (the default) on CPU tensors only, where it was measured (docs/benchmarks.md);
    True or False forces it. ONNX files get a third form (:mod:`drsformer.deploy.blocked_msfn`), pt2 files the
    grouped one.
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

    def _first_stage_segments(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """ReLU(3x3) and ReLU(5x5) depth-wise maps of ``project_in``'s channels, per segment: a's evens, a's
        odds, b's evens, b's odds."""
        order, evens, odds = self.order, (self.hidden + 1) // 2, self.hidden // 2
        sizes = [evens, odds, evens, odds]
        convs = (self.project_in, self.dwconv3x3, self.dwconv5x5)
        weights = [conv.weight[order].split(sizes) for conv in convs]
        biases = [_slices(None if conv.bias is None else conv.bias[order], sizes) for conv in convs]
        segments = []
        for k in range(4):
            p = F.conv2d(x, weights[0][k], biases[0][k])
            segments.append(
                (
                    depthwise_conv2d(p, weights[1][k], biases[1][k], 1).relu_(),
                    depthwise_conv2d(p, weights[2][k], biases[2][k], 2).relu_(),
                )
            )
        return segments

    def _pairs(
        self, conv: nn.Conv2d, evens: tuple[Tensor, Tensor], odds: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """``ReLU(conv(cat([x_3, x_5])))`` for one half, from its segments (``evens``, ``odds``: the 3x3 and 5x5
        maps), as two pieces: outputs ``[0, len(first))`` and the rest (for odd ``hidden``, after a placeholder
        channel)."""
        (even_3, even_5), (odd_3, odd_5) = evens, odds
        m, padding = self.hidden // 2, conv_radius(conv)
        first_inputs, second_inputs = conv.weight[:, :1], conv.weight[:, 1:]
        bias = conv.bias
        if self.hidden % 2 == 0:
            low_bias, high_bias = (None, None) if bias is None else bias.split(m)
            low = depthwise_conv2d(even_3, first_inputs[:m], low_bias, padding)
            low.add_(depthwise_conv2d(odd_3, second_inputs[:m], None, padding))
            high = depthwise_conv2d(even_5, first_inputs[m:], high_bias, padding)
            high.add_(depthwise_conv2d(odd_5, second_inputs[m:], None, padding))
            return low.relu_(), high.relu_()
        # hidden = 2m + 1: output m pairs the last 3x3 even with the first 5x5 even; 5x5 odds come first in a pair.
        if bias is None:
            low_bias = high_bias = None
        else:  # high's channel 0 is a placeholder: output m's second input, without a bias of its own
            low_bias, high_bias = bias[: m + 1], torch.cat([bias.new_zeros(1), bias[m + 1 :]])
        low = depthwise_conv2d(even_3, first_inputs[: m + 1], low_bias, padding)
        low[:, :m].add_(depthwise_conv2d(odd_3, second_inputs[:m], None, padding))
        high = depthwise_conv2d(even_5, second_inputs[m:], high_bias, padding)  # channel 0: output m's second input
        high[:, 1:].add_(depthwise_conv2d(odd_5, first_inputs[m + 1 :], None, padding))
        low[:, m:].add_(high[:, :1])
        return low.relu_(), high.relu_()

    def _segmented(self, x: Tensor) -> Tensor:
        segments = self._first_stage_segments(x)
        hidden = self.hidden
        out: Tensor | None = None
        for half, conv in ((0, self.dwconv3x3_1), (1, self.dwconv5x5_1)):
            low, high = self._pairs(conv, segments[2 * half], segments[2 * half + 1])
            columns = self.project_out.weight[:, half * hidden : (half + 1) * hidden]
            low_columns, high_columns = columns[:, : low.shape[1]], columns[:, low.shape[1] :]
            if hidden % 2:  # the placeholder channel of ``high`` gets a zero column
                high_columns = torch.cat([high_columns.new_zeros(high_columns.shape[0], 1, 1, 1), high_columns], 1)
            piece = F.conv2d(low, low_columns, self.project_out.bias if out is None else None)
            piece.add_(F.conv2d(high, high_columns))
            out = piece if out is None else out.add_(piece)
        assert out is not None
        return out

    def forward_fast(self, x: Tensor) -> Tensor:
        split_pairs = x.device.type == "cpu" if self.pair_split is None else self.pair_split
        if split_pairs and self.hidden >= 2:
            return self._segmented(x)
        x1, x2 = self._mixed_scale(x)
        w1, w2 = self.project_out.weight.split(self.hidden, dim=1)
        return F.conv2d(x1, w1, self.project_out.bias).add_(F.conv2d(x2, w2))

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
