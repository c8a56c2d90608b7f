"""DRSformer: a 4-level U-shaped sparse Transformer for single-image deraining (Chen et al., CVPR 2023).

Constructor arguments follow the published YAML ``network_g`` section. Module attribute names follow the
published state-dict layout, so official ``{'params': ...}`` checkpoints load strictly without key renaming.

Every block has two implementations of the same maths, selected with :meth:`DRSformer.set_impl`:
``"reference"`` computes it as the paper and published code write it, ``"fast"`` (default) rearranges the
algebra (see each module's docstring). Both give the same function on the same parameters. The ``layout`` part
is the memory layout: ``"fast"`` runs CPU inputs channels-last (NHWC), where oneDNN's convolutions and the fused
layer norm are much faster; CUDA inputs keep the layout they come in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from ..registry import ARCH_REGISTRY, check_kwargs
from .attention import AttentionSums, TopKSparseAttention, autocast_off
from .mefc import MEFC, conv_radius
from .padding import crop_to, is_tracing, pad_to_multiple
from .unet import SIZE_MULTIPLE, build_plan

IMPLS = ("fast", "reference")
IMPL_PARTS = ("attention", "ffn", "mefc", "norm", "layout")
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


class MixedScaleFeedForward(nn.Module):
    """MSFN: 1x1 up -> parallel depthwise 3x3 / 5x5 (+ReLU) -> the halves swap branches -> grouped 3x3 / 5x5
    (+ReLU) -> 1x1 down.

    Fast path: the 1x1 down-projection of ``cat([x1, x2])`` is split into ``W_1 x1 + W_2 x2``, so the widest
    concatenation (2 x hidden channels) becomes an add over ``dim`` channels.
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

    def _mixed_scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.project_in(x)
        x1_3, x2_3 = F.relu(self.dwconv3x3(x)).chunk(2, dim=1)
        x1_5, x2_5 = F.relu(self.dwconv5x5(x)).chunk(2, dim=1)
        x1 = F.relu(self.dwconv3x3_1(torch.cat([x1_3, x1_5], dim=1)))
        x2 = F.relu(self.dwconv5x5_1(torch.cat([x2_3, x2_5], dim=1)))
        return x1, x2

    def forward_reference(self, x: Tensor) -> Tensor:
        return self.project_out(torch.cat(self._mixed_scale(x), dim=1))

    def forward_fast(self, x: Tensor) -> Tensor:
        x1, x2 = self._mixed_scale(x)
        w1, w2 = self.project_out.weight.split(self.hidden, dim=1)
        return F.conv2d(x1, w1, self.project_out.bias).add_(F.conv2d(x2, w2))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_fast(x) if self.impl == "fast" else self.forward_reference(x)

    def receptive_radius(self) -> int:
        first = max(conv_radius(self.dwconv3x3), conv_radius(self.dwconv5x5))
        return first + max(conv_radius(self.dwconv3x3_1), conv_radius(self.dwconv5x5_1))


class TransformerBlock(nn.Module):
    """Sparse Transformer block: ``x + TKSA(LN(x))`` then ``x + MSFN(LN(x))``.

    With ``checkpointing`` set (see :meth:`DRSformer.set_activation_checkpointing`), training keeps only the
    block's input and recomputes the rest during the backward pass.
    """

    def __init__(
        self, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool, LayerNorm_type: str, impl: str
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, LayerNorm_type, impl)
        self.attn = TopKSparseAttention(dim, num_heads, bias, impl)
        self.norm2 = LayerNorm(dim, LayerNorm_type, impl)
        self.ffn = MixedScaleFeedForward(dim, ffn_expansion_factor, bias, impl)
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


# The modules with a fast and a reference implementation (an ``impl`` attribute).
Switchable = TopKSparseAttention | MixedScaleFeedForward | MEFC | LayerNorm


def _stage(n: int, dim: int, heads: int, ffn: float, bias: bool, norm: str, impl: str) -> nn.Sequential:
    return nn.Sequential(*(TransformerBlock(dim, heads, ffn, bias, norm, impl) for _ in range(n)))


