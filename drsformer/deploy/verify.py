"""Checking an exported file against the PyTorch model it came from, at sizes other than the traced one.

Top-k is discontinuous: where two attention scores of a row lie within rounding of each other at one of the
four thresholds, any change in the order of floating-point additions (ONNX Runtime's kernels, PyTorch's own
fast and reference paths) can move one channel in or out of the kept set, and the image changes by up to
~1e-3. Such an input says nothing about the export. So every checked input is first run through PyTorch's
fast *and* reference paths: when those two agree to :data:`DECISIVE` the input's top-k decisions are stable
and the exported file must match PyTorch fp32 within the precision's bound (:data:`BOUNDS`); when they do not,
the input is reported as *undecided* and the next seed of that size is tried (up to :data:`TRIES`). A size with
no decided input fails too: the check never passes on inputs that cannot tell.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..archs import DRSformer

# Largest |exported - PyTorch fp32| allowed, per precision of the exported graph (pixel values in [0, 1]).
BOUNDS = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 6e-2}
DECISIVE = 1e-5  # PyTorch fast vs reference: an input whose top-k decisions are stable
TRIES = 3
# Verification sizes for dynamic exports: none a multiple of 8 but one, none the traced 64 x 64, one batch of 2.
DYNAMIC_SIZES = ((77, 131), (96, 72), (57, 200))


@dataclass
class SizeCheck:
    """One checked input: its size and seed, and the largest differences found."""

    height: int
    width: int
    batch: int
    seed: int
    exported: float  # max |exported - PyTorch fast fp32|
    eager_paths: float  # max |PyTorch reference - PyTorch fast|, both fp32
    bound: float

    @property
    def decided(self) -> bool:
        return self.eager_paths <= DECISIVE

    @property
    def passed(self) -> bool:
        return self.decided and self.exported <= self.bound

    def row(self) -> str:
        verdict = "ok" if self.passed else ("undecided (top-k tie)" if not self.decided else "FAIL")
        size = f"{self.batch}x{self.height}x{self.width}"
        return (
            f"{size:>14} {self.seed:>5} {self.exported:>12.2e} {self.bound:>9.0e} {self.eager_paths:>14.2e}  {verdict}"
        )


HEADER = f"{'input':>14} {'seed':>5} {'|file-torch|':>12} {'bound':>9} {'|ref-fast|':>14}  verdict"


def check_input(
    run: Callable[[Tensor], Tensor], model: DRSformer, reference: DRSformer, image: Tensor
) -> tuple[float, float]:
    """(max |run - model|, max |reference - model|) on ``image``, the PyTorch models in fp32."""
    with torch.inference_mode():
        fast = model(image).float()
        exported = run(image).float()
        ref = reference(image).float()
    return (exported - fast).abs().max().item(), (ref - fast).abs().max().item()


def verify(
    run: Callable[[Tensor], Tensor],
    model: DRSformer,
    sizes: Sequence[tuple[int, int, int]],
    precision: str = "fp32",
    report: Callable[[str], None] | None = None,
) -> tuple[bool, list[SizeCheck]]:
    """Runs ``run`` (the exported file) and ``model`` (PyTorch, fp32, CPU) on seeded random images of each
    (batch, height, width) in ``sizes``; returns whether every size has a decided input within the bound, and
    every input checked. ``report`` receives each row as it is computed."""
    bound = BOUNDS[precision]
    fast = copy.deepcopy(model).float().eval().cpu().set_impl("fast")
    reference = copy.deepcopy(fast).set_impl("reference")
    channels = fast.config["inp_channels"]
    checks: list[SizeCheck] = []
    all_passed = True
    for batch, height, width in sizes:
        size_passed = False
        for seed in range(TRIES):
            generator = torch.Generator().manual_seed(1000 * seed + height * 7 + width)
            image = torch.rand(batch, channels, height, width, generator=generator)
            exported, eager = check_input(run, fast, reference, image)
            check = SizeCheck(height, width, batch, seed, exported, eager, bound)
            checks.append(check)
            if report is not None:
                report(check.row())
            if check.decided:
                size_passed = check.passed
                break
        all_passed &= size_passed
    return all_passed, checks
