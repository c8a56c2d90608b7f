"""Restormer (Zamir, Arora, Khan, Hayat, Khan, Yang, CVPR 2022), DRSformer's closest baseline, as the network of
swz30/Restormer's ``restormer_arch.py``: the same U shape and layer norms as DRSformer, dense attention (MDTA,
every score kept), the gated depth-wise feed-forward network (GDFN), and ``num_refinement_blocks`` Transformer
blocks at full resolution where DRSformer has MEFC. Its constructor takes Restormer's own arguments (its options
files run unchanged), and its state-dict names and shapes are those of the published checkpoints.

The deraining model (the defaults) has 26,126,644 parameters. Unlike the published module, inputs of any size
run (reflect-padded to a multiple of 8 and cropped back, as Restormer's test script does by hand), and exact
tiling (:mod:`drsformer.tiling`) applies.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..registry import ARCH_REGISTRY
from .drsformer import DRSformer


@ARCH_REGISTRY.register()
class Restormer(DRSformer):
    """Restormer: a named configuration of the family (``mefc=False, attention='dense', ffn='gdfn'``)."""

    def __init__(
        self,
        inp_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        num_refinement_blocks: int = 4,
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        LayerNorm_type: str = "WithBias",  # the published YAML key
        dual_pixel_task: bool = False,
        impl: str = "fast",
    ) -> None:
        super().__init__(
            inp_channels,
            out_channels,
            dim,
            num_blocks,
            heads,
            ffn_expansion_factor,
            bias,
            LayerNorm_type,
            mefc=False,
            attention="dense",
            ffn="gdfn",
            num_refinement_blocks=num_refinement_blocks,
            dual_pixel_task=dual_pixel_task,
            impl=impl,
        )


# The family's options that make a Restormer; a configuration with them (and refinement blocks) is one.
RESTORMER_PARTS = {"mefc": False, "attention": "dense", "ffn": "gdfn"}
RESTORMER_ARGUMENTS = ("inp_channels", "out_channels", "dim", "num_blocks", "num_refinement_blocks", "heads",
                       "ffn_expansion_factor", "bias", "LayerNorm_type", "dual_pixel_task")  # fmt: skip
