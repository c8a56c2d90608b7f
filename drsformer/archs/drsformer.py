"""DRSformer (Chen et al., CVPR 2023) and the network family it belongs to: the 4-level U shape of
:mod:`.unet` built of the blocks of :mod:`.blocks`, with its parts as options.

The defaults are the paper's model. ``attention`` (``topk`` with ``topk_ratios``, or ``dense``), ``ffn``
(``msfn``, ``gdfn``, ``dfn``, ``fn``), ``mefc`` and ``num_refinement_blocks`` (Transformer blocks at full
resolution where MEFC's refinement would be) reproduce the paper's ablations, and Restormer (Zamir et al.,
CVPR 2022) is the configuration with dense attention, GDFN, no MEFC and four refinement blocks
(:mod:`.restormer`). Constructor arguments follow the published YAML ``network_g`` sections; module attribute
names follow the published state-dict layouts, so each paper's ``{'params': ...}`` checkpoints load strictly
without key renaming.

Every block has two implementations of the same maths, selected with :meth:`DRSformer.set_impl`:
``"reference"`` computes it as the papers and published code write it, ``"fast"`` (default) rearranges the
algebra (see each module's docstring). Both give the same function on the same parameters. The ``layout`` part
is the memory layout: ``"fast"`` runs CPU inputs channels-last (NHWC), where oneDNN's convolutions and the fused
layer norm are much faster; CUDA inputs keep the layout they come in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import ARCH_REGISTRY
from .attention import ATTENTIONS, PAPER_RATIOS, ChannelAttention, format_ratios, topk_counts
from .blocks import (
    FFN_TYPES,
    FFNS,
    LAYERNORM_TYPES,
    Downsample,
    LayerNorm,
    OverlapPatchEmbed,
    TransformerBlock,
    Upsample,
)
from .mefc import MEFC
from .padding import crop_to, is_tracing, pad_to_multiple
from .unet import SIZE_MULTIPLE, build_plan

IMPLS = ("fast", "reference")
IMPL_PARTS = ("attention", "ffn", "mefc", "norm", "layout")


# The modules with a fast and a reference implementation (an ``impl`` attribute), by part.
PART_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "attention": (ChannelAttention,),
    "ffn": tuple(FFN_TYPES.values()),
    "mefc": (MEFC,),
    "norm": (LayerNorm,),
}


def _check_sizes(
    inp_channels: int, out_channels: int, dim: int, num_blocks: Sequence[int], heads: Sequence[int], ffn: float
) -> None:
    """Raises :class:`ConfigError` for sizes no network of the family can be built with."""
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


def _check_parts(attention: str, ffn: str, mefc: bool, num_refinement_blocks: int) -> None:
    if attention not in ATTENTIONS:
        raise ConfigError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
    if ffn not in FFNS:
        raise ConfigError(f"ffn must be one of {', '.join(FFNS)}, got {ffn!r}")
    if num_refinement_blocks < 0:
        raise ConfigError(f"num_refinement_blocks must be at least 0, got {num_refinement_blocks}")
    if mefc and num_refinement_blocks:
        raise ConfigError(
            "mefc and num_refinement_blocks both refine at full resolution (both are named `refinement`); "
            "set mefc: false to use refinement blocks"
        )


@ARCH_REGISTRY.register()
class DRSformer(nn.Module):
    """The paper's model, and with its options the family of its ablations and of Restormer (see the module).
    ``mefc=False`` drops both compensators (the Rain200L / SPA-Data model).

    Any H x W is accepted: the input is reflect-padded at the bottom/right to a multiple of 8 and the output
    cropped back, as the published test script does. ``dual_pixel_task`` is Restormer's defocus-deblurring
    mode (two 3-channel views in, no residual to the input).
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
        attention: str = "topk",
        topk_ratios: Sequence[str | float] = PAPER_RATIOS,
        ffn: str = "msfn",
        num_refinement_blocks: int = 0,
        dual_pixel_task: bool = False,
        impl: str = "fast",
    ) -> None:
        super().__init__()
        _check_sizes(inp_channels, out_channels, dim, num_blocks, heads, ffn_expansion_factor)
        _check_parts(attention, ffn, mefc, num_refinement_blocks)
        if LayerNorm_type not in LAYERNORM_TYPES:
            raise ConfigError(f"LayerNorm_type must be one of {LAYERNORM_TYPES}, got {LayerNorm_type!r}")
        if impl not in IMPLS:
            raise ConfigError(f"impl must be one of {IMPLS}, got {impl!r}")
        ratios = format_ratios(topk_ratios)
        if attention == "topk":
            for level, head_count in enumerate(heads):
                topk_counts(dim * 2**level // head_count, ratios)
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
            attention=attention,
            topk_ratios=ratios,
            ffn=ffn,
            num_refinement_blocks=int(num_refinement_blocks),
            dual_pixel_task=bool(dual_pixel_task),
        )
        self.layout_impl = impl
        d1, d2, d3, d4 = dim, dim * 2, dim * 4, dim * 8

        def stage(count: int, width: int, head_count: int) -> nn.Sequential:
            return nn.Sequential(
                *(
                    TransformerBlock(
                        width, head_count, ffn_expansion_factor, bias, LayerNorm_type, impl, attention, ffn, ratios
                    )
                    for _ in range(count)
                )
            )

        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        if mefc:
            self.encoder_level0 = MEFC(d1, impl=impl)
        self.encoder_level1 = stage(num_blocks[0], d1, heads[0])
        self.down1_2 = Downsample(d1)
        self.encoder_level2 = stage(num_blocks[1], d2, heads[1])
        self.down2_3 = Downsample(d2)
        self.encoder_level3 = stage(num_blocks[2], d3, heads[2])
        self.down3_4 = Downsample(d3)
        self.latent = stage(num_blocks[3], d4, heads[3])

        self.up4_3 = Upsample(d4)
        self.reduce_chan_level3 = nn.Conv2d(d4, d3, kernel_size=1, bias=bias)
        self.decoder_level3 = stage(num_blocks[2], d3, heads[2])
        self.up3_2 = Upsample(d3)
        self.reduce_chan_level2 = nn.Conv2d(d3, d2, kernel_size=1, bias=bias)
        self.decoder_level2 = stage(num_blocks[1], d2, heads[1])
        self.up2_1 = Upsample(d2)  # no channel reduction at level 1: the decoder runs at 2 * dim
        self.decoder_level1 = stage(num_blocks[0], d2, heads[0])
        self.refinement: nn.Module
        if mefc:
            self.refinement = MEFC(d2, impl=impl)
        elif num_refinement_blocks:
            self.refinement = stage(num_refinement_blocks, d2, heads[0])
        if dual_pixel_task:
            self.skip_conv = nn.Conv2d(dim, d2, kernel_size=1, bias=bias)
        self.output = nn.Conv2d(d2, out_channels, kernel_size=3, padding=1, bias=bias)
        self.plan = build_plan(self.config["num_blocks"], mefc, int(num_refinement_blocks), bool(dual_pixel_task))

    @property
    def has_mefc(self) -> bool:
        return self.config["mefc"]

    def set_impl(self, impl: str, parts: Iterable[str] = IMPL_PARTS) -> DRSformer:
        """Switches ``parts`` (attention, ffn, mefc, norm, layout) to the ``fast`` or ``reference`` implementation."""
        if impl not in IMPLS:
            raise ConfigError(f"impl must be one of {IMPLS}, got {impl!r}")
        parts = list(parts)
        for part in parts:
            if part not in IMPL_PARTS:
                raise ConfigError(f"unknown part {part!r}; choose from {IMPL_PARTS}")
        if "layout" in parts:
            self.layout_impl = impl
        selected = tuple(kind for p in parts if p != "layout" for kind in PART_TYPES[p])
        for module in self.modules():
            if isinstance(module, selected):
                setattr(module, "impl", impl)  # noqa: B010 (every selected kind has an impl attribute)
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
            elif step.kind == "output" and step.skip is not None:  # dual-pixel: a 1x1 skip, no residual
                assert step.reduce is not None
                y = module(y + self.get_submodule(step.reduce)(saved[step.skip]))
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


def architecture_name(config: Mapping[str, Any]) -> str:
    """What a configuration is, in words: ``DRSformer``, ``DRSformer without MEFC``, ``Restormer``, or the
    DRSformer variant with the parts that differ from the paper's (``DRSformer (dense attention, GDFN)``)."""
    mefc, attention, ffn = config.get("mefc", True), config.get("attention", "topk"), config.get("ffn", "msfn")
    refinement = config.get("num_refinement_blocks", 0)
    if not mefc and attention == "dense" and ffn == "gdfn" and refinement:
        return "Restormer"
    changes = []
    if attention == "dense":
        changes.append("dense attention")
    elif format_ratios(config.get("topk_ratios", PAPER_RATIOS)) != list(PAPER_RATIOS):
        changes.append(f"top-k ratios {', '.join(format_ratios(config['topk_ratios']))}")
    if ffn != "msfn":
        changes.append(ffn.upper())
    if refinement:
        changes.append(f"{refinement} refinement blocks")
    if config.get("dual_pixel_task"):
        changes.append("dual-pixel")
    name = "DRSformer" if mefc else "DRSformer without MEFC"
    return f"{name} ({', '.join(changes)})" if changes else name