def _check_sizes(
    inp_channels: int, out_channels: int, dim: int, num_blocks: Sequence[int], heads: Sequence[int], ffn: float
) -> None:
    """Raises :class:`ConfigError` for sizes no DRSformer can be built with."""
    if len(num_blocks) != 4 or len(heads) != 4:
        raise ConfigError(f"num_blocks and heads need 4 entries each, got {list(num_blocks)} and {list(heads)}")
    for name, value in (("inp_channels", inp_channels), ("out_channels", out_channels), ("dim", dim)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if min(num_blocks) < 1 or min(heads) < 1:
        raise ConfigError(f"num_blocks and heads must be at least 1, got {list(num_blocks)} and {list(heads)}")
    for level, head_count in enumerate(heads):
        width = dim * 2**level
        if width % head_count:
            raise ConfigError(f"level {level + 1}: width {width} is not divisible by {head_count} heads")
        if int(width * ffn) < 1:
            raise ConfigError(f"ffn_expansion_factor {ffn} gives no hidden channels at width {width}")


@ARCH_REGISTRY.register()
class DRSformer(nn.Module):
    """The paper's model. ``mefc=False`` drops both compensators (the Rain200L / SPA-Data model).

    Any H x W is accepted: the input is reflect-padded at the bottom/right to a multiple of 8 and the output
    cropped back, as the published test script does.
    """

    def __init__(
        self,
        inp_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        LayerNorm_type: str = "WithBias",  # the published YAML key
        mefc: bool = True,
        impl: str = "fast",
    ) -> None:
        super().__init__()
        _check_sizes(inp_channels, out_channels, dim, num_blocks, heads, ffn_expansion_factor)
        if impl not in IMPLS:
            raise ConfigError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.config: dict[str, Any] = dict(
            inp_channels=inp_channels,
            out_channels=out_channels,
            dim=dim,
            num_blocks=[int(n) for n in num_blocks],
            heads=[int(h) for h in heads],
            ffn_expansion_factor=ffn_expansion_factor,
            bias=bias,
            LayerNorm_type=LayerNorm_type,
            mefc=mefc,
        )
        self.layout_impl = impl
        args = (ffn_expansion_factor, bias, LayerNorm_type, impl)
        d1, d2, d3, d4 = dim, dim * 2, dim * 4, dim * 8

        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        if mefc:
            self.encoder_level0 = MEFC(d1, impl=impl)
        self.encoder_level1 = _stage(num_blocks[0], d1, heads[0], *args)
        self.down1_2 = Downsample(d1)
        self.encoder_level2 = _stage(num_blocks[1], d2, heads[1], *args)
        self.down2_3 = Downsample(d2)
        self.encoder_level3 = _stage(num_blocks[2], d3, heads[2], *args)
        self.down3_4 = Downsample(d3)
        self.latent = _stage(num_blocks[3], d4, heads[3], *args)

        self.up4_3 = Upsample(d4)
        self.reduce_chan_level3 = nn.Conv2d(d4, d3, kernel_size=1, bias=bias)
        self.decoder_level3 = _stage(num_blocks[2], d3, heads[2], *args)
        self.up3_2 = Upsample(d3)
        self.reduce_chan_level2 = nn.Conv2d(d3, d2, kernel_size=1, bias=bias)
        self.decoder_level2 = _stage(num_blocks[1], d2, heads[1], *args)
        self.up2_1 = Upsample(d2)  # no channel reduction at level 1: the decoder runs at 2 * dim
        self.decoder_level1 = _stage(num_blocks[0], d2, heads[0], *args)
        if mefc:
            self.refinement = MEFC(d2, impl=impl)
        self.output = nn.Conv2d(d2, out_channels, kernel_size=3, padding=1, bias=bias)
        self.plan = build_plan(self.config["num_blocks"], mefc)

    @property
    def has_mefc(self) -> bool:
        return self.config["mefc"]

    def set_impl(self, impl: str, parts: Iterable[str] = IMPL_PARTS) -> DRSformer:
        """Switches ``parts`` (attention, ffn, mefc, norm, layout) to the ``fast`` or ``reference`` implementation."""
        if impl not in IMPLS:
            raise ConfigError(f"impl must be one of {IMPLS}, got {impl!r}")
        kinds: dict[str, type[Switchable]] = {
            "attention": TopKSparseAttention,
            "ffn": MixedScaleFeedForward,
            "mefc": MEFC,
            "norm": LayerNorm,
        }
        parts = list(parts)
        for part in parts:
            if part not in IMPL_PARTS:
                raise ConfigError(f"unknown part {part!r}; choose from {IMPL_PARTS}")
        if "layout" in parts:
            self.layout_impl = impl
        selected = tuple(kinds[p] for p in parts if p != "layout")
        for module in self.modules():
            if isinstance(module, selected):
                module.impl = impl
        return self

    def set_activation_checkpointing(self, enabled: bool = True) -> DRSformer:
        """Recompute each Transformer block in the backward pass instead of storing its activations."""
        for module in self.modules():
            if isinstance(module, TransformerBlock):
                module.checkpointing = enabled
        return self

    def forward_features(self, x: Tensor) -> Tensor:
        """The network on an input whose height and width are multiples of 8: :attr:`plan`, step by step."""
        saved: dict[str, Tensor] = {}
        y = x
        for step in self.plan:
            module = self.get_submodule(step.module)
            if step.kind == "up":
                assert step.skip is not None  # every up step names its skip
                y = torch.cat([module(y), saved.pop(step.skip)], dim=1)
                if step.reduce is not None:
                    y = self.get_submodule(step.reduce)(y)
            elif step.kind == "output":
                y = module(y) + x
            else:
                y = module(y)
            if step.save is not None:
                saved[step.save] = y
        return y

    def forward(self, x: Tensor) -> Tensor:
        padded, size = pad_to_multiple(x, SIZE_MULTIPLE)
        relayout = self.layout_impl == "fast" and x.device.type == "cpu"
        if relayout:
            padded = padded.contiguous(memory_format=torch.channels_last)
        out = self.forward_features(padded)
        if is_tracing() or padded.shape != x.shape:  # traced: the crop belongs to the graph
            out = crop_to(out, size)
        return out.contiguous() if relayout and x.is_contiguous() else out


@ARCH_REGISTRY.register()
def drsformer(**overrides) -> DRSformer:
    """The paper's model with MEFC (Rain200H, DID-Data, DDN-Data): 33,655,424 parameters."""
    check_kwargs(DRSformer, overrides, "drsformer")
    return DRSformer(**{"mefc": True, **overrides})


@ARCH_REGISTRY.register()
def drsformer_no_mefc(**overrides) -> DRSformer:
    """The paper's model without MEFC (Rain200L, SPA-Data): 32,610,304 parameters."""
    check_kwargs(DRSformer, overrides, "drsformer_no_mefc")
    return DRSformer(**{"mefc": False, **overrides})


# Named variants: the paper's two models (``--variant`` on the command line, ``type:`` in YAML).
VARIANTS = {"drsformer": drsformer, "drsformer_no_mefc": drsformer_no_mefc}
