"""The U shape every network here shares: its stage names (the published state-dict prefixes), and its plan.

Four levels: ``encoder_level1..3`` and ``latent`` going down (``down1_2``... between them), ``decoder_level3..1``
coming up (``up4_3``... with a 1x1 ``reduce_chan_level*`` after the skip concatenation, none at level 1). The
plan (:func:`build_plan`) lists the steps in execution order; the model's ``forward`` and the exact tiler
(:mod:`drsformer.tiling`) both walk it, so the wiring is written once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Height and width must be multiples of this: three 2x down-samplings.
SIZE_MULTIPLE = 8

ENCODERS = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
DOWNS = ("down1_2", "down2_3", "down3_4")
# (up-sampling, channel reduction, decoder) from level 4 up to level 1
UPS = (
    ("up4_3", "reduce_chan_level3", "decoder_level3"),
    ("up3_2", "reduce_chan_level2", "decoder_level2"),
    ("up2_1", None, "decoder_level1"),
)
REFINEMENT = "refinement"  # MEFC's second compensator, or Restormer's refinement blocks
# Each decoder's level: it mirrors the encoder of that level (as many blocks, as many heads).
DECODER_LEVELS = {decoder: level for level, (_, _, decoder) in zip((3, 2, 1), UPS, strict=True)}


@dataclass(frozen=True)
class Step:
    """One step of the U-shaped network, in execution order.

    ``kind`` is ``embed`` (3x3 conv of the image), ``mefc``, ``block`` (a Transformer block), ``down`` (3x3 conv
    + pixel-unshuffle), ``up`` (3x3 conv + pixel-shuffle, then the saved map ``skip`` concatenated and, when
    ``reduce`` names one, a 1x1 conv) or ``output`` (3x3 conv plus the input image; with a ``skip``, the 3x3
    conv of its input plus ``reduce`` (a 1x1 conv) of the saved map, and no image). ``module`` is the attribute
    path of what runs, ``level`` the level of the output (1: full resolution, 4: 1/8), and ``save`` names the
    output when a later ``up`` step uses it.
    """

    kind: str
    module: str
    level: int
    save: str | None = None
    skip: str | None = None
    reduce: str | None = None


def build_plan(
    num_blocks: Sequence[int], mefc: bool, num_refinement_blocks: int = 0, dual_pixel_task: bool = False
) -> tuple[Step, ...]:
    """The steps of a network with ``num_blocks`` per level, with or without the two compensators (``mefc``) or
    ``num_refinement_blocks`` Transformer blocks at full resolution before the output; ``dual_pixel_task``
    (Restormer's) adds a 1x1 skip from the embedding to the output instead of the residual to the image."""
    steps = [Step("embed", "patch_embed", 1, save="embed" if dual_pixel_task else None)]
    if mefc:
        steps.append(Step("mefc", "encoder_level0", 1))
    for level, (name, count) in enumerate(zip(ENCODERS, num_blocks, strict=True), start=1):
        for i in range(count):
            last = i == count - 1 and level < 4
            steps.append(Step("block", f"{name}.{i}", level, save=f"enc{level}" if last else None))
        if level < 4:
            steps.append(Step("down", DOWNS[level - 1], level + 1))
    for level, (up, reduce, decoder) in zip((3, 2, 1), UPS, strict=True):
        steps.append(Step("up", up, level, skip=f"enc{level}", reduce=reduce))
        steps += [Step("block", f"{decoder}.{i}", level) for i in range(num_blocks[level - 1])]
    if mefc:
        steps.append(Step("mefc", REFINEMENT, 1))
    steps += [Step("block", f"{REFINEMENT}.{i}", 1) for i in range(num_refinement_blocks)]
    if dual_pixel_task:
        steps.append(Step("output", "output", 1, skip="embed", reduce="skip_conv"))
    else:
        steps.append(Step("output", "output", 1))
    return tuple(steps)
