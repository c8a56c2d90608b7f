"""Checking an exported file against the PyTorch model it came from, at sizes other than the traced one.

Top-k is discontinuous: where a row's k-th and (k+1)-th attention scores lie within rounding of each other at
one of the four thresholds, a different order of floating-point additions (ONNX Runtime's kernels, tiles,
PyTorch's own fast and reference paths) can keep a different channel, and the image moves by ~1e-3. Such an
input says nothing about the export. So each input's *top-k gap* is measured too: the smallest k-th minus
(k+1)-th score over every attention layer, row and threshold (:func:`smallest_topk_gap`).

Verdicts, per input: ``ok`` within the precision's bound (:data:`BOUNDS`); ``top-k tie`` beyond it with a gap
under :data:`TIE_GAP`, where rounding can flip a decision; ``FAIL`` beyond it with every decision clear of
rounding, which only a defect of the file explains. A size passes at its first ``ok``, fails at a ``FAIL``,
and tries the next seed after a tie (up to :data:`TRIES`); a size with ties only fails too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..archs import DRSformer
from ..archs.attention import TopKSparseAttention, attention_sums, scores_from_sums

# Largest |exported - PyTorch fp32| allowed, per precision of the exported graph (pixel values in [0, 1]).
BOUNDS = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 6e-2}
# Scores closer than this at a threshold may be ordered differently by another order of additions. Measured on
# the full model (scripts/topk_stability.py): decisions flipped only at gaps under 1e-7; this leaves 10x margin.
TIE_GAP = 1e-6
TRIES = 4
# Verification sizes for dynamic exports: none the traced 64 x 64, two not multiples of 8, one a batch of 2.
DYNAMIC_SIZES = ((77, 131), (96, 72), (57, 200))


def smallest_topk_gap(model: DRSformer, image: Tensor) -> float:
    """The smallest k-th minus (k+1)-th largest attention score, over every top-k attention layer of ``model``,
    every row and every threshold, on ``image`` (infinite for a model without top-k attention: nothing to flip)."""
    gaps: list[float] = []

    def record(module: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
        assert isinstance(module, TopKSparseAttention)
        q, k, _ = module.project_qkv(inputs[0])
        scores = scores_from_sums(attention_sums(q.flatten(-2), k.flatten(-2)), module.temperature)
        ordered = scores.sort(dim=-1, descending=True).values
        for count in module.counts:
            if count < ordered.shape[-1]:  # a ratio of 1 keeps every score: no threshold
                gaps.append((ordered[..., count - 1] - ordered[..., count]).min().item())

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, TopKSparseAttention)]
    try:
        with torch.inference_mode():
            model(image)
    finally:
        for hook in hooks:
            hook.remove()
    return min(gaps, default=float("inf"))


@dataclass
class InputCheck:
    """One checked input: its size and seed, the largest difference, and its top-k gap."""

    batch: int
    height: int
    width: int
    seed: int
    difference: float  # max |exported - PyTorch fp32|
    gap: float
    bound: float

    @property
    def verdict(self) -> str:
        if self.difference <= self.bound:
            return "ok"
        return "top-k tie" if self.gap < TIE_GAP else "FAIL"

    def row(self) -> str:
        size = f"{self.batch}x{self.height}x{self.width}"
        gap = "-" if self.gap != self.gap else f"{self.gap:.2e}"  # measured only beyond the bound
        return f"{size:>14} {self.seed:>5} {self.difference:>12.2e} {self.bound:>9.0e} {gap:>12}  {self.verdict}"


HEADER = f"{'input':>14} {'seed':>5} {'|file-torch|':>12} {'bound':>9} {'top-k gap':>12}  verdict"


def verify(
    run: Callable[[Tensor], Tensor],
    model: DRSformer,
    sizes: Sequence[tuple[int, int, int]],
    precision: str = "fp32",
    report: Callable[[str], None] | None = None,
) -> tuple[bool, list[InputCheck]]:
    """Runs ``run`` (the exported file) and ``model`` (PyTorch, fp32, CPU) on seeded random images of each
    (batch, height, width) in ``sizes``; returns whether every size passed, and every input checked. ``report``
    receives each row as it is computed."""
    bound = BOUNDS[precision]
    fast = copy.deepcopy(model).float().eval().cpu().set_impl("fast")
    channels = fast.config["inp_channels"]
    checks: list[InputCheck] = []
    all_passed = True
    for batch, height, width in sizes:
        verdict = "top-k tie"
        for seed in range(TRIES):
            generator = torch.Generator().manual_seed(1000 * seed + 7 * height + width)
            image = torch.rand(batch, channels, height, width, generator=generator)
            with torch.inference_mode():
                difference = (run(image).float() - fast(image)).abs().max().item()
            gap = smallest_topk_gap(fast, image) if difference > bound else float("nan")
            check = InputCheck(batch, height, width, seed, difference, gap, bound)
            checks.append(check)
            if report is not None:
                report(check.row())
            verdict = check.verdict
            if verdict != "top-k tie":
                break
        all_passed &= verdict == "ok"
    return all_passed, checks


def failure(checks: Sequence[InputCheck]) -> str:
    """Why a check failed, in a few words: the worst clear difference, or the sizes that only saw ties."""
    clear = [c for c in checks if c.verdict == "FAIL"]
    if clear:
        worst = max(clear, key=lambda c: c.difference)
        return (
            f"differs from PyTorch by {worst.difference:.2e} at {worst.height}x{worst.width} (bound "
            f"{worst.bound:.0e}) with every top-k decision clear of rounding"
        )
    tied = sorted({f"{c.height}x{c.width}" for c in checks if c.verdict == "top-k tie"})
    return f"met a top-k tie on each of {TRIES} inputs at {', '.join(tied)} (try other --check-sizes)"
